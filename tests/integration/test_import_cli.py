"""``segscore import`` as a user runs it: a real subprocess in a temporary home."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from core.event_files import read_events
from infra.processes import process_env
from infra.settings import PROJECT_ROOT, Settings
from tests.support.processes import run_cli

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,"
    "user_id,user_session\n"
)
CSV = (
    HEADER
    + """\
2019-10-01 00:00:00 UTC,view,44600062,21038074,,shiseido,35.79,541312140,s1
2019-10-01 00:00:01 UTC,cart,3900821,20530135,kitchen.kettle,aqua,33.20,554748717,s2
2019-10-01 00:00:02 UTC,purchase,17200506,20530135,furniture.sofa,,543.10,519107250,s3
2019-10-01 00:00:03 UTC,teleport,1,2,x,,1.0,5,s
2019-10-01 00:00:04 UTC,view,1,2,x,,-3,5,s
yesterday,view,1,2,x,,1.0,5,s
2019-10-01 00:00:06 UTC,view,1,2
2019-10-01 00:00:07 UTC,view,1,2,x,,1.0,,s
"""
)


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def test_import_prints_bad_rows_and_a_summary(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    src = tmp_path / "2019-Oct.csv"
    src.write_text(CSV)
    out = run_cli(settings, "import", str(src), "--max-bad-rows-shown", "3")
    assert "line 5: unknown_event_type" in out
    assert "line 6: invalid:price" in out
    assert "line 7: invalid:ts" in out
    report = settings.data_dir / "events.rejects.csv"
    assert f"... and 2 more, see {report}" in out
    assert "line 8:" not in out  # beyond --max-bad-rows-shown
    for label, value in [("rows read", "8"), ("accepted", "3"), ("rejected", "5")]:
        assert any(label in line and value in line for line in out.splitlines()), label
    assert "ecommerce layout" in out
    rejects = pd.read_csv(report)
    assert rejects["line"].tolist() == [5, 6, 7, 8, 9]
    assert rejects["reason"].tolist()[3:] == ["malformed_row", "missing:user_id"]
    events = read_events(settings.data_dir / "events.parquet")
    assert len(events) == 3
    assert events["event_type"].tolist() == ["product_view", "add_to_cart", "purchase"]
    assert events["revenue"].iloc[2] == 543.10


def test_simulate_then_import_keeps_every_event(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sim = tmp_path / "X.jsonl"
    run_cli(settings, "simulate", "--users", "50", "--days", "10", "--out", str(sim))
    out = run_cli(settings, "import", str(sim))
    assert "native layout" in out
    events = read_events(settings.data_dir / "events.parquet")
    simulated = read_events(sim)
    assert len(events) == len(simulated)
    assert set(events["event_id"]) == set(simulated["event_id"])
    assert events["user_id"].nunique() == 50
    personas = settings.data_dir / "events.personas.json"
    assert json.loads(personas.read_text()) == json.loads(
        sim.with_suffix(".personas.json").read_text()
    )
    assert not (settings.data_dir / "events.rejects.csv").exists()


def test_nothing_importable_exits_non_zero(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    src = tmp_path / "junk.jsonl"
    src.write_text("{oops\n[1]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segscore.cli",
            "import",
            str(src),
            "--layout",
            "native",
        ],
        cwd=PROJECT_ROOT,
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "line 1: malformed_json" in result.stdout
    assert "line 2: malformed_json" in result.stdout
    assert "nothing could be imported" in result.stdout


def test_gzip_whitespace_log_with_unknown_names_and_delimiter(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    src = tmp_path / "CDNOW_master.txt.gz"
    src.write_bytes(
        gzip.compress(
            b" id date qty amount\r\n 1 20170101 1  11.77\r\n 2 20170102 2 3\r\n"
        )
    )
    out = run_cli(settings, "import", str(src), "--delimiter", "whitespace")
    assert "transactions layout" in out
    assert any(
        "delimiter" in line and "whitespace" in line for line in out.splitlines()
    )
    events = read_events(settings.data_dir / "events.parquet")
    assert events["revenue"].tolist() == [11.77, 3.0]

    clicks = tmp_path / "clicks.csv"
    clicks.write_text(
        "user_id;event_type;ts\nu1;page_view;1700000000\nu1;teleport;1700000001\n"
        "u2;teleport;1700000002\n"
    )
    out = run_cli(settings, "import", str(clicks))  # the semicolon is sniffed
    assert "line 3: unknown_event_type (event_type: 'teleport' is not one of" in out
    assert any(
        "unknown 'teleport'" in line and "2" in line for line in out.splitlines()
    )
