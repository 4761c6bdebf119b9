"""Validation: every contract field staged from the source, each row's verdict, and
the split into accepted events and bad rows (line, reason, detail, raw).

The first failing field in the contract's field order gives a row's reason, in
:func:`core.events.parse_event`'s vocabulary and order.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.event_files import COLUMNS
from core.events import DEFAULT_MIN_TS, MAX_AMOUNT, MAX_QUANTITY
from training.event_import.columns import (
    TARGET_TYPES,
    Col,
    as_text,
    conv_event_type,
    conv_float,
    conv_quantity,
    conv_text,
    is_text,
    np_mask,
)
from training.event_import.layouts import (
    EVENT_TYPES,
    ID_FIELDS,
    REQUIRED,
    TEXT_FIELDS,
    ImportFailed,
    Mapping,
)
from training.event_import.output import events_schema
from training.event_import.sources import RawColumn, Source
from training.event_import.timestamps import conv_ts

BAD_COLUMNS = ["line", "reason", "detail", "raw"]


def stage(
    source: Source, mapping: Mapping
) -> tuple[dict[str, Col], np.ndarray, np.ndarray]:
    """Every contract field as a :class:`Col`, the rows skipped by the mapping, and
    the source's event name of each row whose event type is unknown (None elsewhere)."""
    n = source.rows
    present = set(source.names)
    named = {f: [c for c, t in mapping.columns.items() if t == f] for f in COLUMNS}
    for name in REQUIRED:
        listed = named[name]
        if listed and name not in mapping.constants and not present & set(listed):
            raise ImportFailed(f"column {listed[0]!r} (-> {name}) is not in the file")
    cols: dict[str, Col] = {}
    skipped = np.zeros(n, bool)
    unknown = np.full(n, None, dtype=object)
    for name in COLUMNS:
        raw = _raw_field(
            source, mapping, name, [c for c in named[name] if c in present]
        )
        if name in ID_FIELDS or name in TEXT_FIELDS:
            col = conv_text(name, raw, n, strict=mapping.strict_types)
        elif name == "event_type":
            col, skipped = conv_event_type(raw, n, mapping.event_types)
            unknown = _names_at(raw, col.invalid)
        elif name == "ts":
            col = conv_ts(raw, n, mapping, source.kind)
        elif name == "quantity":
            col = conv_quantity(raw, n)
        else:
            col = conv_float(name, raw, n)
        if name in source.null_required:
            # A JSON null where the contract requires a value: invalid, as on the wire.
            col.missing[source.null_required[name]] = False
            col.invalid[source.null_required[name]] = True
        cols[name] = col
    return cols, skipped, unknown


def _names_at(raw: RawColumn | None, rows: np.ndarray) -> np.ndarray:
    """The source values at these rows as text (None elsewhere), for messages."""
    out = np.full(len(rows), None, dtype=object)
    idx = np.flatnonzero(rows)
    if raw is None or not len(idx):
        return out
    if isinstance(raw, list):
        values = [raw[i] for i in idx]
    else:
        picked = raw.take(pa.array(idx))
        if is_text(picked.type):
            picked = pc.utf8_trim(picked.cast(pa.string()), characters=" \t\r\n")
        values = picked.to_pylist()
    out[idx] = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in values]
    return out


def _raw_field(
    source: Source, mapping: Mapping, name: str, columns: list[str]
) -> RawColumn | None:
    n = source.rows
    if name in mapping.constants:
        return pa.array([mapping.constants[name]] * n)
    if not columns:
        raw: RawColumn | None = None
    elif len(columns) == 1 or mapping.strict_types:
        raw = source.column(columns[0])
    else:
        # Several source columns feed one field: the first non-empty wins.
        parts = [as_text(source.column(c)) for c in columns]
        raw = pc.coalesce(*parts)
    if name in mapping.defaults:
        value = mapping.defaults[name]
        if raw is None:
            return pa.array([value] * n)
        if isinstance(raw, list):
            return [value if v is None else v for v in raw]
        if not pa.types.is_null(raw.type):
            value = pa.scalar(str(value) if is_text(raw.type) else value, raw.type)
        return pc.fill_null(raw, value)
    return raw


def verdict(
    cols: dict[str, Col],
    *,
    now: float,
    max_future_seconds: float,
    min_ts: float = DEFAULT_MIN_TS,
) -> tuple[np.ndarray, np.ndarray]:
    """The reason each row is rejected (None: accepted), and its revenue.

    The first failing field in the contract's field order decides the reason, as
    pydantic reports it; then the purchase-revenue rule (present, or price x
    quantity within ``MAX_AMOUNT``), then the floor (``too_old``), then the future
    rule, in :func:`core.events.parse_event`'s order.
    """
    n = len(cols["user_id"].missing)
    reasons = np.full(n, None, dtype=object)
    for name in reversed(COLUMNS):  # earlier fields overwrite later ones
        col = cols[name]
        bad = "unknown_event_type" if name == "event_type" else f"invalid:{name}"
        reasons[col.invalid] = bad
        if name in REQUIRED:
            reasons[col.missing] = f"missing:{name}"
    ok = reasons == None  # noqa: E711 (elementwise on an object array)
    purchase = np_mask(pc.equal(cols["event_type"].values, "purchase"))
    price = cols["price"].values.to_numpy(zero_copy_only=False)
    revenue = cols["revenue"].values.to_numpy(zero_copy_only=False).copy()
    quantity = cols["quantity"].values.to_numpy(zero_copy_only=False).astype(np.float64)
    fill = purchase & np.isnan(revenue)
    revenue[fill] = price[fill] * np.nan_to_num(quantity[fill], nan=1.0)
    with np.errstate(invalid="ignore"):
        unbounded = fill & ~(revenue <= MAX_AMOUNT)  # NaN too: no price
    reasons[ok & unbounded] = "invalid:revenue"
    ts = cols["ts"].values.to_numpy(zero_copy_only=False)
    ok = reasons == None  # noqa: E711
    with np.errstate(invalid="ignore"):
        reasons[ok & (ts < min_ts)] = "too_old"
        ok = reasons == None  # noqa: E711
        reasons[ok & (ts > now + max_future_seconds)] = "future_ts"
    return reasons, revenue


