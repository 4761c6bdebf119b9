"""Contract columns: each field over all rows as a :class:`Col` of the contract's type.

Canonical values are converted and judged by vectorised paths; values those paths do
not recognise (odd whitespace, ``"1_000"``, mixed JSON types...) are decided by
:class:`core.events.Event` itself, one distinct value at a time, so the importer and
``parse_event`` cannot drift apart. Event time is in :mod:`.timestamps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from core.event_files import COLUMNS
from core.events import MAX_AMOUNT, MAX_QUANTITY, Event, EventType
from training.event_import.layouts import EVENT_TYPES, ID_FIELDS
from training.event_import.sources import RawColumn

# A valid, non-purchase event: validating {**VALID_BASE, field: value} with Event
# isolates the contract's verdict on that one value (the exact path for odd values).
VALID_BASE: dict[str, Any] = {
    "event_id": "e",
    "user_id": "u",
    "event_type": "page_view",
    "ts": 0,
    "revenue": 0.0,  # so that event_type "purchase" is judged on its own
}

# Canonical forms the vectorised paths decide themselves; anything else goes to Event.
_DECIMAL = r"^-?\d{1,15}(\.\d{1,15})?$"
_INTEGER = r"^\+?\d{1,15}$"
# Stripping only ASCII whitespace is where Python and pydantic certainly agree; a
# value that still starts or ends with anything unusual is left to Event.
_ASCII_WS = " \t\n\r\x0b\x0c"
_ODD_EDGE = r"^[^\x21-\x7e]|[^\x21-\x7e]$"


@dataclass
class Col:
    """One contract field over all rows: converted values and what failed."""

    values: pa.Array  # the contract's type; null where missing or invalid
    missing: np.ndarray  # bool
    invalid: np.ndarray  # bool


TARGET_TYPES: dict[str, pa.DataType] = {
    **dict.fromkeys(COLUMNS, pa.string()),
    "ts": pa.float64(),
    "price": pa.float64(),
    "revenue": pa.float64(),
    "quantity": pa.int64(),
}


def np_mask(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow mask as numpy, null counting as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), bool)


def absent(name: str, n: int) -> Col:
    """A field the source does not have: every row missing."""
    return Col(pa.nulls(n, TARGET_TYPES[name]), np.ones(n, bool), np.zeros(n, bool))


def _exact(name: str, value: Any) -> tuple[bool, Any]:
    """The contract's own verdict on one value of one field (and its coercion)."""
    try:
        event = Event.model_validate({**VALID_BASE, name: value})
    except ValidationError:
        return False, None
    coerced = getattr(event, name)
    return True, coerced.value if isinstance(coerced, EventType) else coerced


def decide_exactly(
    name: str, values: pa.Array, todo: np.ndarray, py: list[Any], col: Col
) -> Col:
    """Let :class:`Event` decide the rows ``todo`` (values ``py``), one distinct
    value at a time; fills in their converted values and invalid flags."""
    if not len(todo):
        return col
    verdicts: dict[tuple[type, Any], tuple[bool, Any]] = {}
    ok = np.zeros(len(todo), bool)
    out: list[Any] = []
    for k, value in enumerate(py):
        key = (
            type(value),
            value if isinstance(value, str | int | float) else repr(value),
        )
        if key not in verdicts:
            verdicts[key] = _exact(name, value)
        good, coerced = verdicts[key]
        ok[k] = good
        out.append(coerced if good else None)
    mask = np.zeros(len(values), bool)
    mask[todo] = True
    replaced = pc.replace_with_mask(
        values, pa.array(mask), pa.array(out, TARGET_TYPES[name])
    )
    invalid = col.invalid.copy()
    invalid[todo] = ~ok
    return Col(replaced, col.missing, invalid)


def exact_column(name: str, py: list[Any]) -> Col:
    """A column of mixed JSON types: every value decided by the contract."""
    n = len(py)
    missing = np.fromiter((v is None for v in py), bool, n)
    todo = np.flatnonzero(~missing)
    col = Col(pa.nulls(n, TARGET_TYPES[name]), missing, np.zeros(n, bool))
    return decide_exactly(name, col.values, todo, [py[i] for i in todo], col)


