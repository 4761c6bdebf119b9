"""Event time as epoch seconds: the wire rule, or a mapping's unit, format or zone.

The wire rule (native layout) reads numbers as epoch seconds below 1e11 and as
milliseconds above, and text as ISO-8601 with a zone; mappings may name a unit, a
``strptime`` format, or let pandas infer the date format of plain transaction logs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.events import EPOCH_MS_THRESHOLD
from training.event_import.columns import (
    Col,
    absent,
    as_text,
    decide_exactly,
    exact_column,
    is_number,
    is_text,
    np_mask,
)
from training.event_import.layouts import TS_UNITS, Mapping
from training.event_import.sources import RawColumn

# Canonical forms the vectorised paths decide themselves; anything else goes to Event.
_ISO_FAST = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_NUMBER_TEXT = r"^-?\d+(\.\d+)?$"


def conv_ts(raw: RawColumn | None, n: int, mapping: Mapping, kind: str) -> Col:
    """Event time as epoch seconds, by the mapping's rule or else the wire rule.

    The wire rule (native layout): a number is epoch seconds when its magnitude is
    below 1e11, else epoch milliseconds (:func:`core.events.epoch_seconds`);
    text is ISO-8601 with a zone.
    CSV has no types, so a numeric cell there counts as a number. Non-finite
    numbers are invalid.
    """
    if raw is None or (not isinstance(raw, list) and pa.types.is_null(raw.type)):
        return absent("ts", n)
    if mapping.ts_unit or mapping.ts_format or mapping.ts_auto:
        if isinstance(raw, list):
            raw = as_text(raw)
        return _ts_mapped(raw, n, mapping)
    if isinstance(raw, list):
        return exact_column("ts", raw)
    missing = np_mask(pc.is_null(raw))
    if pa.types.is_boolean(raw.type):
        return Col(pa.nulls(n, pa.float64()), missing, ~missing)
    if is_number(raw.type):
        numbers = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        missing = np.isnan(numbers)  # NaN is how typed columns say "no value"
        invalid = ~missing & ~np.isfinite(numbers)
        # Parquet that segscore wrote holds seconds, which the rule leaves alone.
        seconds = np.where(invalid, np.nan, _epoch_seconds(numbers))
        return Col(pa.array(seconds, from_pandas=True), missing, invalid)
    if pa.types.is_timestamp(raw.type):
        return _ts_from_timestamps(raw, missing)
    if not is_text(raw.type):
        return Col(pa.nulls(n, pa.float64()), missing, ~missing)
    raw = raw.cast(pa.string())
    seconds = np.full(n, np.nan)
    decided = missing.copy()
    csv_invalid = np.zeros(n, bool)
    if kind == "csv":
        numeric = np_mask(pc.match_substring_regex(raw, _NUMBER_TEXT))
        if numeric.any():
            picked = raw.filter(pa.array(numeric)).cast(pa.float64())
            numbers = _epoch_seconds(picked.to_numpy(zero_copy_only=False))
            bad = ~np.isfinite(numbers)  # digits beyond a double's range
            seconds[numeric] = np.where(bad, np.nan, numbers)
            decided |= numeric
            csv_invalid[np.flatnonzero(numeric)[bad]] = True
    iso = np_mask(pc.match_substring_regex(raw, _ISO_FAST)) & ~decided
    if iso.any():
        text = pd.Series(raw.filter(pa.array(iso)).to_numpy(zero_copy_only=False))
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        micros = parsed.to_numpy(dtype="datetime64[us]").astype(np.int64)
        # Microseconds are exact in a float64, and one division rounds correctly:
        # the same float as datetime.timestamp() gives.
        good = ~parsed.isna().to_numpy()
        where = np.flatnonzero(iso)
        seconds[where[good]] = micros[good].astype(np.float64) / 1e6
        decided[where[good]] = True
    col = Col(pa.array(seconds, from_pandas=True), missing, csv_invalid)
    todo = np.flatnonzero(~decided)
    return decide_exactly(
        "ts", col.values, todo, raw.take(pa.array(todo)).to_pylist(), col
    )


def _epoch_seconds(numbers: np.ndarray) -> np.ndarray:
    """:func:`core.events.epoch_seconds` over an array (the same floats)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(numbers) < EPOCH_MS_THRESHOLD, numbers, numbers / 1000.0)


