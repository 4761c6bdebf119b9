"""Backfill: replay an event log through the stream worker's own state transition.

Every user's events are folded into a :class:`~streams.user_state.UserState` with
:func:`~streams.user_state.apply_event` -- the function the Faust worker calls -- and
at each snapshot instant the stream and history feature groups are read with
:mod:`streams.feature_math`. The resulting snapshot tables are the offline store's
``FileSource`` files, so point-in-time training sets see exactly what the online path
would have served at those instants.
"""

from __future__ import annotations

import bisect
import logging
import math
import multiprocessing as mp
import os
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from infra.settings import Settings
from streams.events import Event, EventType
from streams.feature_catalog import (
    HISTORY_FEATURES,
    STREAM_FEATURES,
    TIMESTAMP_FEATURES,
)
from streams.feature_math import history_features, stream_features
from streams.user_state import DAY, Outcome, UserState, apply_event

log = logging.getLogger(__name__)

STREAM_COLUMNS: tuple[str, ...] = tuple(spec.name for spec in STREAM_FEATURES)
HISTORY_COLUMNS: tuple[str, ...] = tuple(spec.name for spec in HISTORY_FEATURES)
PROGRESS_EVERY = 2000  # users between progress callbacks
# Below this many events a second process costs more (start-up, transfer) than
# it saves.
PARALLEL_FROM_EVENTS = 200_000
MAX_WORKERS = 4
STREAM_FILE = "user_stream_features.parquet"
HISTORY_FILE = "user_history_features.parquet"

# Row builders: a feature dict to a row tuple in column order, and to the values of
# its window counts (everything but the timestamps).
_STREAM_ROW = itemgetter(*STREAM_COLUMNS)
_HISTORY_ROW = itemgetter(*HISTORY_COLUMNS)
_STREAM_COUNTS = itemgetter(*(n for n in STREAM_COLUMNS if n not in TIMESTAMP_FEATURES))
_HISTORY_COUNTS = itemgetter(
    *(n for n in HISTORY_COLUMNS if n not in TIMESTAMP_FEATURES)
)

_EVENT_TYPES: dict[str, EventType] = {etype.value: etype for etype in EventType}
_EVENT_FIELDS: tuple[str, ...] = tuple(Event.model_fields)


@dataclass
class BackfillResult:
    """Snapshot tables of both feature groups and every user's final state.

    Attributes:
        stream: ``user_id``, ``event_timestamp`` (UTC) and the stream features.
        history: ``user_id``, ``event_timestamp`` (UTC) and the history features.
        states: Each user's state after the last event, to seed the online path.
        outcomes: How many events :func:`apply_event` applied, deduplicated or
            refused as late.
    """

    stream: pd.DataFrame
    history: pd.DataFrame
    states: dict[str, UserState]
    outcomes: dict[str, int] = field(default_factory=dict)


def snapshot_grid(start: float, end: float, every_days: int = 1) -> list[float]:
    """Snapshot instants at 00:00 UTC every ``every_days`` days within [start, end].

    Args:
        start: First instant that may be a snapshot, epoch seconds.
        end: Last instant that may be a snapshot, epoch seconds.
        every_days: Spacing of the snapshots in days.

    Returns:
        Epoch seconds of the snapshots, ascending; empty when no midnight falls
        in the range.
    """
    if every_days < 1:
        raise ValueError("every_days must be >= 1")
    first = math.ceil(start / DAY) * DAY
    step = every_days * DAY
    return [float(t) for t in range(int(first), int(end) + 1, step)]