def is_text(t: pa.DataType) -> bool:
    """Whether an Arrow type holds text."""
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_number(t: pa.DataType) -> bool:
    """Whether an Arrow type holds numbers (integers, floats, decimals)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def as_text(raw: RawColumn) -> pa.Array:
    """Ids and codes that arrive as numbers, as text (10.0 -> "10")."""
    if isinstance(raw, list):
        return pa.array([None if v is None else _py_text(v) for v in raw], pa.string())
    if is_text(raw.type):
        return raw.cast(pa.string())
    if pa.types.is_floating(raw.type):
        whole = pc.equal(pc.floor(raw), raw)
        if np_mask(pc.or_kleene(whole, pc.is_null(raw))).all() and len(raw):
            return pc.cast(pc.cast(raw, pa.int64()), pa.string())
    return pc.cast(raw, pa.string())


def _py_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def conv_text(name: str, raw: RawColumn | None, n: int, *, strict: bool) -> Col:
    """A text field (ids 1..128 characters, others up to 256), stripped."""
    if raw is None:
        return absent(name, n)
    if isinstance(raw, list):
        return (
            exact_column(name, raw)
            if strict
            else conv_text(name, as_text(raw), n, strict=strict)
        )
    if pa.types.is_null(raw.type):
        return absent(name, n)
    missing = np_mask(pc.is_null(raw))
    if not is_text(raw.type):
        if strict:  # the contract takes no numbers where it wants text
            return Col(pa.nulls(n, pa.string()), missing, ~missing)
        raw = as_text(raw)
    raw = raw.cast(pa.string())
    trimmed = pc.utf8_trim(raw, characters=_ASCII_WS)
    odd = np_mask(pc.match_substring_regex(trimmed, _ODD_EDGE))
    lengths = pc.utf8_length(trimmed).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(lengths.astype(np.float64), nan=0.0)
    low, high = (1, 128) if name in ID_FIELDS else (0, 256)
    invalid = ~missing & ~odd & ((lengths < low) | (lengths > high))
    values = pc.if_else(pa.array(invalid), pa.nulls(n, pa.string()), trimmed)
    col = Col(values, missing, invalid)
    todo = np.flatnonzero(odd)
    return decide_exactly(name, values, todo, raw.take(pa.array(todo)).to_pylist(), col)


def conv_event_type(
    raw: RawColumn | None, n: int, names: dict[str, str | None]
) -> tuple[Col, np.ndarray]:
    """event_type after the mapping of source names; also rows skipped on purpose."""
    skipped = np.zeros(n, bool)
    if raw is None:
        return absent("event_type", n), skipped
    if isinstance(raw, list):
        if not names:
            return exact_column("event_type", raw), skipped
        raw = as_text(raw)
    if pa.types.is_null(raw.type):
        return absent("event_type", n), skipped
    missing = np_mask(pc.is_null(raw))
    if not is_text(raw.type):
        if not names:  # the contract: event_type is a string
            return Col(pa.nulls(n, pa.string()), missing, ~missing), skipped
        raw = as_text(raw)
    raw = raw.cast(pa.string())
    if names:
        encoded = pc.dictionary_encode(pc.utf8_trim(raw, characters=_ASCII_WS))
        source = encoded.dictionary.to_pylist()
        target = [names.get(s, s) for s in source]
        drop = np.array([s in names and names[s] is None for s in source], bool)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        present = ~missing
        skipped[present] = drop[codes[present].astype(np.int64)] if len(drop) else False
        raw = pa.DictionaryArray.from_arrays(
            encoded.indices, pa.array([t or "" for t in target], pa.string())
        ).cast(pa.string())
    known = np_mask(pc.is_in(raw, value_set=pa.array(EVENT_TYPES)))
    invalid = ~missing & ~known & ~skipped
    values = pc.if_else(pa.array(known), raw, pa.nulls(n, pa.string()))
    return Col(values, missing, invalid), skipped


def conv_float(name: str, raw: RawColumn | None, n: int) -> Col:
    """price or revenue: a number in [0, MAX_AMOUNT] (text or number on input)."""
    if raw is None or (not isinstance(raw, list) and pa.types.is_null(raw.type)):
        return absent(name, n)
    if isinstance(raw, list):
        return exact_column(name, raw)
    if pa.types.is_boolean(raw.type):
        raw = pc.cast(raw, pa.float64())  # the contract reads true as 1.0
    if is_number(raw.type):
        values = pc.cast(raw, pa.float64())
        as_np = values.to_numpy(zero_copy_only=False)
        # NaN in a typed column is how Parquet/pandas say "no value".
        missing = np.isnan(as_np)
        with np.errstate(invalid="ignore"):
            invalid = ~missing & (
                ~np.isfinite(as_np) | (as_np < 0) | (as_np > MAX_AMOUNT)
            )
        values = pa.array(np.where(missing | invalid, np.nan, as_np), from_pandas=True)
        return Col(values, missing, invalid)
    if not is_text(raw.type):
        missing = np_mask(pc.is_null(raw))
        return Col(pa.nulls(n, pa.float64()), missing, ~missing)
    raw = raw.cast(pa.string())
    missing = np_mask(pc.is_null(raw))
    canonical = np_mask(pc.match_substring_regex(raw, _DECIMAL))
    numbers = np.full(n, np.nan)
    if canonical.any():
        picked = raw.filter(pa.array(canonical)).cast(pa.float64())
        numbers[canonical] = picked.to_numpy(zero_copy_only=False)
    invalid = canonical & ((numbers < 0) | (numbers > MAX_AMOUNT))
    numbers[invalid] = np.nan
    col = Col(pa.array(numbers, from_pandas=True), missing, invalid)
    todo = np.flatnonzero(~missing & ~canonical)
    return decide_exactly(
        name, col.values, todo, raw.take(pa.array(todo)).to_pylist(), col
    )


def conv_quantity(raw: RawColumn | None, n: int) -> Col:
    """quantity: a whole number in [1, MAX_QUANTITY] (text or number on input)."""
    name = "quantity"
    if raw is None or (not isinstance(raw, list) and pa.types.is_null(raw.type)):
        return absent(name, n)
    if isinstance(raw, list):
        return exact_column(name, raw)
    missing = np_mask(pc.is_null(raw))
    if pa.types.is_integer(raw.type):
        # Compared as floats: a uint64 beyond int64 must be judged, not overflow.
        as_np = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        as_np = np.nan_to_num(as_np, nan=1.0)
        invalid = ~missing & ((as_np < 1) | (as_np > MAX_QUANTITY))
        whole = pc.cast(raw, pa.int64(), safe=False)  # wrapped values are invalid
        values = pc.if_else(pa.array(invalid), pa.nulls(n, pa.int64()), whole)
        return Col(values, missing, invalid)
    if pa.types.is_floating(raw.type):
        as_np = raw.cast(pa.float64()).to_numpy(zero_copy_only=False)
        missing = np.isnan(as_np)
        with np.errstate(invalid="ignore"):
            fast = ~missing & (np.floor(as_np) == as_np) & (np.abs(as_np) < 2**53)
        whole = np.where(fast, as_np, 0).astype(np.int64)
        invalid = fast & ((whole < 1) | (whole > MAX_QUANTITY))
        keep = fast & ~invalid
        values = pa.array(np.where(keep, whole, 0), pa.int64(), mask=~keep)
        col = Col(values, missing, invalid)
        todo = np.flatnonzero(~missing & ~fast)
        return decide_exactly(name, values, todo, [float(as_np[i]) for i in todo], col)
    if not is_text(raw.type):
        todo = np.flatnonzero(~missing)
        col = Col(pa.nulls(n, pa.int64()), missing, np.zeros(n, bool))
        py = raw.take(pa.array(todo)).to_pylist()
        return decide_exactly(name, col.values, todo, py, col)
    raw = raw.cast(pa.string())
    canonical = np_mask(pc.match_substring_regex(raw, _INTEGER))
    whole = np.zeros(n, np.int64)
    if canonical.any():
        picked = pc.utf8_ltrim(raw.filter(pa.array(canonical)), characters="+")
        whole[canonical] = picked.cast(pa.int64()).to_numpy(zero_copy_only=False)
    invalid = canonical & ((whole < 1) | (whole > MAX_QUANTITY))
    keep = canonical & ~invalid
    values = pa.array(np.where(keep, whole, 0), pa.int64(), mask=~keep)
    col = Col(values, missing, invalid)
    todo = np.flatnonzero(~missing & ~canonical)
    return decide_exactly(name, values, todo, raw.take(pa.array(todo)).to_pylist(), col)