def _ts_from_timestamps(raw: pa.Array, missing: np.ndarray) -> Col:
    # A typed timestamp without a zone is taken as UTC (Parquet's usual meaning).
    micros = pc.cast(raw.cast(pa.timestamp("us", raw.type.tz)), pa.int64())
    seconds = micros.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
    return Col(pa.array(seconds, from_pandas=True), missing, np.zeros(len(raw), bool))


def _ts_mapped(raw: pa.Array, n: int, mapping: Mapping) -> Col:
    """Times by a mapping's unit, strptime format or inferred date format."""
    missing = np_mask(pc.is_null(raw))
    if pa.types.is_timestamp(raw.type):
        return _ts_from_timestamps(raw, missing)
    if mapping.ts_unit:
        divisor = TS_UNITS[mapping.ts_unit]
        if is_text(raw.type):
            numeric = np_mask(pc.match_substring_regex(raw, _NUMBER_TEXT))
            numbers = np.full(n, np.nan)
            if numeric.any():
                picked = raw.filter(pa.array(numeric)).cast(pa.float64())
                numbers[numeric] = picked.to_numpy(zero_copy_only=False)
        elif is_number(raw.type):
            numbers = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        else:
            numbers = np.full(n, np.nan)
        seconds = numbers / divisor
        invalid = ~missing & ~np.isfinite(seconds)
        return Col(pa.array(np.where(invalid, np.nan, seconds), from_pandas=True),
                   missing, invalid)  # fmt: skip
    text = as_text(raw)
    seconds = np.full(n, np.nan)
    if mapping.ts_format:
        parsed_us = _strptime(text, mapping.ts_format, mapping.timezone)
    else:
        parsed_us = _infer_dates(text, mapping.timezone, mapping.dayfirst)
    good = ~np.isnan(parsed_us)
    seconds[good] = parsed_us[good] / 1e6
    invalid = ~missing & ~good
    return Col(pa.array(seconds, from_pandas=True), missing, invalid)


def _localize(series: pd.Series, zone: str | None) -> pd.Series:
    if series.dt.tz is None:
        return series.dt.tz_localize(zone or "UTC", ambiguous="NaT", nonexistent="NaT")
    return series


def _micros(series: pd.Series) -> np.ndarray:
    """Aware datetimes -> epoch microseconds as float (NaN where unparsed)."""
    values = series.dt.tz_convert("UTC").to_numpy(dtype="datetime64[us]")
    out = values.astype(np.int64).astype(np.float64)
    out[series.isna().to_numpy()] = np.nan
    return out


def _strptime(text: pa.Array, fmt: str, zone: str | None) -> np.ndarray:
    naive_utc = "%z" not in fmt and "%Z" not in fmt and (zone or "UTC") == "UTC"
    if naive_utc:
        # Arrow's strptime is the fast path for the common zone-less UTC formats.
        try:
            stamps = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
            micros = pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False)
            return micros.astype(np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(series, format=fmt, errors="coerce", utc=naive_utc)
    if parsed.dt.tz is None:
        parsed = _localize(parsed, zone)
    return _micros(parsed)


def _infer_dates(text: pa.Array, zone: str | None, dayfirst: bool) -> np.ndarray:
    series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
    with warnings.catch_warnings():
        # "Could not infer format" is expected for odd rows: they become NaT and
        # are reported as invalid:ts.
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(
            series, errors="coerce", dayfirst=dayfirst, utc=zone is None
        )
        if parsed.dtype == object:  # aware and naive mixed: read all as UTC
            parsed = pd.to_datetime(
                series, errors="coerce", dayfirst=dayfirst, utc=True
            )
    return _micros(_localize(parsed, zone))
