"""segscore import: layouts, mapping files, bad rows by line and reason, and the
vectorised validator against the contract's own parser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from core.event_files import COLUMNS, events_frame, read_events, write_events
from core.events import Event, Rejection, parse_event
from segscore.simulator import simulate
from training.event_import import (
    ImportFailed,
    detect_layout,
    event_id_prefix,
    import_events,
    load_mapping,
    self_check,
)

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


# Tricky wire events: each line is judged by parse_event and by the importer.
def _valid(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "user_id": "u1",
        "event_type": "product_view",
        "ts": "2026-01-15T08:00:00+00:00",
        "price": 12.5,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


TRICKY: list[object] = [
    _valid(),
    _valid(user_id=" a "),
    _valid(user_id="  "),
    _valid(user_id=""),
    _valid(user_id="x" * 128),
    _valid(user_id="x" * 129),
    _valid(user_id=5),
    _valid(user_id=None),
    _valid(user_id=...),
    _valid(user_id="\u00a0a\u00a0"),
    _valid(user_id="Café"),
    _valid(user_id="a\x1f"),
    _valid(event_id=...),
    _valid(event_type=" purchase "),
    _valid(event_type="Purchase"),
    _valid(event_type=None),
    _valid(event_type=3),
    _valid(event_type="purchase"),
    _valid(event_type="purchase", price=None),
    _valid(event_type="purchase", price=None, revenue=0),
    _valid(event_type="purchase", price=2, quantity=3),
    _valid(event_type="purchase", price="2.5", quantity="2"),
    _valid(ts=1_700_000_000_000),
    _valid(ts=1_700_000_000_000.5),
    _valid(ts="1700000000000"),
    _valid(ts="2024-01-01T00:00:00Z"),
    _valid(ts="2024-01-01 00:00:00.123456+05:30"),
    _valid(ts="2024-01-01T00:00:00.1234567+00:00"),
    _valid(ts="2024-01-01T00:00:00,5+00:00"),
    _valid(ts="20240101T000000Z"),
    _valid(ts="2024-01-01T00:00+00:00"),
    _valid(ts="2024-01-01T24:00:00+00:00"),
    _valid(ts="2024-02-30T00:00:00+00:00"),
    _valid(ts=" 2024-01-01T00:00:00+00:00"),
    _valid(ts="2024-01-01T00:00:00"),
    _valid(ts="2024-01-01T00:00:00+25:00"),
    _valid(ts=True),
    _valid(ts=None),
    _valid(ts=...),
    _valid(ts=(NOW + 3600) * 1000),
    _valid(ts=(NOW + 200) * 1000),
    _valid(price=" 12.5 "),
    _valid(price="1e3"),
    _valid(price="1_000"),
    _valid(price="007.50"),
    _valid(price="inf"),
    _valid(price="nan"),
    _valid(price="-0"),
    _valid(price="-1"),
    _valid(price=-0.01),
    _valid(price=""),
    _valid(price=True),
    _valid(price="12,5"),
    _valid(price=None),
    _valid(quantity="3.0"),
    _valid(quantity=3.0),
    _valid(quantity=3.5),
    _valid(quantity=" 3 "),
    _valid(quantity="+3"),
    _valid(quantity="007"),
    _valid(quantity="1_0"),
    _valid(quantity=0),
    _valid(quantity="0"),
    _valid(quantity=1e20),
    _valid(quantity=True),
    _valid(quantity=""),
    _valid(revenue=-1),
    _valid(session_id=5),
    _valid(session_id=""),
    _valid(session_id="x" * 257),
    _valid(country=["DE"]),
    _valid(price=-1, quantity=0),
    _valid(user_id=..., price=-1),
    # Epoch seconds or milliseconds (|ts| < 1e11 is seconds), the floor, non-finite.
    _valid(ts=1_700_000_000),
    _valid(ts=1_700_000_000.25),
    _valid(ts=946_684_800),
    _valid(ts=946_684_799),
    _valid(ts=946_684_800_000),
    _valid(ts=99_999_999_999),
    _valid(ts=100_000_000_000),
    _valid(ts=0),
    _valid(ts=-1),
    _valid(ts=-1e14),
    _valid(ts=-1e22),
    _valid(ts=1e300),
    _valid(ts=-1e308),
    _valid(ts=2**64 - 1),
    _valid(ts="1700000000"),
    _valid(ts="1.7e12"),
    _valid(ts="0001-01-01T00:00:00+00:00"),
    _valid(ts="0001-01-01T00:00:00-01:00"),
    _valid(ts="1999-12-31T23:59:59Z"),
    _valid(ts="2000-01-01T00:00:00Z"),
    _valid(ts="9999-12-31T23:59:59-14:00"),
    _valid(ts="10000-01-01T00:00:00+00:00"),
    # Numeric bounds: price and revenue <= 1e9, quantity <= 1e6, price x quantity.
    _valid(price=1e9),
    _valid(price=1e9 + 1),
    _valid(price=1e308),
    _valid(price="1e10"),
    _valid(price=2**64 - 1),
    _valid(quantity=1_000_000),
    _valid(quantity=1_000_001),
    _valid(quantity="1000001"),
    _valid(quantity=2**64 - 1),
    _valid(revenue=1e308),
    _valid(event_type="purchase", revenue=1e308),
    _valid(event_type="purchase", revenue=1e9),
    _valid(event_type="purchase", price=1e9, quantity=2),
    _valid(event_type="purchase", price=1e3, quantity=1_000_000),
    _valid(event_type="purchase", price=1e3, quantity=1_000_000, revenue=5.0),
    "{not json",
    "[1, 2]",
]


def test_importer_agrees_with_parse_event(tmp_path: Path) -> None:
    lines = [t if isinstance(t, str) else orjson.dumps(t).decode() for t in TRICKY]
    src = _write(tmp_path / "tricky.jsonl", lines)
    result = import_events(src, tmp_path / "events.parquet", now=NOW, layout="native")
    got = dict(zip(result.bad["line"], result.bad["reason"], strict=True))
    accepted = iter(read_events(tmp_path / "events.parquet").itertuples(index=False))
    for number, line in enumerate(lines, start=1):
        want = parse_event(line, now=NOW)
        if isinstance(want, Rejection):
            assert got.get(number) == want.reason, (number, line)
            continue
        assert number not in got, (number, line, got.get(number))
        row = next(accepted)._asdict()
        for name in COLUMNS:
            mine, theirs = row[name], getattr(want, name)
            if name == "event_type":
                theirs = theirs.value
            if theirs is None:
                assert mine is None or pd.isna(mine), (number, name, mine)
            elif isinstance(theirs, float):
                assert mine == pytest.approx(theirs, rel=1e-12), (number, name)
            else:
                assert mine == theirs, (number, name, mine, theirs)


def test_csv_cells_follow_the_same_rules(tmp_path: Path) -> None:
    header = "event_id,user_id,event_type,ts,price,quantity"
    rows = [
        "e1,u1,product_view,1700000000000,12.5,",  # numeric text is a number in CSV
        "e2,u1,product_view,2024-01-01T00:00:00Z,1_000,2",
        "e3,,product_view,2024-01-01T00:00:00Z,1,",  # empty cell: missing
        "e4, ,product_view,2024-01-01T00:00:00Z,1,",  # blank text: invalid
        "e5,u1,purchase,2024-01-01T00:00:00Z,,",
        "e6,u1,product_view,2024-01-01T00:00:00,1,",
        "e7,u1,product_view,2024-01-01T00:00:00Z,1,0",
    ]
    result = _run(_write(tmp_path / "native.csv", [header, *rows]), tmp_path)
    assert result.summary.layout == "native"
    assert result.bad[["line", "reason"]].values.tolist() == [
        [4, "missing:user_id"],
        [5, "invalid:user_id"],
        [6, "invalid:revenue"],
        [7, "invalid:ts"],
        [8, "invalid:quantity"],
    ]
    events = result.events.to_pandas()
    assert events["ts"].tolist() == [1_700_000_000.0, 1_704_067_200.0]
    assert events["price"].tolist() == [12.5, 1000.0]


def test_csv_epoch_numbers_floor_and_bounds(tmp_path: Path) -> None:
    header = "event_id,user_id,event_type,ts,price,quantity"
    rows = [
        "e1,u1,product_view,1700000000,1,",  # epoch seconds
        "e2,u1,product_view,1700000000000,1,",  # the same instant in ms
        "e3,u1,product_view,946684799,1,",  # a second before 2000-01-01
        "e4,u1,product_view,-100000000000000,1,",
        "e5,u1,product_view,0001-01-01T00:00:00Z,1,",
        "e6,u1,product_view," + "9" * 400 + ",1,",  # beyond a double
        "e7,u1,product_view,1700000000,1000000001,",
        "e8,u1,product_view,1700000000,1,1000001",
        "e9,u1,purchase,1700000000,1000,1000000",  # revenue exactly 1e9
        "e10,u1,purchase,1700000000,1000.5,1000000",  # revenue above 1e9
    ]
    result = _run(_write(tmp_path / "native.csv", [header, *rows]), tmp_path)
    assert result.bad[["line", "reason"]].values.tolist() == [
        [4, "too_old"],
        [5, "too_old"],
        [6, "too_old"],
        [7, "invalid:ts"],  # inf as a double: not a time
        [8, "invalid:price"],
        [9, "invalid:quantity"],
        [11, "invalid:revenue"],
    ]
    too_old = result.bad.loc[result.bad["reason"] == "too_old", "detail"]
    assert all("2000-01-01T00:00:00+00:00" in d for d in too_old)
    events = result.events.to_pandas()
    assert events["ts"].tolist() == [1_700_000_000.0] * 3
    assert events["revenue"].tolist()[-1] == 1e9


def test_parquet_epoch_numbers_follow_the_same_rule(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "event_id": ["a", "b", "c", "d"],
            "user_id": ["u1"] * 4,
            "event_type": ["page_view"] * 4,
            # seconds (as segscore writes them), ms, before the floor, infinite
            "ts": [1_700_000_000.5, 1_700_000_000_500.0, -1e14, np.inf],
        }
    )
    src = tmp_path / "native.parquet"
    frame.to_parquet(src, index=False)
    result = _run(src, tmp_path)
    assert result.summary.layout == "native"
    assert result.bad[["line", "reason"]].values.tolist() == [
        [3, "too_old"],
        [4, "invalid:ts"],
    ]
    assert result.events.column("ts").to_pylist() == [1_700_000_000.5] * 2


def test_the_floor_is_a_parameter(tmp_path: Path) -> None:
    rows = [orjson.dumps(_valid(ts=t)).decode() for t in ("2010-01-01T00:00:00Z",)]
    src = _write(tmp_path / "one.jsonl", rows)
    floor = 1_600_000_000.0  # 2020-09-13
    result = import_events(
        src, tmp_path / "e.parquet", now=NOW, layout="native", min_ts=floor
    )
    assert result.bad["reason"].tolist() == ["too_old"]
    assert "2020-09-13" in result.bad["detail"][0]
    want = parse_event(rows[0], now=NOW, min_ts=floor)
    assert isinstance(want, Rejection) and want.reason == "too_old"


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


@pytest.mark.parametrize("raw", [t for t in TRICKY if isinstance(t, dict)])
def test_fast_paths_agree_with_parse_event(tmp_path: Path, raw: dict) -> None:
    # Alone in a file, every column has one type, so the vectorised paths (not the
    # per-value fallback that mixed JSON columns take) decide the row.
    line = orjson.dumps(raw).decode()
    src = _write(tmp_path / "one.jsonl", [line])
    result = import_events(src, tmp_path / "events.parquet", now=NOW, layout="native")
    want = parse_event(line, now=NOW)
    if "event_id" not in raw:
        # A file without an event_id column gets generated ids (by design).
        want = parse_event({**raw, "event_id": "generated"}, now=NOW)
    if isinstance(want, Rejection):
        assert result.bad["reason"].tolist() == [want.reason]
        return
    assert result.summary.accepted == 1, result.bad.to_dict("records")
    row = result.events.to_pylist()[0]
    assert row["ts"] == want.ts
    assert row["price"] == want.price
    assert row["quantity"] == want.quantity
    assert row["revenue"] == want.revenue
    assert row["user_id"] == want.user_id
