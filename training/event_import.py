"""``segscore import``: event logs in other layouts -> the contract's event file.

Sources are CSV, Parquet or JSON lines (by suffix) in one of four layouts:

* ``native``: the contract's own columns (what ``segscore simulate`` writes);
* ``ecommerce``: the public "eCommerce behavior data from multi category store"
  layout (event_time, event_type view/cart/remove_from_cart/purchase, ...);
* ``transactions``: plain purchase logs (customer id, date, amount[, quantity]);
* ``mapping``: anything else, described by a small YAML/JSON mapping file.

Every layout reduces to a :class:`Mapping` (source columns -> contract fields), and
one vectorised validator applies the rules of :class:`core.events.Event` to whole
columns. Values the fast paths do not recognise as canonical (odd whitespace, exotic
ISO forms, ``"1_000"``...) are decided by ``Event`` itself, one distinct value at a
time, so the importer and ``parse_event`` cannot drift apart. Bad rows keep their
line number in the source file and a reason from ``parse_event``'s vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import random
import re
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import ValidationError

from core.event_files import COLUMNS, JSON_LINES
from core.events import (
    DEFAULT_MIN_TS,
    EPOCH_MS_THRESHOLD,
    MAX_AMOUNT,
    MAX_QUANTITY,
    Event,
    EventType,
    parse_event,
)

logger = logging.getLogger(__name__)

LAYOUTS = ("native", "ecommerce", "transactions", "mapping")
EVENT_TYPES = tuple(t.value for t in EventType)
REQUIRED = ("event_id", "user_id", "event_type", "ts")
ID_FIELDS = ("event_id", "user_id")
TEXT_FIELDS = ("session_id", "product_id", "category", "device", "channel", "country")
FLOAT_FIELDS = ("price", "revenue")
TS_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
RAW_EXCERPT = 300

# A valid, non-purchase event: validating {**_BASE, field: value} with Event isolates
# the contract's verdict on that one value (the exact path for odd values).
_BASE: dict[str, Any] = {
    "event_id": "e",
    "user_id": "u",
    "event_type": "page_view",
    "ts": 0,
    "revenue": 0.0,  # so that event_type "purchase" is judged on its own
}

# Canonical forms the vectorised paths decide themselves; anything else goes to Event.
_ISO_FAST = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_DECIMAL = r"^-?\d{1,15}(\.\d{1,15})?$"
_INTEGER = r"^\+?\d{1,15}$"
_NUMBER_TEXT = r"^-?\d+(\.\d+)?$"
# Stripping only ASCII whitespace is where Python and pydantic certainly agree; a
# value that still starts or ends with anything unusual is left to Event.
_ASCII_WS = " \t\n\r\x0b\x0c"
_ODD_EDGE = r"^[^\x21-\x7e]|[^\x21-\x7e]$"


class ImportFailed(Exception):
    """The file as a whole cannot be imported (unreadable, unknown layout...)."""


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class Mapping:
    """How one source layout becomes contract events.

    Attributes:
        columns: Source column -> contract field. Several source columns may feed
            one field; the first non-empty one wins (in the order given).
        event_types: Source event name -> contract event type; ``None`` skips rows
            of that name on purpose (counted in the summary, not reported as bad).
            Names not listed pass through and must already be contract types.
        ts_format: ``strptime`` format of the time column (e.g. ``%d/%m/%Y %H:%M``).
        ts_unit: The time column holds epoch numbers in this unit (s, ms, us, ns).
        ts_auto: Let pandas infer the date format (plain transaction logs).
        timezone: Zone of times that carry none (default: such times are invalid
            in the wire rule, UTC for ``ts_format``/``ts_auto``).
        dayfirst: For ``ts_auto``: 01/02/2024 is 1 February.
        constants: Contract field -> value for every row (e.g. event_type).
        defaults: Contract field -> value where the source cell is empty.
        strict_types: Apply the contract's types literally (the native layout): a
            number where text is expected is invalid. Otherwise ids and codes that
            arrive as numbers become text.
        delimiter: CSV field separator.
        encoding: CSV text encoding.
    """

    columns: dict[str, str]
    event_types: dict[str, str | None] = field(default_factory=dict)
    ts_format: str | None = None
    ts_unit: str | None = None
    ts_auto: bool = False
    timezone: str | None = None
    dayfirst: bool = False
    constants: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    strict_types: bool = False
    delimiter: str = ","
    encoding: str = "utf-8"


ECOMMERCE_EVENTS: dict[str, str | None] = {
    "view": "product_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}

ECOMMERCE = Mapping(
    columns={
        "event_time": "ts",
        "event_type": "event_type",
        "product_id": "product_id",
        "category_code": "category",
        "category_id": "category",  # fallback where category_code is empty
        "price": "price",
        "user_id": "user_id",
        "user_session": "session_id",
    },
    event_types=ECOMMERCE_EVENTS,
    ts_format="%Y-%m-%d %H:%M:%S UTC",
)

# Column-name variants of plain transaction logs, compared without case, spaces,
# dashes or underscores.
TRANSACTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_id": (
        "customerid", "customer", "custid", "clientid", "client", "userid", "user",
        "memberid", "buyerid", "accountid", "customerno", "customernumber",
    ),
    "ts": (
        "date", "invoicedate", "orderdate", "transactiondate", "purchasedate",
        "datetime", "timestamp", "time", "createdat", "ts", "txdate", "saledate",
    ),
    "revenue": (
        "amount", "total", "totalamount", "revenue", "sales", "value", "ordervalue",
        "spend", "ordertotal", "saleamount", "monetary", "linetotal",
    ),
    "price": ("unitprice", "price", "itemprice"),
    "quantity": ("quantity", "qty", "units"),
    "product_id": ("productid", "stockcode", "sku", "itemid", "product", "item"),
    "session_id": (
        "invoice", "invoiceno", "invoicenumber", "orderid", "orderno",
        "transactionid", "receipt",
    ),
    "country": ("country",),
    "channel": ("channel",),
}  # fmt: skip


def _norm_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def transactions_mapping(columns: Iterable[str]) -> Mapping | None:
    """The mapping for a transaction log with these columns, or None if not one."""
    by_norm = {_norm_name(c): c for c in columns}
    chosen: dict[str, str] = {}
    for target, variants in TRANSACTION_COLUMNS.items():
        for variant in variants:
            if variant in by_norm and by_norm[variant] not in chosen:
                chosen[by_norm[variant]] = target
                break
    targets = set(chosen.values())
    if not {"user_id", "ts"} <= targets or not targets & {"revenue", "price"}:
        return None
    return Mapping(columns=chosen, constants={"event_type": "purchase"}, ts_auto=True)


def native_mapping(columns: Iterable[str]) -> Mapping:
    """The identity mapping over the contract columns present."""
    return Mapping(columns={c: c for c in columns if c in COLUMNS}, strict_types=True)


def detect_layout(columns: Iterable[str]) -> str:
    """Which built-in layout these source columns are: native, ecommerce or
    transactions. Raises :class:`ImportFailed` if none fits (use a mapping file)."""
    cols = list(columns)
    names = set(cols)
    if {"event_time", "event_type", "user_id"} <= names:
        return "ecommerce"
    if {"user_id", "event_type", "ts"} <= names:
        return "native"
    if transactions_mapping(cols) is not None:
        return "transactions"
    raise ImportFailed(
        f"unknown layout (columns: {', '.join(cols[:20])}); "
        "pass --layout or a --mapping file (see docs/importing.md)"
    )


def load_mapping(path: Path) -> Mapping:
    """Read a YAML or JSON mapping file (format in docs/importing.md)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml  # only mapping files need it

        data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise ImportFailed(f"{path}: a mapping needs a 'columns' table")
    columns = {str(k): str(v) for k, v in data["columns"].items()}
    unknown = sorted(set(columns.values()) - set(COLUMNS))
    if unknown:
        raise ImportFailed(
            f"{path}: columns must map source column -> contract field; "
            f"not contract fields: {unknown} (fields: {', '.join(COLUMNS)})"
        )
    events = {str(k): (None if v is None else str(v)) for k, v in
              (data.get("event_types") or {}).items()}  # fmt: skip
    bad_events = sorted({v for v in events.values() if v and v not in EVENT_TYPES})
    if bad_events:
        raise ImportFailed(f"{path}: unknown contract event types {bad_events}")
    stamp = data.get("timestamp") or {}
    if isinstance(stamp, str):  # shorthand: timestamp: "%d/%m/%Y %H:%M"
        stamp = {"format": stamp}
    unit = stamp.get("unit")
    if unit is not None and unit not in TS_UNITS:
        raise ImportFailed(f"{path}: timestamp unit must be one of {list(TS_UNITS)}")
    for section in ("constants", "defaults"):
        extra = sorted(set(data.get(section) or {}) - set(COLUMNS))
        if extra:
            raise ImportFailed(f"{path}: {section} names unknown fields {extra}")
    return Mapping(
        columns=columns,
        event_types=events,
        ts_format=stamp.get("format"),
        ts_unit=unit,
        # A zone or day-first hint without a format means: infer the format.
        ts_auto=bool(
            stamp.get("auto")
            or (
                not stamp.get("format")
                and unit is None
                and ("timezone" in stamp or "dayfirst" in stamp)
            )
        ),
        timezone=stamp.get("timezone"),
        dayfirst=bool(stamp.get("dayfirst", False)),
        constants=dict(data.get("constants") or {}),
        defaults=dict(data.get("defaults") or {}),
        delimiter=str(data.get("delimiter", ",")),
        encoding=str(data.get("encoding", "utf-8")),
    )