NOT_A_TYPE = "not one of " + ", ".join(EVENT_TYPES)
_DETAILS = {
    "unknown_event_type": f"event_type: {NOT_A_TYPE}",
    "invalid:ts": (
        "ts: not a finite epoch number (seconds below 1e11, else ms) or ISO-8601 "
        "with a zone (or the mapping's format)"
    ),
    "invalid:revenue": (
        f"revenue: must be a number in [0, {MAX_AMOUNT:g}]; a purchase without "
        f"one needs a price, and price x quantity must not exceed {MAX_AMOUNT:g}"
    ),
    "future_ts": "ts lies in the future",
}
NO_REVENUE = (
    "revenue: a purchase without revenue or price; map a revenue or price column, "
    "or set defaults.revenue in the mapping (see docs/importing.md)"
)


def _detail(reason: str, min_ts: float = DEFAULT_MIN_TS) -> str:
    if reason in _DETAILS:
        return _DETAILS[reason]
    kind, _, name = reason.partition(":")
    if kind == "missing":
        return f"{name}: field required"
    if reason == "too_old":
        return (
            f"ts is before {datetime.fromtimestamp(min_ts, UTC).isoformat()}, the "
            "earliest event time accepted; to import older logs, set "
            "SEGSCORE_MIN_EVENT_TIME (setting min_event_time) to an earlier date"
        )
    rules = {
        "price": f"a number in [0, {MAX_AMOUNT:g}]",
        "quantity": f"a whole number in [1, {MAX_QUANTITY}]",
        "event_id": "text of 1..128 characters",
        "user_id": "text of 1..128 characters",
    }
    return f"{name}: must be {rules.get(name, 'text of at most 256 characters')}"


def convert(
    source: Source,
    mapping: Mapping,
    *,
    now: float,
    max_future_seconds: float = 300,
    id_prefix: str = "imp",
    min_ts: float = DEFAULT_MIN_TS,
) -> tuple[pa.Table, pd.DataFrame, int, dict[str, int]]:
    """Source columns -> (accepted events, bad rows, rows skipped by the mapping,
    unknown source event names with their counts, most frequent first)."""
    generate_ids = "event_id" not in mapping.constants and not any(
        t == "event_id" and c in source.names for c, t in mapping.columns.items()
    )
    cols, skipped, names = stage(source, mapping)
    if generate_ids:
        ids = pc.binary_join_element_wise(
            id_prefix, pc.cast(pa.array(source.lines), pa.string()), "-"
        )
        cols["event_id"] = Col(
            ids, np.zeros(source.rows, bool), np.zeros(source.rows, bool)
        )
    reasons, revenue = verdict(
        cols, now=now, max_future_seconds=max_future_seconds, min_ts=min_ts
    )
    reasons[skipped] = None
    accepted = (reasons == None) & ~skipped  # noqa: E711
    rejected = np.flatnonzero(~accepted & ~skipped)
    details = [_detail(r, min_ts) for r in reasons[rejected]]
    why = reasons[rejected]
    no_price = cols["revenue"].missing & cols["price"].missing
    for k in np.flatnonzero((why == "invalid:revenue") & no_price[rejected]):
        details[k] = NO_REVENUE
    unknown_rows = np.flatnonzero(why == "unknown_event_type")
    values = names[rejected[unknown_rows]].tolist()
    unknown = Counter(v for v in values if v is not None)
    said = {v: f"event_type: {v!r} is {NOT_A_TYPE}" for v in unknown}
    for k, value in zip(unknown_rows.tolist(), values, strict=True):
        if value is not None:
            details[k] = said[value]
    bad = pd.DataFrame(
        {
            "line": source.lines[rejected],
            "reason": reasons[rejected].astype(str),
            "detail": details,
            "raw": source.raw(rejected),
        },
        columns=BAD_COLUMNS,
    )
    early = pd.DataFrame([b.__dict__ for b in source.bad], columns=BAD_COLUMNS)
    if len(early):
        bad = pd.concat([early, bad], ignore_index=True)
    bad = bad.sort_values("line", kind="stable", ignore_index=True)
    bad["line"] = bad["line"].astype("int64")
    keep = pa.array(accepted)
    arrays = []
    for name in COLUMNS:
        values = cols[name].values
        if name == "revenue":
            values = pa.array(revenue, pa.float64(), from_pandas=True)
        arrays.append(values.filter(keep).cast(TARGET_TYPES[name]))
    events = pa.Table.from_arrays(arrays, schema=events_schema())
    return events, bad, int(skipped.sum()), dict(unknown.most_common())
