"""segscore import: the vectorised validator against the contract's own parser, on
tricky wire events, CSV cells, epoch numbers and the event-time floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from core.event_files import COLUMNS, read_events
from core.events import Rejection, parse_event
from training.event_import import import_events

NOW = 1_800_000_000.0  # 2027-01-15


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(path: Path, tmp_path: Path, **kwargs: object):
    return import_events(path, tmp_path / "out" / "events.parquet", now=NOW, **kwargs)  # type: ignore[arg-type]


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
        "e3,u1,product_view,631151999,1,",  # a second before 1990-01-01
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
    assert all("1990-01-01T00:00:00+00:00" in d for d in too_old)
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
