"""The imported event file: its schema, the self-check against the contract, and
writing the events, the bad-row report and the simulator's personas beside them."""

from __future__ import annotations

import logging
import math
import random
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.event_files import COLUMNS, JSON_LINES
from core.events import DEFAULT_MIN_TS, Event, parse_event
from training.event_import.columns import TARGET_TYPES, VALID_BASE

logger = logging.getLogger(__name__)


def events_schema() -> pa.Schema:
    """The Parquet schema ``write_events`` produces (pandas metadata: Int64 etc.)."""
    template = events_frame_template()
    meta = pa.Schema.from_pandas(template, preserve_index=False).metadata
    return pa.schema([pa.field(c, TARGET_TYPES[c]) for c in COLUMNS], metadata=meta)


def events_frame_template() -> pd.DataFrame:
    """A one-row frame shaped exactly as ``events_frame`` shapes events."""
    from core.event_files import events_frame

    sample = Event.model_validate(
        {**VALID_BASE, "event_type": "purchase", "price": 1.0, "quantity": 1}
    )
    return events_frame([sample])


def self_check(
    events: pa.Table,
    *,
    now: float,
    max_future_seconds: float,
    sample: int = 100,
    min_ts: float = DEFAULT_MIN_TS,
) -> None:
    """Accepted rows must pass ``parse_event`` too (a cheap guard against drift)."""
    if events.num_rows == 0:
        return
    rng = random.Random(events.num_rows)
    idx = sorted(rng.sample(range(events.num_rows), min(sample, events.num_rows)))
    for row in events.take(pa.array(idx)).to_pylist():
        wire = {k: v for k, v in row.items() if v is not None}
        wire["ts"] = row["ts"] * 1000.0
        parsed = parse_event(
            wire, now=now, max_future_seconds=max_future_seconds + 1, min_ts=min_ts
        )
        if not isinstance(parsed, Event):
            raise RuntimeError(f"importer accepted what the contract rejects: {parsed}")
        revenue = row["revenue"]
        if parsed.event_type.value != row["event_type"] or (
            parsed.revenue is not None
            and revenue is not None
            and not math.isclose(parsed.revenue, revenue, rel_tol=1e-9)
        ):
            raise RuntimeError(f"importer and contract disagree on {row}")


def write_events_table(events: pa.Table, out: Path) -> None:
    """Write the accepted events as Parquet, or JSON lines by ``out``'s suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix in JSON_LINES:
        frame = events.to_pandas()
        frame["ts"] = (frame["ts"] * 1000).round().astype("int64")
        frame.to_json(tmp, orient="records", lines=True)
    else:
        pq.write_table(events, tmp)
    # Readers never see half a file, and a failed import leaves the old one.
    tmp.replace(out)


def write_report(bad: pd.DataFrame, report: Path) -> None:
    """Write the bad rows as CSV; with none, remove an earlier report."""
    if len(bad):
        report.parent.mkdir(parents=True, exist_ok=True)
        bad.to_csv(report, index=False)
    elif report.exists():
        report.unlink()  # a report from an earlier import would mislead


def copy_personas(path: Path, out: Path) -> None:
    """Carry the simulator's ground truth along; never leave a stale one behind."""
    source = path.with_suffix(".personas.json")
    target = out.with_suffix(".personas.json")
    if source.resolve() == target.resolve():
        return
    if source.exists():
        shutil.copyfile(source, target)
    elif target.exists():
        # Personas of other (simulated) users would be scored as ground truth.
        target.unlink()
        logger.info("import removed stale personas file %s", target)
