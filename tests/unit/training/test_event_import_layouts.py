"""segscore import: layouts, mapping files, bad rows by line and reason, native
files kept whole, and the accepted rows checked against the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.event_files import COLUMNS, events_frame, read_events, write_events
from core.events import Event, parse_event
from segscore.simulator import simulate
from training.event_import import ImportFailed, import_events
from training.event_import.layouts import detect_layout, load_mapping
from training.event_import.output import self_check
from training.event_import.run import event_id_prefix

NOW = 1_800_000_000.0  # 2027-01-15
START = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC

ECOMMERCE_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,"
    "user_id,user_session"
)
ECOMMERCE_ROWS = [
    "2019-10-01 00:00:00 UTC,view,44600062,21038074,,shiseido,35.79,541312140,s1",
    "2019-10-01 00:00:01 UTC,cart,3900821,20530135,kettle,aqua,33.20,554748717,s2",
    "2019-10-01 00:00:02 UTC,purchase,17200506,20530135,sofa,,543.10,519107250,s3",
    "",
    "not a time,view,1,2,x,,1.0,5,s",
    "2019-10-01 00:00:04 UTC,teleport,1,2,x,,1.0,5,s",
    "2019-10-01 00:00:05 UTC,view,1,2,x,,-3,5,s",
    "2019-10-01 00:00:06 UTC,purchase,1,2,x,,,5,s",
    "2019-10-01 00:00:07 UTC,view,1,2,x,,1.0,,s",
    "2019-10-01 00:00:08 UTC,view,1,2",
    '2019-10-01 00:00:09 UTC,view,1,2,"two\nlines",,1.0,6,s',
    "2019-10-01 00:00:10 UTC,view,1,2,x,,1.0,7,s,extra",
    "2019-10-01 00:00:11 UTC,remove_from_cart,1,2,x,,12,8,s",
]  # fmt: skip


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(path: Path, tmp_path: Path, **kwargs: object):
    return import_events(path, tmp_path / "out" / "events.parquet", now=NOW, **kwargs)  # type: ignore[arg-type]


def test_ecommerce_layout_and_bad_rows_by_line(tmp_path: Path) -> None:
    src = _write(tmp_path / "2019-Oct.csv", [ECOMMERCE_HEADER, *ECOMMERCE_ROWS])
    result = _run(src, tmp_path)
    # Lines as an editor shows them: header is line 1, the blank line 5 is skipped,
    # the quoted value spans lines 12-13.
    assert result.bad[["line", "reason"]].values.tolist() == [
        [6, "invalid:ts"],
        [7, "unknown_event_type"],
        [8, "invalid:price"],
        [9, "invalid:revenue"],
        [10, "missing:user_id"],
        [11, "malformed_row"],
        [14, "malformed_row"],
    ]
    assert result.bad["raw"][0] == "not a time,view,1,2,x,,1.0,5,s"
    assert "expected 9 fields, saw 4" in result.bad["detail"][5]
    summary = result.summary
    assert summary.layout == "ecommerce"
    assert (summary.rows_read, summary.accepted, summary.rejected) == (12, 5, 7)
    assert summary.reasons["malformed_row"] == 2
    assert summary.blank_lines == 1
    events = read_events(Path(summary.output))
    assert list(events.columns) == list(COLUMNS)
    assert events.dtypes.equals(events_frame(_sample_events()).dtypes)
    assert events["event_type"].tolist() == [
        "product_view", "add_to_cart", "purchase", "product_view", "remove_from_cart",
    ]  # fmt: skip
    first, purchase = events.iloc[0], events.iloc[2]
    assert first["user_id"] == "541312140"
    assert first["session_id"] == "s1"
    assert first["category"] == "21038074"  # category_id fallback
    assert first["ts"] == 1_569_888_000.0
    assert purchase["category"] == "sofa"
    assert purchase["revenue"] == 543.10
    assert events.iloc[3]["category"] == "two\nlines"
    report = pd.read_csv(summary.report)
    assert report["line"].tolist() == result.bad["line"].tolist()
    assert list(report.columns) == ["line", "reason", "detail", "raw"]


def _sample_events() -> list[Event]:
    return simulate(5, START, START + 2 * 86_400, seed=3).events


def test_event_ids_are_deterministic_per_file_and_line(tmp_path: Path) -> None:
    src = _write(tmp_path / "2019-Oct.csv", [ECOMMERCE_HEADER, *ECOMMERCE_ROWS[:3]])
    first = _run(src, tmp_path).events.column("event_id").to_pylist()
    again = _run(src, tmp_path).events.column("event_id").to_pylist()
    prefix = event_id_prefix(src)
    assert first == again == [f"{prefix}-2", f"{prefix}-3", f"{prefix}-4"]
    other = _write(tmp_path / "2019-Nov.csv", [ECOMMERCE_HEADER, *ECOMMERCE_ROWS[:3]])
    assert not set(first) & set(_run(other, tmp_path).events["event_id"].to_pylist())


def test_transactions_layout_with_column_variants(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "retail.csv",
        [
            "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
            "536365,85123A,6,12/1/2010 8:26,2.55,17850,United Kingdom",
            "536366,22633,2,12/1/2010 8:28,1.85,17850,United Kingdom",
            "C536379,D,-1,12/1/2010 9:41,27.50,14527,United Kingdom",
            "536367,84879,32,someday,1.69,13047,United Kingdom",
        ],
    )
    assert detect_layout(pd.read_csv(src, nrows=0).columns) == "transactions"
    result = _run(src, tmp_path)
    assert result.bad[["line", "reason"]].values.tolist() == [
        [4, "invalid:quantity"],
        [5, "invalid:ts"],
    ]
    events = result.events.to_pandas()
    assert (events["event_type"] == "purchase").all()
    assert events["revenue"].tolist() == pytest.approx([6 * 2.55, 2 * 1.85])
    assert events["session_id"].tolist() == ["536365", "536366"]
    assert events["ts"][0] == pd.Timestamp("2010-12-01 08:26", tz="UTC").timestamp()
    assert events["country"][0] == "United Kingdom"


def test_transactions_with_an_amount_column(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "tx.csv",
        [
            "customer_id,date,amount",
            "c1,2024-01-05,19.90",
            "c2,2024-01-06,",
            "c1,2024-02-01,5",
        ],
    )
    result = _run(src, tmp_path)
    assert result.bad[["line", "reason"]].values.tolist() == [[3, "invalid:revenue"]]
    assert result.events.column("revenue").to_pylist() == [19.9, 5.0]


MAPPING_YAML = """
columns:
  visitorid: user_id
  event: event_type
  timestamp: ts
  itemid: product_id
