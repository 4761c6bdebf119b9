"""Backfill: replay an event log through the stream worker's own state transition.

Every user's events are folded into a :class:`~core.user_state.UserState` with
:func:`~core.user_state.apply_event` -- the function the Faust worker calls -- and
at each snapshot instant the stream and history feature groups are read with
:mod:`core.feature_math`. The resulting snapshot tables are the offline store's
``FileSource`` files, so point-in-time training sets see exactly what the online path
would have served at those instants.

The steps live beside this entry point: grouping the events by user and cutting
them into chunks (:mod:`training.backfill_chunks`), replaying the chunks here or in
worker processes (:mod:`training.backfill_parallel`, inner loop in
:mod:`training.replay`), and the tables as frames and Parquet files
(:mod:`training.backfill_snapshots`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.feature_catalog import HISTORY_NAMES, STREAM_NAMES
from core.names import offline_paths
from core.user_state import DAY, Outcome, UserState
from infra.settings import Settings
from training.backfill_chunks import cut_chunks, no_users, sorted_events
from training.backfill_parallel import replay_here, replay_parallel, worker_pool
from training.backfill_snapshots import snapshot_frame, write_snapshot_file
from training.replay import collector_paused

log = logging.getLogger(__name__)

# Below this many events a second process costs more (start-up, transfer) than
# it saves.
PARALLEL_FROM_EVENTS = 200_000
MAX_WORKERS = 4
CHUNKS_PER_WORKER = 4  # at least, so that small inputs still split over processes


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
    file order) with the stream worker's transition (:func:`apply_event`'s
    field-level form), and the snapshot at instant S is read before the first
    event later than S is applied, so no row sees the future. A user appears in
    the snapshots from the first instant at or after their first event. Rows are
    grouped by user (in order of first appearance in ``events``), by instant
    within a user; the states come in the same user order. The result does not
    depend on ``workers``.

    Args:
        events: Validated events with the contract columns, ``ts`` in epoch
            seconds (what :func:`core.event_files.events_frame` produces).
        snapshot_times: Snapshot instants, epoch seconds.
        lateness_seconds: The stream worker's allowed lateness, for the same
            dedupe horizon and state pruning.
        on_progress: Called now and then with (users done, users in all), for a
            progress bar.
        workers: Processes to replay users in, this one included (0: one per
            core, at most ``MAX_WORKERS``); used from ``parallel_from_events``
            events on (default ``PARALLEL_FROM_EVENTS``). The other processes are
            spawned, so a caller's script needs the ``if __name__ == "__main__"``
            guard; the ``segscore`` commands have it.

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
    if len(events) < threshold or events.empty:
        workers = 1
    with collector_paused(), worker_pool(workers) as pool:
        users, columns = (
            sorted_events(events, snaps) if not events.empty else (no_users(), {})
        )
        chunks = cut_chunks(users, columns, CHUNKS_PER_WORKER * workers)
        del columns  # the chunks hold what is needed
        if pool is not None:
            stream_table, history_table, parts = replay_parallel(
                pool, chunks, snaps, lateness_seconds, users.total_rows, on_progress
            )
        else:
            stream_table, history_table, parts = replay_here(
                chunks, snaps, lateness_seconds, users.total_rows, on_progress
            )
        states = dict(
            zip(
                users.ids.tolist(),
                itertools.chain.from_iterable(part.states for part in parts),
                strict=True,
            )
        )
    outcomes = {
        Outcome.APPLIED.value: sum(part.applied for part in parts),
        Outcome.DUPLICATE.value: sum(part.duplicate for part in parts),
        Outcome.LATE.value: sum(part.late for part in parts),
    }
    stream = snapshot_frame(users, snaps, stream_table, STREAM_NAMES)
    history = snapshot_frame(users, snaps, history_table, HISTORY_NAMES)
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


def write_offline(result: BackfillResult, settings: Settings) -> tuple[Path, Path]:
    """Write the snapshot tables to the offline store's FileSource paths.

    Args:
        result: A :func:`backfill` result.
        settings: Locates ``data_dir/offline``.

    Returns:
        The stream and history file paths.
    """
    stream_path, history_path = offline_paths(settings.data_dir)
    write_snapshot_file(result.stream, STREAM_NAMES, stream_path)
    write_snapshot_file(result.history, HISTORY_NAMES, history_path)
    log.info(
        "offline store: %d stream rows -> %s, %d history rows -> %s",
        len(result.stream),
        stream_path,
        len(result.history),
        history_path,
    )
    return stream_path, history_path