def _ordered_events(events: pd.DataFrame) -> Iterator[Event]:
    """The rows as :class:`Event` objects, grouped by user, by time within a user.

    Built lazily: only the user being replayed holds event objects, which keeps
    memory flat and the garbage collector quiet on millions of rows.
    """
    ts = events["ts"].to_numpy(dtype=np.float64)
    codes, _ = pd.factorize(events["user_id"], sort=False)
    # Two stable passes: by time, then by user; equal times keep file order.
    by_time = np.argsort(ts, kind="stable")
    order = by_time[np.argsort(codes[by_time], kind="stable")]

    type_codes, type_names = pd.factorize(events["event_type"].astype(str))
    unknown = sorted(set(type_names) - set(_EVENT_TYPES))
    if unknown:
        raise ValueError(f"event_type: unknown values {unknown}")
    etypes = np.array([_EVENT_TYPES[n] for n in type_names], dtype=object)[type_codes]

    revenue = (
        events["revenue"].astype("float64")
        if "revenue" in events
        else pd.Series(np.nan, index=events.index)
    )
    if "price" in events:
        # The contract's rule for purchases that only state price and quantity.
        quantity = (
            events["quantity"].astype("float64").fillna(1.0)
            if "quantity" in events
            else 1.0
        )
        implied = events["price"].astype("float64") * quantity
        missing = (etypes == EventType.PURCHASE) & revenue.isna().to_numpy()
        revenue = revenue.where(~missing, implied)

    def column(name: str) -> list[Any]:
        if name == "ts":
            return ts[order].tolist()
        if name == "revenue":
            values = revenue.to_numpy(dtype=object)[order]
        elif name == "event_type":
            values = etypes[order]
        elif name in events:
            values = events[name].to_numpy(dtype=object)[order]
        else:
            return [None] * len(order)
        # Missing values arrive as None, NaN or pd.NA depending on the dtype.
        clean = [None if v is None or v is pd.NA or v != v else v for v in values]
        if name == "quantity":
            return [None if q is None else int(q) for q in clean]
        return clean

    names = _EVENT_FIELDS
    columns = [column(name) for name in names]
    # Copying a constructed template skips validation like model_construct does,
    # at half the cost; every field is overwritten, so nothing leaks between rows.
    copy = Event.model_construct(**dict.fromkeys(names)).model_copy
    for values in zip(*columns, strict=True):
        yield copy(update=dict(zip(names, values, strict=True)))


_STREAM_TIMES = tuple(n for n in STREAM_COLUMNS if n in TIMESTAMP_FEATURES)
_HISTORY_TIMES = tuple(n for n in HISTORY_COLUMNS if n in TIMESTAMP_FEATURES)


def _row(
    values: dict[str, float | None], times: tuple[str, ...], pick: itemgetter
) -> tuple[float, ...]:
    """The row in column order, unknown times as NaN (only times can be None)."""
    for name in times:
        if values[name] is None:
            values[name] = math.nan
    return pick(values)


class _Snapshots:
    """Collects snapshot rows of both feature groups, user by user.

    Rows go into flat float arrays (one per group), not lists of tuples: at 1M
    events and 100k users the tuples alone took several GB.
    """

    def __init__(self, snaps: list[float]) -> None:
        self.snaps = snaps
        self.users: list[str] = []
        self.index = array("i")
        self.stream = array("d")
        self.history = array("d")

    def replay(
        self, uid: str, events: list[Event], lateness_seconds: int, counts: Counter
    ) -> UserState:
        """Fold one user's time-ordered events, emitting each snapshot on the way."""
        snaps = self.snaps
        n_snaps = len(snaps)
        state = UserState()
        k = bisect.bisect_left(snaps, events[0].ts)
        # The last emitted rows are reused while nothing can change them: no new
        # event since, and every window count already zero (windows only lose
        # buckets as time passes; the timestamps stay put).
        stream_row: tuple[float, ...] = ()
        history_row: tuple[float, ...] = ()
        stream_live = history_live = changed = True
        users, index = self.users, self.index
        stream, history = self.stream, self.history

        def emit(k: int) -> None:
            nonlocal stream_row, history_row, stream_live, history_live, changed
            if changed or stream_live:
                values = stream_features(state, snaps[k])
                stream_row = _row(values, _STREAM_TIMES, _STREAM_ROW)
                stream_live = any(_STREAM_COUNTS(values))
            if changed or history_live:
                values = history_features(state, snaps[k])
                history_row = _row(values, _HISTORY_TIMES, _HISTORY_ROW)
                history_live = any(_HISTORY_COUNTS(values))
            changed = False
            users.append(uid)
            index.append(k)
            stream.extend(stream_row)
            history.extend(history_row)

        for event in events:
            while k < n_snaps and snaps[k] < event.ts:
                emit(k)
                k += 1
            outcome = apply_event(state, event, lateness_seconds)
            counts[outcome] += 1
            changed = changed or outcome is Outcome.APPLIED
        while k < n_snaps:
            emit(k)
            k += 1
        return state


