"""The backfill's inner loop: whole users' events in, snapshot rows and states out.

Kept apart from :mod:`training.backfill` for the worker processes: a spawned process
imports this module (numpy, pyarrow and the stream modules only) before its first
task, and everything a task needs travels as compact columns (:class:`Chunk`), not
as a DataFrame or event objects.

A chunk is a run of consecutive users (in the backfill's user order), each with
their own snapshot instants, whose snapshot rows occupy one known range of the
output tables, so a chunk's rows are written
straight to their place -- by the process that replayed them -- and nothing is
reordered or concatenated afterwards.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

# Loaded with this module, so a spawned worker has it before the first chunk's
# Arrow text columns arrive (its start-up overlaps with cutting the chunks).
import pyarrow as pa

from core.events import EventType
from core.feature_catalog import HISTORY_NAMES, STREAM_NAMES
from core.state_block import parse_blobs
from core.state_codec import numbers_of
from core.state_features import read_features
from core.user_state import Outcome, UserState, apply_fields

# Event types travel as codes into this tuple (int8 instead of enum objects).
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)
_EVENT_TYPE_OBJECTS = np.array(EVENT_TYPES, dtype=object)
_APPLIED, _DUPLICATE = Outcome.APPLIED, Outcome.DUPLICATE


@dataclass(frozen=True)
class Chunk:
    """Consecutive users with their events, sorted by user and then by time.

    Attributes:
        first_row: Output row of the chunk's first snapshot row.
        rows: Snapshot rows of the chunk.
        event_counts: Events per user.
        user_rows: Snapshot rows per user.
        instants: The rows' snapshot instants (epoch seconds), grouped by user,
            ascending within a user.
        event_id: Event ids (Arrow strings; null when missing).
        event_type: Codes into :data:`EVENT_TYPES`.
        ts: Event times, epoch seconds.
        session_id: Session ids (Arrow strings; null when missing).
        category: Categories (Arrow strings; null when missing).
        price: Prices, NaN when missing.
        revenue: Validated revenues (implied for purchases without one), NaN when
            missing.
    """

    first_row: int
    rows: int
    event_counts: np.ndarray
    user_rows: np.ndarray
    instants: np.ndarray
    event_id: pa.Array
    event_type: np.ndarray
    ts: np.ndarray
    session_id: pa.Array
    category: pa.Array
    price: np.ndarray
    revenue: np.ndarray

    @property
    def users(self) -> int:
        """Users in the chunk."""
        return len(self.event_counts)


@dataclass
class Replayed:
    """What replaying a chunk gave besides its rows: final states and outcomes.

    A worker process sends its states pickled (bytes), decoded only when read
    (training.backfill_states).
    """

    states: list[UserState] | bytes
    applied: int
    duplicate: int
    late: int


# One snapshot row of each table as doubles (catalogue order, native order).
STREAM_ROW_BYTES = 8 * len(STREAM_NAMES)
HISTORY_ROW_BYTES = 8 * len(HISTORY_NAMES)


def table_bytes(rows: int) -> tuple[int, int]:
    """Bytes of ``rows`` rows of the stream and of the history table."""
    return rows * STREAM_ROW_BYTES, rows * HISTORY_ROW_BYTES


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a replay, as it was afterwards.

    A replay builds hundreds of thousands of long-lived, acyclic states; every
    full collection rescans all of them (a tenth of the backfill's time) and
    finds nothing to free. Afterwards, what was made in the meantime goes
    straight to the oldest generation (freeze, then unfreeze: no traversal)
    instead of making the next young collection traverse millions of objects
    (half a second at 100k users) only to promote them there.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def _optional(values: np.ndarray) -> list[float | None]:
    """Floats as Python values, NaN (missing) as ``None``."""
    out = values.astype(object)
    out[np.isnan(values)] = None
    return out.tolist()


def replay_chunk(
    chunk: Chunk,
    lateness_seconds: int,
    stream_out: memoryview | bytearray,
    history_out: memoryview | bytearray,
) -> Replayed:
    """Fold each user's events in order, taking their snapshots on the way.

    The snapshot at instant S is taken before the first event later than S is
    applied, so no row sees the future; each user's rows are at their own
    instants (``chunk.instants``). A snapshot is the numbers of the state's blob
    (:func:`core.state_codec.numbers_of`; one per state version: snapshots
    with no event between them share it); every
    row of the chunk is then read at once by
    :func:`core.state_features.read_features`, the scoring path's reader.

    Args:
        chunk: The users, their sorted events and their snapshot instants.
        lateness_seconds: The stream worker's allowed lateness.
        stream_out: Where the chunk's stream rows go, :func:`table_bytes` long.
        history_out: Where its history rows go, likewise.

    Returns:
        Each user's final state (in chunk order) and the outcome counts.
    """
    if (len(stream_out), len(history_out)) != table_bytes(chunk.rows):
        raise ValueError(f"replay: output buffers do not fit {chunk.rows} rows")
    if len(chunk.instants) != chunk.rows:
        raise ValueError(f"replay: {len(chunk.instants)} instants, {chunk.rows} rows")
    snaps = chunk.instants.tolist()
    events = zip(
        chunk.event_id.tolist(),
        _EVENT_TYPE_OBJECTS[chunk.event_type].tolist(),
        chunk.ts.tolist(),
        chunk.session_id.tolist(),
        chunk.category.tolist(),
        _optional(chunk.price),
        _optional(chunk.revenue),
        strict=True,
    )
    states: list[UserState] = []
    blobs: list[bytes] = []  # one per snapshotted state version
    version_of_row: list[int] = []
    applied = duplicate = late = 0
    row = 0  # the next row, and the index of its instant in ``snaps``
    for n_events, n_rows in zip(
        chunk.event_counts.tolist(), chunk.user_rows.tolist(), strict=True
    ):
        state = UserState()
        stop = row + n_rows
        changed = True  # since the last snapshot's blob
        for event_id, etype, ts, session, category, price, revenue in islice(
            events, n_events
        ):
            while row < stop and snaps[row] < ts:
                if changed:
                    blobs.append(numbers_of(state))
                    changed = False
                version_of_row.append(len(blobs) - 1)
                row += 1
            outcome = apply_fields(
                state,
                event_id,
                etype,
                ts,
                session,
                category,
                price,
                revenue,
                lateness_seconds,
            )
            if outcome is _APPLIED:
                applied += 1
                changed = True
            elif outcome is _DUPLICATE:
                duplicate += 1
            else:
                late += 1
        if row < stop:
            if changed:
                blobs.append(numbers_of(state))
            version_of_row.extend([len(blobs) - 1] * (stop - row))
            row = stop
        states.append(state)
    if row != chunk.rows:
        raise RuntimeError(f"replay: {row} rows, expected {chunk.rows}")
    stream, history = read_features(
        parse_blobs(blobs),
        chunk.instants,
        np.asarray(version_of_row, dtype=np.int64),
    )
    np.frombuffer(stream_out, dtype=np.float64).reshape(stream.shape)[:] = stream
    np.frombuffer(history_out, dtype=np.float64).reshape(history.shape)[:] = history
    return Replayed(states, applied, duplicate, late)


def pickled_states(states: list[UserState]) -> bytes:
    """States as a worker process sends them back (pickled once, by itself)."""
    return pickle.dumps(states, protocol=pickle.HIGHEST_PROTOCOL)


def worker_ready() -> None:
    """A worker process's first task: nothing; unpickling it imports this module."""


