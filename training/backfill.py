"""Backfill: replay an event log through the stream worker's own state transition.

Every user's events are folded into a :class:`~core.user_state.UserState` with
:func:`~core.user_state.apply_event` -- the function the Faust worker calls -- and
at each snapshot instant the stream and history feature groups are read with
:mod:`core.feature_math`. The resulting snapshot tables are the offline store's
``FileSource`` files, so point-in-time training sets see exactly what the online path
would have served at those instants.

Each user is snapshotted at the grid instants from their first event on and,
when asked, at the end of each day they were active, so the rows grow with the
events rather than with users x days.

The steps live beside this entry point: grouping the events by user and cutting
them into chunks (:mod:`training.backfill_chunks`), replaying the chunks here or in
worker processes (:mod:`training.backfill_parallel`, inner loop in
:mod:`training.replay`), and the tables as frames and Parquet files
(:mod:`training.backfill_snapshots`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.event_files import release_arrow_memory
from core.feature_catalog import HISTORY_NAMES, STREAM_NAMES
from core.names import offline_paths
from core.user_state import DAY, Outcome, UserState
from infra.settings import Settings
from training.backfill_chunks import (
    activity_instants,
    cut_chunks,
    no_users,
    sorted_events,
)
from training.backfill_parallel import replay_here, replay_parallel, worker_pool
from training.backfill_snapshots import snapshot_frame, write_snapshot_file
from training.backfill_states import BackfillStates
from training.replay import collector_paused

log = logging.getLogger(__name__)

# Below this much work (events plus snapshot rows) a second process costs more
# (start-up, transfer) than it saves.
PARALLEL_FROM_WORK = 300_000
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
    states: Mapping[str, UserState]
    outcomes: dict[str, int] = field(default_factory=dict)


def snapshot_grid(
    start: float, end: float, every_days: int = 1, *, from_end: bool = False
) -> list[float]:
    """Snapshot instants at 00:00 UTC every ``every_days`` days within [start, end].

    Args:
        start: First instant that may be a snapshot, epoch seconds.
        end: Last instant that may be a snapshot, epoch seconds.
        every_days: Spacing of the snapshots in days.
        from_end: Count the spacing back from the last 00:00 at or before
            ``end`` (so the newest data always has a snapshot) instead of
            forward from the first 00:00 at or after ``start``.

    Returns:
        Epoch seconds of the snapshots, ascending; empty when no midnight falls
        in the range.
    """
    if every_days < 1:
        raise ValueError("every_days must be >= 1")
    step = every_days * DAY
    if from_end:
        last = math.floor(end / DAY) * DAY
        return [float(t) for t in range(int(last), int(start) - 1, -step)][::-1]
    first = math.ceil(start / DAY) * DAY
    return [float(t) for t in range(int(first), int(end) + 1, step)]


def grid_rows(grid: Sequence[float], first_seen: np.ndarray) -> int:
    """Rows a grid gives: per user, the grid instants at or after their first event."""
    instants = np.asarray(grid, dtype=np.float64)
    return int((len(instants) - np.searchsorted(instants, first_seen)).sum())


def capped_grid(
    first_seen: np.ndarray,
    end: float,
    every_days: int,
    max_rows: float | None,
) -> list[float]:
    """The grid every seen user gets, as fine as ``every_days`` within a row budget.

    Counted back from the last 00:00 at or before ``end`` (so that every user has
    a row at the newest instant). The spacing widens, in whole days, until the
    grid gives at most ``max_rows`` rows (one per user per instant at or after
    their first event): users x instants is what made the backfill's cost grow
    with users x days; with a budget proportional to the events it grows with
    the events. The newest instant always stays, whatever the budget.

    Args:
        first_seen: Each user's first event time, epoch seconds.
        end: The last event time, epoch seconds.
        every_days: The finest spacing, days.
        max_rows: The most rows the grid may give; ``None``: no limit.

    Returns:
        The grid instants, ascending; empty when no 00:00 falls between the
        first event and ``end``.
    """
    start = float(np.min(first_seen)) if len(first_seen) else end
    span_days = max(1, math.ceil((end - start) / DAY))
    days = every_days
    while True:
        grid = snapshot_grid(start, end, days, from_end=True)
        rows = grid_rows(grid, first_seen)
        if max_rows is None or rows <= max_rows or days > span_days:
            return grid
        # Rows fall about in proportion to the spacing; step at least a day.
        days = max(days + 1, math.ceil(days * rows / max(max_rows, 1.0)))


def evaluation_cutoffs(first: float, end: float, horizon_days: int) -> list[float]:
    """The fixed cut-offs the propensity model is tuned and judged at, ascending.

    The holdout cut-off is the last 00:00 whose whole label horizon lies inside
    the data (at or before ``end`` minus the horizon); the tuning cut-off is one
    horizon earlier, so its labels end where the holdout's features do. Every
    user seen by a cut-off has a row there, so the model is judged as a CRM team
    would use it: everyone at one instant, not only those who happened to be
    active (activity rows train, they are never the holdout).

    Args:
        first: The first event time, epoch seconds.
        end: The last event time, epoch seconds.
        horizon_days: The label horizon, days.

    Returns:
        ``[tune, holdout]``, without a cut-off before ``first``.
    """
    holdout = math.floor((end - horizon_days * DAY) / DAY) * DAY
    return [float(t) for t in (holdout - horizon_days * DAY, holdout) if t >= first]


def snapshot_plan(
    events: pd.DataFrame, settings: Settings
) -> tuple[list[float], float | None]:
    """The training run's snapshots: a capped grid for all, and activity.

    Every user seen so far on the grid of :func:`capped_grid` (spacing
    ``snapshot_every_days``, widened to ``snapshot_grid_rows_per_event`` rows per
    event; its newest instant is the last 00:00 of the data, so the segmentation
    population is everyone seen by then) and at the :func:`evaluation_cutoffs`
    of ``label_horizon_days``, plus, with ``snapshot_at_activity``, each user at
    the end of each day they were active, up to the newest grid instant.

    Args:
        events: Validated events (``user_id``, ``ts`` in epoch seconds), at least
            one.
        settings: The cadence settings.

    Returns:
        The grid and the ``activity_until`` to pass to :func:`backfill`.
    """
    budget = settings.snapshot_grid_rows_per_event * len(events)
    ts = events["ts"]
    grid = capped_grid(
        events.groupby("user_id", sort=False)["ts"].min().to_numpy(np.float64),
        float(ts.max()),
        settings.snapshot_every_days,
        budget or None,
    )
    cutoffs = evaluation_cutoffs(
        float(ts.min()), float(ts.max()), settings.label_horizon_days
    )
    grid = sorted({*grid, *cutoffs})
    activity_until = grid[-1] if grid and settings.snapshot_at_activity else None
    return grid, activity_until


def snapshot_instants(
    grid: Sequence[float], ts: np.ndarray, activity_until: float | None
) -> list[float]:
    """Every instant at which :func:`backfill` writes some row, ascending.

    Args:
        grid: The grid instants.
        ts: Event times, epoch seconds.
        activity_until: As for :func:`backfill`.

    Returns:
        The grid instants and, when ``activity_until`` is given, the end of
        every UTC day with an event up to it.
    """
    instants = set(map(float, grid))
    if activity_until is not None and len(ts):
        active = activity_instants(np.unique(np.ceil(ts / DAY)) * DAY, activity_until)
        instants.update(active[~np.isnan(active)].tolist())
    return sorted(instants)


def backfill(
    events: pd.DataFrame,
    snapshot_times: Sequence[float],
    lateness_seconds: int,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    parallel_from_work: int | None = None,
    *,
    activity_until: float | None = None,
) -> BackfillResult:
    """Replay ``events`` and snapshot both feature groups at each user's instants.

    Each user's events are folded in event-time order (stable, so equal times keep
    file order) with the stream worker's transition (:func:`apply_event`'s
    field-level form), and the snapshot at instant S is read before the first
    event later than S is applied, so no row sees the future. A user has a row
    at every ``snapshot_times`` instant at or after their first event and, with
    ``activity_until``, at the end of each UTC day on which they had an event
    (its next 00:00, or the event's own instant when that is 00:00), so the
    number of rows grows with the grid per user plus the active days, and a
    coarse grid keeps it near the number of events. Rows are grouped by user (in
    order of first appearance in ``events``), by instant within a user; the
    states come in the same user order. The result does not depend on
    ``workers``.

    Args:
        events: Validated events with the contract columns, ``ts`` in epoch
            seconds (what :func:`core.event_files.events_frame` produces).
        snapshot_times: Grid instants every user seen by then gets, epoch
            seconds.
        lateness_seconds: The stream worker's allowed lateness, for the same
            dedupe horizon and state pruning.
        on_progress: Called now and then with (users done, users in all), for a
            progress bar.
        workers: Processes to replay users in, this one included (0: one per
            core, at most ``MAX_WORKERS``). The other processes are spawned, so
            a caller's script needs the ``if __name__ == "__main__"`` guard; the
            ``segscore`` commands have it.
        parallel_from_work: Use ``workers`` only from this many events plus
            snapshot rows on (default ``PARALLEL_FROM_WORK``).
        activity_until: When given, also snapshot each user at the end of each
            of their active days, up to this instant (see
            :func:`~training.backfill_chunks.activity_instants`).

    Returns:
        The snapshot tables and each user's final state.
    """
    started = time.perf_counter()
    snaps = sorted({float(s) for s in snapshot_times})
    if workers == 0:
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
    threshold = PARALLEL_FROM_WORK if parallel_from_work is None else parallel_from_work
    # Enough events alone: the pool starts now, so that its processes' start-up
    # (a fresh interpreter each, ~1 s) overlaps the grouping below (~1 s at 1M
    # events) instead of following it while the other core waits.
    early = workers > 1 and len(events) >= threshold and not events.empty
    with ExitStack() as stack:
        pool = stack.enter_context(worker_pool(workers)) if early else None
        with collector_paused():
            users, columns = (
                sorted_events(events, snaps, activity_until)
                if not events.empty
                else (no_users(), {})
            )
        if len(events) + users.total_rows < threshold or events.empty:
            workers = 1
        elif not early:
            pool = stack.enter_context(worker_pool(workers))
        stack.enter_context(collector_paused())
        chunks = cut_chunks(users, columns, CHUNKS_PER_WORKER * workers)
        del columns  # the chunks hold what is needed
        if pool is not None:
            stream_table, history_table, parts = replay_parallel(
                pool, chunks, lateness_seconds, users.total_rows, on_progress
            )
        else:
            stream_table, history_table, parts = replay_here(
                chunks, lateness_seconds, users.total_rows, on_progress
            )
        # Decoded when first read (seeding), not here: see backfill_states.
        states = BackfillStates(users.ids.tolist(), [part.states for part in parts])
    outcomes = {
        Outcome.APPLIED.value: sum(part.applied for part in parts),
        Outcome.DUPLICATE.value: sum(part.duplicate for part in parts),
        Outcome.LATE.value: sum(part.late for part in parts),
    }
    stream = snapshot_frame(users, stream_table, STREAM_NAMES)
    history = snapshot_frame(users, history_table, HISTORY_NAMES)
    log.info(
        "backfill: %d events, %d users, %d grid instants%s -> %d rows in %.1fs (%s)",
        len(events),
        len(states),
        len(snaps),
        "" if activity_until is None else " and activity",
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
    # The two files at once: Parquet encodes and compresses without the GIL, so
    # the second core takes one file's encoding while this one does the other's.
    with ThreadPoolExecutor(2) as pool:
        written = [
            pool.submit(write_snapshot_file, result.stream, STREAM_NAMES, stream_path),
            pool.submit(
                write_snapshot_file, result.history, HISTORY_NAMES, history_path
            ),
        ]
        for future in written:
            future.result()
    # The slices' Arrow buffers are free now; Arrow's allocator would keep them.
    release_arrow_memory()
    log.info(
        "offline store: %d stream rows -> %s, %d history rows -> %s",
        len(result.stream),
        stream_path,
        len(result.history),
        history_path,
    )
    return stream_path, history_path