@dataclass
class _Part:
    """One process's share of a backfill: rows grouped by user, states, counts."""

    users: list[str]
    index: array[int]
    stream: array[float]
    history: array[float]
    states: dict[str, UserState]
    counts: Counter[Outcome]


def _replay(
    events: pd.DataFrame,
    snaps: list[float],
    lateness_seconds: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> _Part:
    """Replay every user of ``events`` in order of first appearance."""
    out = _Snapshots(snaps)
    counts: Counter[Outcome] = Counter()
    states: dict[str, UserState] = {}
    if not events.empty:
        total = int(events["user_id"].nunique()) if on_progress else 0
        for uid, user_events in groupby(_ordered_events(events), attrgetter("user_id")):
            states[uid] = out.replay(uid, list(user_events), lateness_seconds, counts)
            if on_progress is not None and len(states) % PROGRESS_EVERY == 0:
                on_progress(len(states), total)
        if on_progress is not None:
            on_progress(len(states), total)
    return _Part(out.users, out.index, out.stream, out.history, states, counts)


def _replay_parallel(
    events: pd.DataFrame,
    snaps: list[float],
    lateness_seconds: int,
    workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, UserState], Counter[Outcome]]:
    """Users split over ``workers`` processes; rows merged back into serial order.

    Users are independent, so each process runs the same :func:`_replay` on its
    users' events. The merged tables and states are in exactly the order a single
    process produces (users by first appearance), so the result is the same.
    """
    order = pd.unique(events["user_id"])
    rank = {uid: i for i, uid in enumerate(order)}
    codes = pd.factorize(events["user_id"], sort=False)[0]
    shares = [events[codes % workers == w] for w in range(workers)]
    # Spawned, not forked: the parent may hold threads (Arrow, DuckDB) whose locks
    # a fork would copy in a held state.
    context = mp.get_context("spawn")
    parts: list[_Part] = []
    done = 0
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_replay, s, snaps, lateness_seconds) for s in shares]
        for future in futures:
            parts.append(future.result())
            done += len(parts[-1].states)
            if on_progress is not None:
                on_progress(done, len(order))
    users = [u for part in parts for u in part.users]
    row_rank = np.fromiter((rank[u] for u in users), dtype=np.int64, count=len(users))
    perm = np.argsort(row_rank, kind="stable")
    users = [users[i] for i in perm]
    index = np.concatenate([np.frombuffer(p.index, dtype=np.int32) for p in parts])[
        perm
    ]

    def table(name: str, columns: tuple[str, ...]) -> pd.DataFrame:
        values = np.concatenate(
            [
                np.frombuffer(getattr(p, name), dtype=np.float64).reshape(
                    -1, len(columns)
                )
                for p in parts
            ]
        )[perm]
        return _frame(users, index, values, columns, snaps)

    stream = table("stream", STREAM_COLUMNS)
    history = table("history", HISTORY_COLUMNS)
    merged: dict[str, UserState] = {}
    for part in parts:
        merged.update(part.states)
    states = {uid: merged[uid] for uid in order}
    counts: Counter[Outcome] = Counter()
    for part in parts:
        counts.update(part.counts)
    return stream, history, states, counts


