"""Reading source files (CSV, Parquet, JSON lines; gzip too) into columns with line
numbers.

A :class:`Source` holds the columns as read, the line in the file of every row, and
the rows rejected before there were columns (malformed CSV rows, oversized or
malformed JSON lines) as :class:`BadRow`. CSV record boundaries come from one
vectorised scan of the bytes, so every bad row keeps the line an editor shows.
Compressed and space-separated CSV is staged as plain CSV first (:mod:`.formats`).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.event_files import JSON_LINES
from training.event_import.formats import (
    inner_suffix,
    is_gzip,
    open_bytes,
    sample_lines,
    sniff_delimiter,
    split_header,
    staged_csv,
)
from training.event_import.layouts import REQUIRED, ImportFailed, Mapping

RAW_EXCERPT = 300

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
    delimiter: str | None = None  # CSV: as given or sniffed

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
    """csv, parquet or jsonl, by suffix (under a ``.gz``)."""
    suffix = inner_suffix(path)
    if suffix in JSON_LINES:
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv", ".txt", ".dat"):
        return "csv"
    raise ImportFailed(
        f"{path}: unknown file type {suffix or path.suffix!r} (.csv, .tsv, .txt, "
        ".dat, .parquet, .jsonl, .ndjson, each also gzip-compressed as .gz)"
    )


def resolve_delimiter(
    path: Path, given: str | None = None, encoding: str = "utf-8"
) -> str:
    """The CSV delimiter: as given, tab for ``.tsv``, else sniffed from the file's
    first lines (comma, tab, semicolon, pipe or ``whitespace``)."""
    if given:
        return given
    if inner_suffix(path) == ".tsv":
        return "\t"
    return sniff_delimiter(sample_lines(path, encoding))


def read_columns(
    path: Path, delimiter: str | None = None, encoding: str = "utf-8"
) -> list[str]:
    """The column names of a source file, reading as little as possible."""
    kind = source_kind(path)
    if kind == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    if kind == "csv":
        lines = sample_lines(path, encoding)
        if not lines:
            return []
        return split_header(lines[0], resolve_delimiter(path, delimiter, encoding))
    names: dict[str, None] = {}
    with open_bytes(path) as handle:
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


def _csv_header(path: Path, delimiter: str, encoding: str) -> list[str]:
    with path.open(encoding=encoding, newline="") as handle:
        first = handle.readline()
    return split_header(first, delimiter)


@contextmanager
def open_source(
    path: Path,
    mapping: Mapping | None = None,
    *,
    delimiter: str | None = None,
    max_bytes: int = 16_384,
) -> Iterator[Source]:
    """A CSV, Parquet or JSON-lines file (gzip too) read into columns, keeping line
    numbers. Bad rows' excerpts are readable until the context exits.

    Args:
        path: The source file.
        mapping: Its mapping, for the CSV delimiter and encoding.
        delimiter: The CSV delimiter (overrides the mapping's); None: sniff it.
        max_bytes: JSON lines longer than this are rejected as oversized.
    """
    kind = source_kind(path)
    if kind == "parquet":
        yield _read_parquet(path)
        return
    if kind == "jsonl":
        yield _read_jsonl(path, max_bytes)
        return
    encoding = mapping.encoding if mapping else "utf-8"
    chosen = resolve_delimiter(
        path, delimiter or (mapping.delimiter if mapping else None), encoding
    )
    with staged_csv(path, chosen) as (plain, char):
        names = mapping.header if mapping else None
        source = _read_csv(plain, char, encoding, names)
        source.delimiter = chosen
        yield source


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


def _read_csv(
    path: Path, delimiter: str, encoding: str, names: tuple[str, ...] | None = None
) -> Source:
    """A plain CSV file; ``names``: the column names of a file without a header."""
    if len(delimiter) != 1:
        raise ImportFailed("CSV delimiter must be one character")
    header = list(names) if names else _csv_header(path, delimiter, encoding)
    first = 0 if names else 1  # records before the data
    if not header or header == [""]:
        raise ImportFailed(f"{path}: no header line")
    scan = _scan_csv(path, ord(delimiter))
    excerpt = _excerpts(path)
    data = ~scan.blank
    data[:first] = False  # the header
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
                column_names=header, skip_rows=first, encoding=encoding
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

    blank = int(scan.blank[first:].sum())
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


def _parquet_file(path: Path) -> pq.ParquetFile:
    if is_gzip(path):  # columnar and seeked: decompressed whole, as it is read whole
        with open_bytes(path) as handle:
            return pq.ParquetFile(pa.BufferReader(handle.read()))
    return pq.ParquetFile(path)


def _read_parquet(path: Path) -> Source:
    table = _parquet_file(path).read()
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
    with open_bytes(path) as handle:
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