def mapping_for(layout: str, columns: list[str], mapping: Mapping | None) -> Mapping:
    """The mapping that a layout name stands for, given the source columns."""
    if layout == "mapping":
        if mapping is None:
            raise ImportFailed("layout 'mapping' needs --mapping FILE")
        return mapping
    if layout == "native":
        return native_mapping(columns)
    if layout == "ecommerce":
        return ECOMMERCE
    if layout == "transactions":
        found = transactions_mapping(columns)
        if found is None:
            raise ImportFailed(
                "no customer, date and amount columns found for 'transactions' "
                f"(columns: {', '.join(columns[:20])})"
            )
        return found
    raise ImportFailed(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")


# --------------------------------------------------------------------------- reading

# A source column: typed Arrow values, or (JSON values of mixed types) Python values.
RawColumn = pa.Array | list[Any]


@dataclass(frozen=True)
class BadRow:
    """One rejected source row: where it is, why, and how it starts."""

    line: int
    reason: str
    detail: str
    raw: str


@dataclass
class Source:
    """A source file read into columns, with the line of each data row."""

    table: pa.Table
    lines: np.ndarray  # int64, 1-based line in the file of each row
    kind: str  # csv, parquet, jsonl
    raw: Callable[[np.ndarray], list[str]]  # row indices -> raw excerpts
    bad: list[BadRow] = field(default_factory=list)  # rejected before columns
    blank_lines: int = 0
    mixed: dict[str, list[Any]] = field(default_factory=dict)
    # JSON lines: rows whose required field is present as null. The wire rule says
    # invalid (not missing) for those; columns alone cannot tell null from absent.
    null_required: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Data rows that reached the columns."""
        return self.table.num_rows

    @property
    def names(self) -> list[str]:
        """Column names."""
        return [*self.table.column_names, *self.mixed]

    def column(self, name: str) -> RawColumn:
        """One column, typed or (mixed JSON) as Python values."""
        if name in self.mixed:
            return self.mixed[name]
        return self.table.column(name).combine_chunks()


def source_kind(path: Path) -> str:
    """csv, parquet or jsonl, by suffix."""
    suffix = path.suffix.lower()
    if suffix in JSON_LINES:
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise ImportFailed(f"{path}: unknown file type {suffix!r} (csv, parquet, jsonl)")


def read_columns(
    path: Path, delimiter: str = ",", encoding: str = "utf-8"
) -> list[str]:
    """The column names of a source file, reading as little as possible."""
    kind = source_kind(path)
    if kind == "parquet":
        return list(pq.read_schema(path).names)
    if kind == "csv":
        return _csv_header(path, _delimiter(path, delimiter), encoding)
    names: dict[str, None] = {}
    with path.open("rb") as handle:
        for number, line in enumerate(handle):
            if number >= 1000:
                break
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict):
                names.update(dict.fromkeys(data))
    return list(names)


def _delimiter(path: Path, delimiter: str) -> str:
    return "\t" if path.suffix.lower() == ".tsv" and delimiter == "," else delimiter


def _csv_header(path: Path, delimiter: str, encoding: str) -> list[str]:
    import csv

    with path.open(encoding=encoding, newline="") as handle:
        first = handle.readline()
    row = next(csv.reader([first.removeprefix("\ufeff")], delimiter=delimiter), [])
    return [name.strip() for name in row]


def read_source(
    path: Path, mapping: Mapping | None = None, *, max_bytes: int = 16_384
) -> Source:
    """Read a CSV, Parquet or JSON-lines file into columns, keeping line numbers."""
    kind = source_kind(path)
    if kind == "parquet":
        return _read_parquet(path)
    if kind == "jsonl":
        return _read_jsonl(path, max_bytes)
    delimiter = _delimiter(path, mapping.delimiter if mapping else ",")
    return _read_csv(path, delimiter, mapping.encoding if mapping else "utf-8")


@dataclass
class _CsvScan:
    starts: np.ndarray  # byte offset of each record (the header is record 0)
    ends: np.ndarray  # byte offset just past each record (at its newline)
    lines: np.ndarray  # 1-based line where each record starts
    fields: np.ndarray  # number of fields of each record
    blank: np.ndarray  # empty records (also a lone CR)
    quoted_newlines: bool


def _scan_csv(path: Path, delimiter: int) -> _CsvScan:
    """Record boundaries, first lines and field counts, with numpy (RFC 4180).

    A newline or delimiter is structural when an even number of quote characters
    precede it (a doubled quote inside a quoted value adds two). This yields every
    record's first line as an editor shows it, also when quoted values span lines,
    and the rows with a wrong number of fields, which the parser only skips.
    """
    size = path.stat().st_size
    if size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _CsvScan(empty, empty, empty, empty, empty.astype(bool), False)
    nl_parts: list[np.ndarray] = []
    rank_parts: list[np.ndarray] = []
    delim_parts: list[np.ndarray] = []
    quotes_before = newlines_before = 0
    quoted_newlines = False
    with (
        path.open("rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mem,
    ):
        buf = np.frombuffer(mem, dtype=np.uint8)
        block = 1 << 25  # bounds the temporaries on big files
        for offset in range(0, size, block):
            chunk = buf[offset : offset + block]
            quotes = np.flatnonzero(chunk == 34)
            newlines = np.flatnonzero(chunk == 10)
            delims = np.flatnonzero(chunk == delimiter)
            ranks = newlines_before + np.arange(len(newlines), dtype=np.int64)
            newlines_before += len(newlines)
            if len(quotes) or quotes_before % 2:
                even_nl = (quotes_before + np.searchsorted(quotes, newlines)) % 2 == 0
                even_dl = (quotes_before + np.searchsorted(quotes, delims)) % 2 == 0
                quoted_newlines = quoted_newlines or not bool(even_nl.all())
                newlines, ranks, delims = (
                    newlines[even_nl],
                    ranks[even_nl],
                    delims[even_dl],
                )
            quotes_before += len(quotes)
            nl_parts.append(newlines.astype(np.int64) + offset)
            rank_parts.append(ranks)
            delim_parts.append(delims.astype(np.int64) + offset)
        nl = np.concatenate(nl_parts)
        starts = np.concatenate([[0], nl + 1]).astype(np.int64)
        ends = np.concatenate([nl, [size]]).astype(np.int64)
        lines = np.concatenate([[1], np.concatenate(rank_parts) + 2]).astype(np.int64)
        if starts[-1] >= size:  # the file ends with a newline: no record after it
            starts, ends, lines = starts[:-1], ends[:-1], lines[:-1]
        lengths = ends - starts
        lone_cr = np.zeros(len(starts), dtype=bool)
        ones = np.flatnonzero(lengths == 1)
        lone_cr[ones] = buf[starts[ones]] == 13
        blank = (lengths == 0) | lone_cr
        del buf, chunk
    # Delimiters per record: how many lie before its end minus before its start
    # (a million sorted look-ups rather than one per delimiter).
    delims = np.concatenate(delim_parts)
    fields = np.searchsorted(delims, ends) - np.searchsorted(delims, starts) + 1
    return _CsvScan(starts, ends, lines, fields, blank, quoted_newlines)


def _read_csv(path: Path, delimiter: str, encoding: str) -> Source:
    if len(delimiter) != 1:
        raise ImportFailed("CSV delimiter must be one character")
    header = _csv_header(path, delimiter, encoding)
    if not header or header == [""]:
        raise ImportFailed(f"{path}: no header line")
    scan = _scan_csv(path, ord(delimiter))
    excerpt = _excerpts(path)
    data = ~scan.blank
    data[:1] = False  # the header
    shape_ok = scan.fields == len(header)
    wrong = np.flatnonzero(data & ~shape_ok)
    texts = excerpt(scan.starts[wrong], scan.ends[wrong])
    bad = [
        BadRow(
            int(scan.lines[i]),
            "malformed_row",
            f"expected {len(header)} fields, saw {int(scan.fields[i])}",
            text,
        )
        for i, text in zip(wrong, texts, strict=True)
    ]
    rows = np.flatnonzero(data & shape_ok)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=header, skip_rows=1, encoding=encoding
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                newlines_in_values=scan.quoted_newlines,
                # Reported from the scan above, with their lines; here only skipped.
                invalid_row_handler=lambda _row: "skip",
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ImportFailed(f"{path}: {exc}") from exc
    if table.num_rows != len(rows):
        raise ImportFailed(
            f"{path}: could not align CSV rows with lines ({table.num_rows} parsed, "
            f"{len(rows)} expected); unbalanced quotes?"
        )
    starts, ends = scan.starts[rows], scan.ends[rows]

    def raw(idx: np.ndarray) -> list[str]:
        return excerpt(starts[idx], ends[idx])

    blank = int(scan.blank[1:].sum())
    return Source(table, scan.lines[rows], "csv", raw, bad, blank_lines=blank)


def _excerpts(path: Path) -> Callable[[np.ndarray, np.ndarray], list[str]]:
    """Read byte ranges of the file (only bad rows ever need their text)."""

    def read(starts: np.ndarray, ends: np.ndarray) -> list[str]:
        out = []
        with path.open("rb") as handle:
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                handle.seek(start)
                text = handle.read(min(end - start, RAW_EXCERPT))
                out.append(text.decode("utf-8", "replace").rstrip("\r"))
        return out

    return read


def _read_parquet(path: Path) -> Source:
    table = pq.read_table(path)
    # Parquet has no lines; the 1-based row number stands in for one.
    lines = np.arange(1, table.num_rows + 1, dtype=np.int64)

    def raw(idx: np.ndarray) -> list[str]:
        rows = table.take(pa.array(idx)).to_pylist()
        return [orjson.dumps(r, default=str).decode()[:RAW_EXCERPT] for r in rows]

    return Source(table, lines, "parquet", raw)


def _read_jsonl(path: Path, max_bytes: int) -> Source:
    """JSON lines, with the wire's per-message rules (oversized, malformed_json)."""
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[BadRow] = []
    blank = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            body = line.rstrip(b"\r\n")
            if not body.strip():
                blank += 1
                continue
            if len(body) > max_bytes:
                detail = f"{len(body)} bytes > {max_bytes}"
                bad.append(BadRow(number, "oversized", detail, _text(body)))
                continue
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                bad.append(BadRow(number, "malformed_json", str(exc), _text(body)))
                continue
            if not isinstance(data, dict):
                detail = "event must be a JSON object"
                bad.append(BadRow(number, "malformed_json", detail, _text(body)))
                continue
            records.append(data)
            numbers.append(number)
    names: dict[str, None] = {}
    for record in records:
        if not names.keys() >= record.keys():
            names.update(dict.fromkeys(record))
    arrays: dict[str, pa.Array] = {}
    mixed: dict[str, list[Any]] = {}
    null_required: dict[str, np.ndarray] = {}
    for name in names:
        values = [r.get(name) for r in records]
        typed = _typed(values)
        if typed is None:
            mixed[name] = values
        else:
            arrays[name] = typed
        if name in REQUIRED:
            nulls = [
                i for i, v in enumerate(values) if v is None and name in records[i]
            ]
            if nulls:
                null_required[name] = np.asarray(nulls, dtype=np.int64)
    table = pa.table(arrays) if arrays else pa.table({"__row": pa.nulls(len(records))})
    lines = np.asarray(numbers, dtype=np.int64)

    def raw(idx: np.ndarray) -> list[str]:
        return [orjson.dumps(records[i]).decode()[:RAW_EXCERPT] for i in idx]

    return Source(table, lines, "jsonl", raw, bad, blank, mixed, null_required)


def _text(line: bytes) -> str:
    return line[:RAW_EXCERPT].decode("utf-8", "replace")


def _typed(values: list[Any]) -> pa.Array | None:
    """An Arrow array when the JSON values share one scalar type, else None."""
    kinds = {type(v) for v in values if v is not None}
    # Arrow would quietly turn [true, 2] into numbers, or ints and floats into
    # floats; the contract treats bools and numbers differently, so keep those mixed.
    if len(kinds) > 1 and kinds != {int, float}:
        return None
    if kinds and not kinds <= {str, int, float, bool}:
        return None
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


# ------------------------------------------------------------------ contract columns


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


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow mask as numpy, null counting as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), bool)


