"""Source file formats: gzip by suffix or magic bytes, the CSV delimiter (given or
sniffed, ``whitespace`` for runs of spaces and tabs), and the staged plain CSV file
that the vectorised reader scans when the source is compressed or space-separated.

Staging streams the source in blocks, so memory stays bounded whatever its size,
and keeps one line per line: line numbers in the bad-row report stay those of the
source.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from training.event_import.layouts import ImportFailed

GZIP_MAGIC = b"\x1f\x8b"
WHITESPACE = "whitespace"
# Sniffed in this order; a later candidate wins only by fitting the sample better.
DELIMITER_CANDIDATES = (",", "\t", ";", "|")
# Names a user may type for a delimiter (``--delimiter tab``).
DELIMITER_NAMES = {
    "comma": ",",
    "tab": "\t",
    "\\t": "\t",
    "semicolon": ";",
    "pipe": "|",
    "space": WHITESPACE,
    "spaces": WHITESPACE,
    "whitespace": WHITESPACE,
}
SNIFF_BYTES = 1 << 16
SNIFF_LINES = 50
_BLOCK = 1 << 20


def delimiter_option(value: str | None) -> str | None:
    """A delimiter as given (one character, a name such as ``tab`` or
    ``whitespace``), as the reader uses it; None: sniff it from the file.

    Raises:
        ImportFailed: Neither one character nor a known name.
    """
    if value is None or value == "":
        return None
    named = DELIMITER_NAMES.get(value.strip().lower())
    if named is not None:
        return named
    if len(value) != 1:
        raise ImportFailed(
            f"delimiter {value!r}: one character, or one of "
            f"{', '.join(DELIMITER_NAMES)}"
        )
    return value


def is_gzip(path: Path) -> bool:
    """Whether the file is gzip-compressed: by its ``.gz`` suffix or magic bytes."""
    if path.suffix.lower() == ".gz":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def inner_suffix(path: Path) -> str:
    """The suffix that names the format, under a ``.gz`` (``a.csv.gz`` -> ``.csv``)."""
    if path.suffix.lower() == ".gz":
        return Path(path.stem).suffix.lower()
    return path.suffix.lower()


def open_bytes(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed as they are read when it is gzip."""
    return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")


def sample_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The first non-blank lines of a text source (decompressed), for sniffing."""
    with open_bytes(path) as handle:
        try:
            head = handle.read(SNIFF_BYTES)
            complete = len(head) < SNIFF_BYTES
        except (OSError, EOFError) as exc:
            raise ImportFailed(f"{path}: cannot read ({exc})") from exc
    text = head.decode(encoding, "replace").removeprefix("\ufeff")
    lines = text.splitlines()
    if not complete and len(lines) > 1:
        lines = lines[:-1]  # cut mid-line by the sample size
    return [line for line in lines if line.strip()][:SNIFF_LINES]


def sniff_delimiter(lines: list[str]) -> str:
    """The delimiter that splits these lines into the same number of fields as the
    header (more than one): comma, tab, semicolon or pipe, else ``whitespace``
    when runs of spaces do; comma when nothing fits."""
    if not lines:
        return ","
    best, best_key = None, (0.0, 0)
    for candidate in DELIMITER_CANDIDATES:
        counts = [len(row) for row in csv.reader(lines, delimiter=candidate)]
        if counts[0] < 2:
            continue
        agree = sum(c == counts[0] for c in counts) / len(counts)
        key = (agree, counts[0])
        if key > best_key:
            best, best_key = candidate, key
    if best is not None:
        return best
    counts = [len(line.split()) for line in lines]
    # Most lines must agree: a single text column holding spaces must stay whole.
    if counts[0] > 1 and sum(c == counts[0] for c in counts) / len(counts) >= 0.75:
        return WHITESPACE
    return ","


def split_header(line: str, delimiter: str) -> list[str]:
    """The column names of a header line."""
    line = line.removeprefix("\ufeff")
    if delimiter == WHITESPACE:
        return line.split()
    row = next(csv.reader([line], delimiter=delimiter), [])
    return [name.strip() for name in row]


@contextmanager
def staged_csv(path: Path, delimiter: str) -> Iterator[tuple[Path, str]]:
    """A plain CSV file with a one-character delimiter for this source: the source
    itself when it is one, else a temporary decompressed (and, for ``whitespace``,
    tab-separated) copy, removed on exit. Yields the file and its delimiter."""
    compressed = is_gzip(path)
    if not compressed and delimiter != WHITESPACE:
        yield path, delimiter
        return
    with tempfile.TemporaryDirectory(prefix="segscore-import-") as workdir:
        staged = Path(workdir) / (Path(path.stem).stem + ".csv")
        try:
            with open_bytes(path) as src, staged.open("wb") as dst:
                if delimiter == WHITESPACE:
                    _copy_whitespace_as_tabs(src, dst)
                else:
                    shutil.copyfileobj(src, dst, _BLOCK)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ImportFailed(f"{path}: cannot decompress ({exc})") from exc
        yield staged, "\t" if delimiter == WHITESPACE else delimiter


def _copy_whitespace_as_tabs(src: IO[bytes], dst: IO[bytes]) -> None:
    """Runs of whitespace become one tab; leading and trailing ones go (a CR too)."""
    rest = b""
    while block := src.read(_BLOCK):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()  # the part after the last newline: not a whole line yet
        dst.write(b"".join(b"\t".join(line.split()) + b"\n" for line in lines))
    if rest:
        dst.write(b"\t".join(rest.split()))