def backfill(
    events: pd.DataFrame,
    snapshot_times: Sequence[float],
    lateness_seconds: int,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    parallel_from_events: int | None = None,
) -> BackfillResult:
    """Replay ``events`` and snapshot both feature groups at each instant.

    Each user's events are folded in event-time order (stable, so equal times keep
    file order) with the stream worker's :func:`apply_event`, and the snapshot at
    instant S is read before the first event later than S is applied, so no row
    sees the future. A user appears in the snapshots from the first instant at or
    after their first event.

    Args:
        events: Validated events with the contract columns, ``ts`` in epoch
            seconds (what :func:`streams.simulator.events_frame` produces).
        snapshot_times: Snapshot instants, epoch seconds.
        lateness_seconds: The stream worker's allowed lateness, for the same
            dedupe horizon and state pruning.
        on_progress: Called now and then with (users done, users in all), for a
            progress bar.
        workers: Processes to replay users in (0: one per core, at most
            ``MAX_WORKERS``); used from ``parallel_from_events`` events on
            (default ``PARALLEL_FROM_EVENTS``). The processes are spawned, so a
            caller's script needs the ``if __name__ == "__main__"`` guard; the
            ``segscore`` commands have it.

    Returns:
        The snapshot tables and each user's final state.
    """
    started = time.perf_counter()
    snaps = sorted({float(s) for s in snapshot_times})
    if workers == 0:
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
    threshold = (
        PARALLEL_FROM_EVENTS if parallel_from_events is None else parallel_from_events
    )
    if len(events) < threshold:
        workers = 1
    if workers > 1 and not events.empty:
        stream, history, states, counts = _replay_parallel(
            events, snaps, lateness_seconds, workers, on_progress
        )
    else:
        part = _replay(events, snaps, lateness_seconds, on_progress)
        stream = _frame(part.users, part.index, part.stream, STREAM_COLUMNS, snaps)
        history = _frame(part.users, part.index, part.history, HISTORY_COLUMNS, snaps)
        states, counts = part.states, part.counts
    outcomes = {outcome.value: counts.get(outcome, 0) for outcome in Outcome}
    log.info(
        "backfill: %d events, %d users, %d snapshots -> %d rows in %.1fs (%s)",
        len(events),
        len(states),
        len(snaps),
        len(stream),
        time.perf_counter() - started,
        outcomes,
    )
    return BackfillResult(
        stream=stream, history=history, states=states, outcomes=outcomes
    )


def _frame(
    users: list[str],
    snap_index: Sequence[int],
    rows: array[float] | np.ndarray,
    columns: tuple[str, ...],
    snaps: Sequence[float] = (),
) -> pd.DataFrame:
    """A snapshot table: user_id, event_timestamp (UTC), float64 features."""
    values = np.frombuffer(rows, dtype=np.float64).reshape(len(users), len(columns))
    instants = np.asarray(snaps, dtype=np.float64)[np.asarray(snap_index, dtype=int)]
    stamps = pd.to_datetime((instants * 1e6).astype(np.int64), unit="us", utc=True)
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, "event_timestamp", stamps)
    frame.insert(0, "user_id", pd.Series(users, dtype=object))
    return frame


def offline_paths(settings: Settings) -> tuple[Path, Path]:
    """Where the offline store's stream and history snapshot files live."""
    root = settings.data_dir / "offline"
    return root / STREAM_FILE, root / HISTORY_FILE


def _schema(columns: tuple[str, ...]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.string()),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            *(pa.field(name, pa.float64()) for name in columns),
        ]
    )


def _write_parquet(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    table = pa.Table.from_pandas(
        frame[["user_id", "event_timestamp", *columns]],
        schema=_schema(columns),
        preserve_index=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readers (Feast, a running worker) never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_offline(result: BackfillResult, settings: Settings) -> tuple[Path, Path]:
    """Write the snapshot tables to the offline store's FileSource paths.

    Args:
        result: A :func:`backfill` result.
        settings: Locates ``data_dir/offline``.

    Returns:
        The stream and history file paths.
    """
    stream_path, history_path = offline_paths(settings)
    _write_parquet(result.stream, STREAM_COLUMNS, stream_path)
    _write_parquet(result.history, HISTORY_COLUMNS, history_path)
    log.info(
        "offline store: %d stream rows -> %s, %d history rows -> %s",
        len(result.stream),
        stream_path,
        len(result.history),
        history_path,
    )
    return stream_path, history_path