def _absent(name: str, n: int) -> Col:
    return Col(pa.nulls(n, TARGET_TYPES[name]), np.ones(n, bool), np.zeros(n, bool))


def _exact(name: str, value: Any) -> tuple[bool, Any]:
    """The contract's own verdict on one value of one field (and its coercion)."""
    try:
        event = Event.model_validate({**_BASE, name: value})
    except ValidationError:
        return False, None
    coerced = getattr(event, name)
    return True, coerced.value if isinstance(coerced, EventType) else coerced


def _decide_exactly(
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


def _exact_column(name: str, py: list[Any]) -> Col:
    """A column of mixed JSON types: every value decided by the contract."""
    n = len(py)
    missing = np.fromiter((v is None for v in py), bool, n)
    todo = np.flatnonzero(~missing)
    col = Col(pa.nulls(n, TARGET_TYPES[name]), missing, np.zeros(n, bool))
    return _decide_exactly(name, col.values, todo, [py[i] for i in todo], col)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _as_text(raw: RawColumn) -> pa.Array:
    """Ids and codes that arrive as numbers, as text (10.0 -> "10")."""
    if isinstance(raw, list):
        return pa.array([None if v is None else _py_text(v) for v in raw], pa.string())
    if _is_text(raw.type):
        return raw.cast(pa.string())
    if pa.types.is_floating(raw.type):
        whole = pc.equal(pc.floor(raw), raw)
        if _np(pc.or_kleene(whole, pc.is_null(raw))).all() and len(raw):
            return pc.cast(pc.cast(raw, pa.int64()), pa.string())
    return pc.cast(raw, pa.string())


def _py_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def conv_text(name: str, raw: RawColumn | None, n: int, *, strict: bool) -> Col:
    """A text field (ids 1..128 characters, others up to 256), stripped."""
    if raw is None:
        return _absent(name, n)
    if isinstance(raw, list):
        return (
            _exact_column(name, raw)
            if strict
            else conv_text(name, _as_text(raw), n, strict=strict)
        )
    if pa.types.is_null(raw.type):
        return _absent(name, n)
    missing = _np(pc.is_null(raw))
    if not _is_text(raw.type):
        if strict:  # the contract takes no numbers where it wants text
            return Col(pa.nulls(n, pa.string()), missing, ~missing)
        raw = _as_text(raw)
    raw = raw.cast(pa.string())
    trimmed = pc.utf8_trim(raw, characters=_ASCII_WS)
    odd = _np(pc.match_substring_regex(trimmed, _ODD_EDGE))
    lengths = pc.utf8_length(trimmed).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(lengths.astype(np.float64), nan=0.0)
    low, high = (1, 128) if name in ID_FIELDS else (0, 256)
    invalid = ~missing & ~odd & ((lengths < low) | (lengths > high))
    values = pc.if_else(pa.array(invalid), pa.nulls(n, pa.string()), trimmed)
    col = Col(values, missing, invalid)
    todo = np.flatnonzero(odd)
    return _decide_exactly(
        name, values, todo, raw.take(pa.array(todo)).to_pylist(), col
    )


def conv_event_type(
    raw: RawColumn | None, n: int, names: dict[str, str | None]
) -> tuple[Col, np.ndarray]:
    """event_type after the mapping of source names; also rows skipped on purpose."""
    skipped = np.zeros(n, bool)
    if raw is None:
        return _absent("event_type", n), skipped
    if isinstance(raw, list):
        if not names:
            return _exact_column("event_type", raw), skipped
        raw = _as_text(raw)
    if pa.types.is_null(raw.type):
        return _absent("event_type", n), skipped
    missing = _np(pc.is_null(raw))
    if not _is_text(raw.type):
        if not names:  # the contract: event_type is a string
            return Col(pa.nulls(n, pa.string()), missing, ~missing), skipped
        raw = _as_text(raw)
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
    known = _np(pc.is_in(raw, value_set=pa.array(EVENT_TYPES)))
    invalid = ~missing & ~known & ~skipped
    values = pc.if_else(pa.array(known), raw, pa.nulls(n, pa.string()))
    return Col(values, missing, invalid), skipped


def conv_float(name: str, raw: RawColumn | None, n: int) -> Col:
    """price or revenue: a number in [0, MAX_AMOUNT] (text or number on input)."""
    if raw is None or (not isinstance(raw, list) and pa.types.is_null(raw.type)):
        return _absent(name, n)
    if isinstance(raw, list):
        return _exact_column(name, raw)
    if pa.types.is_boolean(raw.type):
        raw = pc.cast(raw, pa.float64())  # the contract reads true as 1.0
    if _is_number(raw.type):
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
    if not _is_text(raw.type):
        missing = _np(pc.is_null(raw))
        return Col(pa.nulls(n, pa.float64()), missing, ~missing)
    raw = raw.cast(pa.string())
    missing = _np(pc.is_null(raw))
    canonical = _np(pc.match_substring_regex(raw, _DECIMAL))
    numbers = np.full(n, np.nan)
    if canonical.any():
        picked = raw.filter(pa.array(canonical)).cast(pa.float64())
        numbers[canonical] = picked.to_numpy(zero_copy_only=False)
    invalid = canonical & ((numbers < 0) | (numbers > MAX_AMOUNT))
    numbers[invalid] = np.nan
    col = Col(pa.array(numbers, from_pandas=True), missing, invalid)
    todo = np.flatnonzero(~missing & ~canonical)
    return _decide_exactly(
        name, col.values, todo, raw.take(pa.array(todo)).to_pylist(), col
    )


def conv_quantity(raw: RawColumn | None, n: int) -> Col:
    """quantity: a whole number in [1, MAX_QUANTITY] (text or number on input)."""
    name = "quantity"
    if raw is None or (not isinstance(raw, list) and pa.types.is_null(raw.type)):
        return _absent(name, n)
    if isinstance(raw, list):
        return _exact_column(name, raw)
    missing = _np(pc.is_null(raw))
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
        return _decide_exactly(name, values, todo, [float(as_np[i]) for i in todo], col)
    if not _is_text(raw.type):
        todo = np.flatnonzero(~missing)
        col = Col(pa.nulls(n, pa.int64()), missing, np.zeros(n, bool))
        py = raw.take(pa.array(todo)).to_pylist()
        return _decide_exactly(name, col.values, todo, py, col)
    raw = raw.cast(pa.string())
    canonical = _np(pc.match_substring_regex(raw, _INTEGER))
    whole = np.zeros(n, np.int64)
    if canonical.any():
        picked = pc.utf8_ltrim(raw.filter(pa.array(canonical)), characters="+")
        whole[canonical] = picked.cast(pa.int64()).to_numpy(zero_copy_only=False)
    invalid = canonical & ((whole < 1) | (whole > MAX_QUANTITY))
    keep = canonical & ~invalid
    values = pa.array(np.where(keep, whole, 0), pa.int64(), mask=~keep)
    col = Col(values, missing, invalid)
    todo = np.flatnonzero(~missing & ~canonical)
    return _decide_exactly(
        name, values, todo, raw.take(pa.array(todo)).to_pylist(), col
    )


def conv_ts(raw: RawColumn | None, n: int, mapping: Mapping, kind: str) -> Col:
    """Event time as epoch seconds, by the mapping's rule or else the wire rule.

    The wire rule (native layout): a number is epoch seconds when its magnitude is
    below 1e11, else epoch milliseconds (:func:`core.events.epoch_seconds`);
    text is ISO-8601 with a zone.
    CSV has no types, so a numeric cell there counts as a number. Non-finite
    numbers are invalid.
    """
    if raw is None or (not isinstance(raw, list) and pa.types.is_null(raw.type)):
        return _absent("ts", n)
    if mapping.ts_unit or mapping.ts_format or mapping.ts_auto:
        if isinstance(raw, list):
            raw = _as_text(raw)
        return _ts_mapped(raw, n, mapping)
    if isinstance(raw, list):
        return _exact_column("ts", raw)
    missing = _np(pc.is_null(raw))
    if pa.types.is_boolean(raw.type):
        return Col(pa.nulls(n, pa.float64()), missing, ~missing)
    if _is_number(raw.type):
        numbers = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        missing = np.isnan(numbers)  # NaN is how typed columns say "no value"
        invalid = ~missing & ~np.isfinite(numbers)
        # Parquet that segscore wrote holds seconds, which the rule leaves alone.
        seconds = np.where(invalid, np.nan, _epoch_seconds(numbers))
        return Col(pa.array(seconds, from_pandas=True), missing, invalid)
    if pa.types.is_timestamp(raw.type):
        return _ts_from_timestamps(raw, missing)
    if not _is_text(raw.type):
        return Col(pa.nulls(n, pa.float64()), missing, ~missing)
    raw = raw.cast(pa.string())
    seconds = np.full(n, np.nan)
    decided = missing.copy()
    csv_invalid = np.zeros(n, bool)
    if kind == "csv":
        numeric = _np(pc.match_substring_regex(raw, _NUMBER_TEXT))
        if numeric.any():
            picked = raw.filter(pa.array(numeric)).cast(pa.float64())
            numbers = _epoch_seconds(picked.to_numpy(zero_copy_only=False))
            bad = ~np.isfinite(numbers)  # digits beyond a double's range
            seconds[numeric] = np.where(bad, np.nan, numbers)
            decided |= numeric
            csv_invalid[np.flatnonzero(numeric)[bad]] = True
    iso = _np(pc.match_substring_regex(raw, _ISO_FAST)) & ~decided
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
    return _decide_exactly(
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
    missing = _np(pc.is_null(raw))
    if pa.types.is_timestamp(raw.type):
        return _ts_from_timestamps(raw, missing)
    if mapping.ts_unit:
        divisor = TS_UNITS[mapping.ts_unit]
        if _is_text(raw.type):
            numeric = _np(pc.match_substring_regex(raw, _NUMBER_TEXT))
            numbers = np.full(n, np.nan)
            if numeric.any():
                picked = raw.filter(pa.array(numeric)).cast(pa.float64())
                numbers[numeric] = picked.to_numpy(zero_copy_only=False)
        elif _is_number(raw.type):
            numbers = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        else:
            numbers = np.full(n, np.nan)
        seconds = numbers / divisor
        invalid = ~missing & ~np.isfinite(seconds)
        return Col(pa.array(np.where(invalid, np.nan, seconds), from_pandas=True),
                   missing, invalid)  # fmt: skip
    text = _as_text(raw)
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


# ------------------------------------------------------------------------ validation


def stage(source: Source, mapping: Mapping) -> tuple[dict[str, Col], np.ndarray]:
    """Every contract field as a :class:`Col`, and the rows skipped by the mapping."""
    n = source.rows
    present = set(source.names)
    named = {f: [c for c, t in mapping.columns.items() if t == f] for f in COLUMNS}
    for name in REQUIRED:
        listed = named[name]
        if listed and name not in mapping.constants and not present & set(listed):
            raise ImportFailed(f"column {listed[0]!r} (-> {name}) is not in the file")
    cols: dict[str, Col] = {}
    skipped = np.zeros(n, bool)
    for name in COLUMNS:
        raw = _raw_field(
            source, mapping, name, [c for c in named[name] if c in present]
        )
        if name in ID_FIELDS or name in TEXT_FIELDS:
            col = conv_text(name, raw, n, strict=mapping.strict_types)
        elif name == "event_type":
            col, skipped = conv_event_type(raw, n, mapping.event_types)
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
    return cols, skipped


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
        parts = [_as_text(source.column(c)) for c in columns]
        raw = pc.coalesce(*parts)
    if name in mapping.defaults:
        value = mapping.defaults[name]
        if raw is None:
            return pa.array([value] * n)
        if isinstance(raw, list):
            return [value if v is None else v for v in raw]
        if not pa.types.is_null(raw.type):
            value = pa.scalar(str(value) if _is_text(raw.type) else value, raw.type)
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
    purchase = _np(pc.equal(cols["event_type"].values, "purchase"))
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


_DETAILS = {
    "unknown_event_type": "event_type: not one of " + ", ".join(EVENT_TYPES),
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


def _detail(reason: str, min_ts: float = DEFAULT_MIN_TS) -> str:
    if reason in _DETAILS:
        return _DETAILS[reason]
    kind, _, name = reason.partition(":")
    if kind == "missing":
        return f"{name}: field required"
    if reason == "too_old":
        return (
            f"ts is before {datetime.fromtimestamp(min_ts, UTC).isoformat()}, the "
            "earliest event time accepted (setting min_event_time)"
        )
    rules = {
        "price": f"a number in [0, {MAX_AMOUNT:g}]",
        "quantity": f"a whole number in [1, {MAX_QUANTITY}]",
        "event_id": "text of 1..128 characters",
        "user_id": "text of 1..128 characters",
    }
    return f"{name}: must be {rules.get(name, 'text of at most 256 characters')}"


# ------------------------------------------------------------------------- import


@dataclass
class ImportSummary:
    """What an import did, for the CLI's table and the logs."""

    source: str
    layout: str
    output: str
    report: str | None
    rows_read: int
    accepted: int
    rejected: int
    skipped: int
    blank_lines: int
    reasons: dict[str, int]
    users: int
    ts_min: float | None
    ts_max: float | None
    seconds: float

    @property
    def rows_per_s(self) -> float:
        """Source rows per second of wall time."""
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ImportResult:
    """The accepted events, the bad rows (line, reason, detail, raw) and a summary."""

    events: pa.Table
    bad: pd.DataFrame
    summary: ImportSummary


BAD_COLUMNS = ["line", "reason", "detail", "raw"]


def event_id_prefix(path: Path) -> str:
    """Generated event ids are ``<prefix>-<line>``: the same file name and line give
    the same id, so importing a file again yields the same events."""
    return "imp-" + hashlib.sha1(path.name.encode()).hexdigest()[:10]


def convert(
    source: Source,
    mapping: Mapping,
    *,
    now: float,
    max_future_seconds: float = 300,
    id_prefix: str = "imp",
    min_ts: float = DEFAULT_MIN_TS,
) -> tuple[pa.Table, pd.DataFrame, int]:
    """Source columns -> (accepted events, bad rows, rows skipped by the mapping)."""
    generate_ids = "event_id" not in mapping.constants and not any(
        t == "event_id" and c in source.names for c, t in mapping.columns.items()
    )
    cols, skipped = stage(source, mapping)
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
    bad = pd.DataFrame(
        {
            "line": source.lines[rejected],
            "reason": reasons[rejected].astype(str),
            "detail": [_detail(r, min_ts) for r in reasons[rejected]],
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
    return events, bad, int(skipped.sum())


def events_schema() -> pa.Schema:
    """The Parquet schema ``write_events`` produces (pandas metadata: Int64 etc.)."""
    template = events_frame_template()
    meta = pa.Schema.from_pandas(template, preserve_index=False).metadata
    return pa.schema([pa.field(c, TARGET_TYPES[c]) for c in COLUMNS], metadata=meta)


def events_frame_template() -> pd.DataFrame:
    """A one-row frame shaped exactly as ``events_frame`` shapes events."""
    from core.event_files import events_frame

    sample = Event.model_validate(
        {**_BASE, "event_type": "purchase", "price": 1.0, "quantity": 1}
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


def resolve_layout(
    path: Path, layout: str = "auto", mapping_path: Path | None = None
) -> tuple[str, Mapping | None]:
    """The layout to use and, for 'mapping', the parsed mapping file."""
    mapping = load_mapping(mapping_path) if mapping_path else None
    if mapping is not None and layout in ("auto", "mapping"):
        return "mapping", mapping
    if layout == "auto":
        return detect_layout(read_columns(path)), None
    return layout, mapping


def import_events(
    path: Path,
    out: Path,
    *,
    layout: str = "auto",
    mapping_path: Path | None = None,
    report: Path | None = None,
    now: float | None = None,
    max_future_seconds: float = 300,
    max_bytes: int = 16_384,
    on_phase: Callable[[str], None] | None = None,
    min_ts: float = DEFAULT_MIN_TS,
) -> ImportResult:
    """Import an event log: read, normalise, validate, write events and bad rows.

    Args:
        path: The source file (CSV, Parquet or JSON lines, by suffix).
        out: Where the accepted events go (Parquet; JSON lines by suffix), as
            ``segscore train`` reads them.
        layout: auto, native, ecommerce, transactions or mapping.
        mapping_path: A YAML/JSON mapping file (implies layout 'mapping').
        report: The bad-row CSV (default: next to ``out``, ``.rejects.csv``).
        now: Wall clock for the future-timestamp rule (default: now).
        max_future_seconds: How far ahead of ``now`` an event may lie.
        max_bytes: JSON lines longer than this are rejected as oversized.
        on_phase: Called with a short phase name (for a progress display).
        min_ts: The floor of event time (epoch seconds, ``Settings.min_event_time``);
            earlier rows are rejected as ``too_old``.

    Returns:
        The accepted events, the bad rows and a summary.

    Raises:
        ImportFailed: The file as a whole cannot be read or mapped.
    """
    started = time.perf_counter()
    phase = on_phase or (lambda _text: None)
    if not path.exists():
        raise ImportFailed(f"no file at {path}")
    now = time.time() if now is None else now
    name, mapping = resolve_layout(path, layout, mapping_path)
    phase(f"reading {path.name}")
    source = read_source(path, mapping, max_bytes=max_bytes)
    mapping = mapping_for(name, source.names, mapping)
    phase(f"validating {source.rows:,} rows ({name} layout)")
    events, bad, skipped = convert(
        source,
        mapping,
        now=now,
        max_future_seconds=max_future_seconds,
        id_prefix=event_id_prefix(path),
        min_ts=min_ts,
    )
    self_check(events, now=now, max_future_seconds=max_future_seconds, min_ts=min_ts)
    phase(f"writing {events.num_rows:,} events")
    report = report or out.with_name(out.name.split(".")[0] + ".rejects.csv")
    if events.num_rows:
        _write(events, out)
    else:  # keep whatever event file there was rather than an empty one
        logger.warning("import accepted nothing from %s; %s left as it was", path, out)
    _write_report(bad, report)
    if events.num_rows:
        _copy_personas(path, out)
    ts = events.column("ts")
    summary = ImportSummary(
        source=str(path),
        layout=name,
        output=str(out),
        report=str(report) if len(bad) else None,
        rows_read=source.rows + len(source.bad),
        accepted=events.num_rows,
        rejected=len(bad),
        skipped=skipped,
        blank_lines=source.blank_lines,
        reasons=dict(Counter(bad["reason"]).most_common()),
        users=pc.count_distinct(events.column("user_id")).as_py() if len(ts) else 0,
        ts_min=pc.min(ts).as_py(),
        ts_max=pc.max(ts).as_py(),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "import source=%s layout=%s rows=%d accepted=%d rejected=%d skipped=%d "
        "seconds=%.2f",
        path, name, summary.rows_read, summary.accepted, summary.rejected,
        skipped, summary.seconds,
    )  # fmt: skip
    return ImportResult(events, bad, summary)


def _write(events: pa.Table, out: Path) -> None:
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


def _write_report(bad: pd.DataFrame, report: Path) -> None:
    if len(bad):
        report.parent.mkdir(parents=True, exist_ok=True)
        bad.to_csv(report, index=False)
    elif report.exists():
        report.unlink()  # a report from an earlier import would mislead


def _copy_personas(path: Path, out: Path) -> None:
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
