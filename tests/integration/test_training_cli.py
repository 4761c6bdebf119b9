"""simulate -> import -> train from the command line: registered models, the HTML
report, and the model registry commands (list, promote, rollback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.processes import process_env
from infra.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.timeout(600)


def _cli(
    settings: Settings, *args: str, ok: bool = True
) -> subprocess.CompletedProcess:
    # Training needs neither Redis nor the broker without online seeding; the
    # addresses below are never contacted.
    env = process_env(
        settings,
        {
            "SEGSCORE_REDIS_URL": "redis://127.0.0.1:1/0",
            "SEGSCORE_KAFKA_BROKER": "127.0.0.1:1",
            "COLUMNS": "200",
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "segscore.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok and done.returncode != 0:
        raise AssertionError(
            f"segscore {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_simulate_import_train_registers_models_and_writes_the_report(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    log = tmp_path / "shop.jsonl"
    # Enough shoppers that the holdout (everyone at the cut-off, half of them
    # when tuning shares it) is a few hundred: with 100 the gate is a coin flip.
    _cli(settings, "simulate", "--users", "400", "--days", "28", "--out", str(log))
    imported = _cli(settings, "import", str(log)).stdout
    assert "rejected" in imported

    first = _summary(_cli(settings, "train", "--no-seed-online").stdout)
    report = Path(first["report"])
    html = report.read_text()
    assert report.parent == settings.home / "reports"
    assert html.count("<svg") >= 8 and "ROC" in html
    assert sorted(first["promoted"]) == sorted(
        [first["segmenter"], first["propensity"]]
    )
    assert first["segmenter_metrics"]["ari_vs_personas"] > 0.5  # personas came along

    listed = _cli(settings, "models", "list").stdout
    assert first["propensity"] in listed and first["segmenter"] in listed

    # The same data again: a tie, so the champions stay.
    second = _summary(_cli(settings, "train", "--no-seed-online").stdout)
    assert second["promoted"] == []
    assert "<=" in second["promotion"]["propensity"]
    refused = _cli(settings, "models", "rollback", "segscore-propensity", ok=False)
    assert refused.returncode == 1 and "no earlier champion" in refused.stdout

    _cli(settings, "models", "promote", second["propensity"])
    listed = _cli(settings, "models", "list").stdout
    champion_rows = [ln for ln in listed.splitlines() if "*" in ln]
    assert any(second["propensity"] in ln for ln in champion_rows)
    back = _cli(settings, "models", "rollback", "segscore-propensity").stdout
    assert first["propensity"] in back