def replay_to_file(
    chunk: Chunk, lateness_seconds: int, path: str, total_rows: int
) -> Replayed:
    """A worker process's task: replay a chunk, its rows into the shared table file.

    The file holds the stream table and then the history table, row-major. Rows
    are packed into a buffer of the chunk's size and written with ``pwrite``
    rather than through a mapping, so the pages land in the file (shared memory
    on tmpfs) without also counting against this process.
    """
    stream_size, history_size = table_bytes(chunk.rows)
    stream, history = bytearray(stream_size), bytearray(history_size)
    with collector_paused():
        replayed = replay_chunk(chunk, lateness_seconds, stream, history)
    stream_at = chunk.first_row * STREAM_ROW_BYTES
    history_at = table_bytes(total_rows)[0] + chunk.first_row * HISTORY_ROW_BYTES
    fd = os.open(path, os.O_WRONLY)
    try:
        for data, offset in ((stream, stream_at), (history, history_at)):
            view, written = memoryview(data), 0
            while written < len(view):
                # pwrite may write less than asked; go on from there.
                written += os.pwrite(fd, view[written:], offset + written)
    finally:
        os.close(fd)
    # Pickled here, once: the parent keeps the bytes until the states are read.
    return replace(replayed, states=pickled_states(replayed.states))
