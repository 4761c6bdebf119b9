"""``segscore import``: one import run, from a source file to the event file, the
bad-row report and a summary (:func:`import_events`)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.events import DEFAULT_MIN_TS
from training.event_import.formats import WHITESPACE, delimiter_option
from training.event_import.layouts import (
    ImportFailed,
    Mapping,
    detect_layout,
    load_mapping,
    mapping_for,
)
from training.event_import.output import (
    copy_personas,
    self_check,
    write_events_table,
    write_report,
)
from training.event_import.sources import open_source, read_columns
from training.event_import.validation import convert

logger = logging.getLogger(__name__)


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
    unknown_event_types: dict[str, int]  # source name -> rows, most frequent first
    delimiter: str | None  # CSV: as given or sniffed
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


def event_id_prefix(path: Path) -> str:
    """Generated event ids are ``<prefix>-<line>``: the same file name and line give
    the same id, so importing a file again yields the same events."""
    return "imp-" + hashlib.sha1(path.name.encode()).hexdigest()[:10]


def resolve_layout(
    path: Path,
    layout: str = "auto",
    mapping_path: Path | None = None,
    delimiter: str | None = None,
) -> tuple[str, Mapping | None]:
    """The layout to use and, for 'mapping', the parsed mapping file."""
    mapping = load_mapping(mapping_path) if mapping_path else None
    if mapping is not None and layout in ("auto", "mapping"):
        return "mapping", mapping
    if layout == "auto":
        return detect_layout(read_columns(path, delimiter)), None
    return layout, mapping


def describe_delimiter(delimiter: str | None) -> str | None:
    """A delimiter as the summary shows it (``tab``, ``whitespace``, ``;``)."""
    names = {"\t": "tab", " ": "space", WHITESPACE: "whitespace"}
    return None if delimiter is None else names.get(delimiter, delimiter)


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
    delimiter: str | None = None,
) -> ImportResult:
    """Import an event log: read, normalise, validate, write events and bad rows.

    Args:
        path: The source file (CSV, Parquet or JSON lines, by suffix; gzip by a
            ``.gz`` suffix or its magic bytes).
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
        delimiter: The CSV delimiter: one character, a name (``tab``,
            ``semicolon``, ``pipe``) or ``whitespace`` (runs of spaces and tabs);
            overrides the mapping's. None: the mapping's, else sniffed.

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
    delimiter = delimiter_option(delimiter)
    name, mapping = resolve_layout(path, layout, mapping_path, delimiter)
    phase(f"reading {path.name}")
    with open_source(path, mapping, delimiter=delimiter, max_bytes=max_bytes) as source:
        mapping = mapping_for(name, source.names, mapping)
        phase(f"validating {source.rows:,} rows ({name} layout)")
        events, bad, skipped, unknown = convert(
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
        write_events_table(events, out)
    else:  # keep whatever event file there was rather than an empty one
        logger.warning("import accepted nothing from %s; %s left as it was", path, out)
    write_report(bad, report)
    if events.num_rows:
        copy_personas(path, out)
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
        unknown_event_types=unknown,
        delimiter=describe_delimiter(source.delimiter),
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