event_types:
  view: product_view
  addtocart: add_to_cart
  transaction: purchase
  wishlist: null        # not an event we model: skipped and counted
timestamp:
  unit: ms
constants:
  channel: web
defaults:
  price: 0
"""


def test_mapping_file(tmp_path: Path) -> None:
    mapping = tmp_path / "retailrocket.yaml"
    mapping.write_text(MAPPING_YAML)
    src = _write(
        tmp_path / "events.csv",
        [
            "timestamp,visitorid,event,itemid,transactionid",
            "1433221332117,257597,view,355908,",
            "1433224214164,992329,addtocart,248676,",
            "1433221999827,111016,transaction,318965,4000",
            "1433221999999,111016,wishlist,318965,",
            "x,111016,view,318965,",
            "1433221999999,111016,refund,318965,",
        ],
    )
    result = _run(src, tmp_path, mapping_path=mapping)
    assert result.summary.layout == "mapping"
    assert result.summary.skipped == 1
    assert result.bad[["line", "reason"]].values.tolist() == [
        [6, "invalid:ts"],
        [7, "unknown_event_type"],
    ]
    events = result.events.to_pandas()
    assert events["event_type"].tolist() == ["product_view", "add_to_cart", "purchase"]
    assert events["ts"][0] == 1_433_221_332.117
    assert set(events["channel"]) == {"web"}
    assert events["revenue"][2] == 0.0  # price defaulted to 0, so revenue 0


def test_mapping_file_json_with_format_and_zone(tmp_path: Path) -> None:
    mapping = tmp_path / "m.json"
    mapping.write_text(
        json.dumps(
            {
                "columns": {"who": "user_id", "when": "ts", "what": "event_type"},
                "timestamp": {"format": "%d.%m.%Y %H:%M", "timezone": "Europe/Berlin"},
                "delimiter": ";",
            }
        )
    )
    src = _write(tmp_path / "log.csv", ["who;when;what", "a;15.01.2024 10:00;search"])
    events = _run(src, tmp_path, mapping_path=mapping).events.to_pandas()
    assert events["ts"][0] == pd.Timestamp("2024-01-15 09:00", tz="UTC").timestamp()


def test_mapping_errors_are_explained(tmp_path: Path) -> None:
    wrong_way = tmp_path / "wrong.yaml"
    wrong_way.write_text("columns:\n  user_id: visitorid\n")
    with pytest.raises(ImportFailed, match="source column -> contract field"):
        load_mapping(wrong_way)
    typo = tmp_path / "typo.yaml"
    typo.write_text("columns:\n  visitor: user_id\n  ts: ts\n  event: event_type\n")
    src = _write(tmp_path / "e.csv", ["visitorid,ts,event", "1,1,view"])
    with pytest.raises(ImportFailed, match="'visitor'"):
        _run(src, tmp_path, mapping_path=typo)


def test_detect_layout() -> None:
    assert detect_layout(COLUMNS) == "native"
    assert detect_layout(ECOMMERCE_HEADER.split(",")) == "ecommerce"
    assert detect_layout(["Customer ID", "Order Date", "Sales"]) == "transactions"
    with pytest.raises(ImportFailed, match="mapping"):
        detect_layout(["a", "b"])


def test_native_parquet_round_trip_keeps_everything(tmp_path: Path) -> None:
    sim = simulate(30, START, START + 5 * 86_400, seed=11)
    src = tmp_path / "sim.parquet"
    write_events(sim.events, src)
    src.with_suffix(".personas.json").write_text(json.dumps(sim.personas))
    out = tmp_path / "data" / "events.parquet"
    stale = out.with_suffix(".personas.json")
    result = import_events(src, out, now=NOW)
    assert result.summary.rejected == 0
    pd.testing.assert_frame_equal(read_events(out), events_frame(sim.events))
    assert json.loads(stale.read_text()) == sim.personas
    # Importing data without personas must not leave the simulated ones behind.
    other = _write(tmp_path / "x.csv", [ECOMMERCE_HEADER, *ECOMMERCE_ROWS[:2]])
    import_events(other, out, now=NOW)
    assert not stale.exists()


def test_native_jsonl_matches_the_simulator(tmp_path: Path) -> None:
    sim = simulate(20, START, START + 5 * 86_400, seed=2)
    src = tmp_path / "sim.jsonl"
    write_events(sim.events, src)
    result = import_events(src, tmp_path / "events.parquet", now=NOW)
    assert result.summary.accepted == len(sim.events)
    got = read_events(tmp_path / "events.parquet")
    want = events_frame(sim.events)
    pd.testing.assert_frame_equal(got.drop(columns="ts"), want.drop(columns="ts"))
    np.testing.assert_allclose(got["ts"], want["ts"], rtol=0, atol=1e-3)


def test_accepted_rows_pass_the_contract(tmp_path: Path) -> None:
    src = _write(tmp_path / "2019-Oct.csv", [ECOMMERCE_HEADER, *ECOMMERCE_ROWS])
    events = _run(src, tmp_path).events
    self_check(events, now=NOW, max_future_seconds=300)
    for row in events.to_pylist():
        wire = {k: v for k, v in row.items() if v is not None}
        wire["ts"] = row["ts"] * 1000
        assert isinstance(parse_event(wire, now=NOW), Event)


def test_nothing_importable_is_an_empty_result(tmp_path: Path) -> None:
    src = _write(tmp_path / "bad.jsonl", ["{oops", "[]", ""])
    result = _run(src, tmp_path, layout="native")
    assert result.summary.accepted == 0
    assert result.bad["reason"].tolist() == ["malformed_json", "malformed_json"]
