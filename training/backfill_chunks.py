"""The backfill's input: events grouped by user and cut into chunks of equal work.

Users come in order of first appearance, each user's events in event-time order;
the columns are the compact arrays :func:`~training.replay.replay_chunk` reads
(codes, floats with NaN for missing), cheap to slice and to send to a worker
process. Each user has their own snapshot instants (the grid instants from their
first event on, plus the end of each day they were active when asked), and their
rows take one known range of the output tables, so a chunk of consecutive users
writes one range.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from core.events import EventType
from core.state_block import ragged_arange
from core.user_state import DAY
from training.replay import EVENT_TYPES, Chunk

# Events plus snapshot rows per chunk of users: about a tenth of a second of work,
# so that processes finish within that of each other, and a chunk's row buffers
# stay small (a few MB).
CHUNK_WORK = 20_000

# The event columns :func:`sorted_events` reads (the optional ones when present);
# also all that :func:`training.backfill.snapshot_plan` and the labels read.
BACKFILL_COLUMNS = (
    "event_id",
    "user_id",
    "event_type",
    "ts",
    "session_id",
    "category",
    "price",
    "quantity",
    "revenue",
)


@dataclass(frozen=True)
class Users:
    """Every user in first-appearance order, with where their events and rows lie.

    Attributes:
        ids: User ids (object array).
        event_counts: Events per user.
        first_events: Per user, the position of their first event in time order.
        rows: Snapshot rows per user.
        first_rows: Per user, the output row of their first snapshot row.
        instants: Every row's snapshot instant (epoch seconds), grouped by user,
            ascending within a user.
    """

    ids: np.ndarray
    event_counts: np.ndarray
    first_events: np.ndarray
    rows: np.ndarray
    first_rows: np.ndarray
    instants: np.ndarray

    @property
    def total_rows(self) -> int:
        """Rows of each snapshot table."""
        return int(self.rows.sum())


def no_users() -> Users:
    """The users of an empty event log."""
    nothing = np.zeros(0, dtype=np.int64)
    return Users(
        ids=np.zeros(0, dtype=object),
        event_counts=nothing,
        first_events=nothing,
        rows=nothing,
        first_rows=nothing,
        instants=np.zeros(0, dtype=np.float64),
    )


def activity_instants(ts: np.ndarray, until: float) -> np.ndarray:
    """The end of each event's UTC day (its next 00:00; itself when at 00:00).

    The first daily instant whose snapshot sees the event: a snapshot at S reads
    the events at or before S.

    Args:
        ts: Event times, epoch seconds.
        until: The latest instant kept.

    Returns:
        One instant per event (same order), NaN where it would fall after
        ``until``.
    """
    ends = np.ceil(ts / DAY) * DAY
    return np.where(ends <= until, ends, np.nan)


def _user_instants(
    codes: np.ndarray,
    ts: np.ndarray,
    first_events: np.ndarray,
    grid: np.ndarray,
    activity_until: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's snapshot instants: grid from their first event on, plus activity.

    Args:
        codes: User codes of the events, grouped by user (code order).
        ts: Event times in the same order, ascending within a user.
        first_events: Per user, the position of their first event.
        grid: Grid instants, ascending.
        activity_until: When given, the end of every active day up to it too.

    Returns:
        The rows' user codes and instants, grouped by user, ascending and
        distinct within a user.
    """
    n_users = len(first_events)
    first_grid = np.searchsorted(grid, ts[first_events], side="left")
    grid_rows = len(grid) - first_grid
    user = np.repeat(np.arange(n_users), grid_rows)
    instants = grid[ragged_arange(first_grid, grid_rows)]
    if activity_until is None:
        return user, instants
    active = activity_instants(ts, activity_until)
    kept = ~np.isnan(active)
    user = np.concatenate((user, codes[kept]))
    instants = np.concatenate((instants, active[kept]))
    order = np.lexsort((instants, user))
    user, instants = user[order], instants[order]
    distinct = np.ones(len(user), dtype=bool)
    distinct[1:] = (user[1:] != user[:-1]) | (instants[1:] != instants[:-1])
    return user[distinct], instants[distinct]


def _text(events: pd.DataFrame, name: str, order: np.ndarray) -> pa.Array:
    """A text column in ``order`` as Arrow strings, missing values (None, NaN, NA)
    as nulls.

    Arrow rather than Python strings: a chunk's slice of it is a few buffers,
    which a worker process receives as bytes and turns into strings itself
    (:func:`~training.replay.replay_chunk`), in parallel; an object array made
    the parent build every string and pickle it again for the worker, holding
    the GIL its own replay needs.
    """
    if name not in events:
        return pa.nulls(len(order), pa.string())
    column = events[name]
    to_arrow = getattr(column.array, "__arrow_array__", None)
    if to_arrow is not None:
        values = to_arrow()
    else:
        values = pa.array(column.to_numpy(dtype=object), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.take(pa.array(order))


def sorted_events(
    events: pd.DataFrame, snaps: list[float], activity_until: float | None = None
) -> tuple[Users, dict[str, np.ndarray | pa.Array]]:
    """Users and their event columns, grouped by user and by time within a user.

    Users come in order of first appearance; each user's events in event-time
    order, stable, so equal times keep file order. Columns are what
    :func:`~training.replay.replay_chunk` reads: compact arrays (codes, floats
    with NaN for missing, Arrow strings), cheap to slice and to send to a
    worker process.

    Args:
        events: Validated events with the contract columns, ``ts`` in epoch
            seconds, at least one.
        snaps: Grid instants, epoch seconds, ascending: every user gets those
            at or after their first event.
        activity_until: When given, every user also gets the end of each UTC
            day with one of their events (see :func:`activity_instants`) up to
            this instant.

    Returns:
        The users and their event columns, in the users' order.
    """
    codes, uniques = pd.factorize(events["user_id"], sort=False)
    if (codes < 0).any():
        raise ValueError("user_id: missing values")
    ts = events["ts"].to_numpy(dtype=np.float64)
    # Two stable passes: by time, then by user; equal times keep file order.
    by_time = np.argsort(ts, kind="stable")
    order = by_time[np.argsort(codes[by_time], kind="stable")]

    type_codes, type_names = pd.factorize(events["event_type"].astype(str))
    position = {etype.value: i for i, etype in enumerate(EVENT_TYPES)}
    unknown = sorted(set(type_names) - set(position))
    if unknown:
        raise ValueError(f"event_type: unknown values {unknown}")
    etypes = np.array([position[n] for n in type_names], dtype=np.int8)[type_codes]

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
        purchase = etypes == EVENT_TYPES.index(EventType.PURCHASE)
        missing = purchase & revenue.isna().to_numpy()
        revenue = revenue.where(~missing, implied)
        price = events["price"].to_numpy(dtype=np.float64, na_value=np.nan)[order]
    else:
        price = np.full(len(events), np.nan)

    event_counts = np.bincount(codes, minlength=len(uniques))
    sorted_ts = ts[order]
    first_events = np.cumsum(event_counts) - event_counts
    row_users, instants = _user_instants(
        codes[order],
        sorted_ts,
        first_events,
        np.asarray(snaps, dtype=np.float64),
        activity_until,
    )
    rows = np.bincount(row_users, minlength=len(uniques))
    users = Users(
        ids=np.asarray(uniques, dtype=object),
        event_counts=event_counts,
        first_events=first_events,
        rows=rows,
        first_rows=np.cumsum(rows) - rows,
        instants=instants,
    )
    columns = {
        "event_id": _text(events, "event_id", order),
        "event_type": etypes[order],
        "ts": sorted_ts,
        "session_id": _text(events, "session_id", order),
        "category": _text(events, "category", order),
        "price": price,
        "revenue": revenue.to_numpy(dtype=np.float64, na_value=np.nan)[order],
    }
    return users, columns


def _rows(
    values: np.ndarray | pa.Array, first: int, last: int
) -> np.ndarray | pa.Array:
    """Rows ``first:last`` of a column; an Arrow column's as buffers of their own
    (pickling a slice would send the whole column's buffers)."""
    if isinstance(values, pa.Array):
        return pa.concat_arrays([values.slice(first, last - first)])
    return values[first:last]


def cut_chunks(
    users: Users, columns: dict[str, np.ndarray | pa.Array], at_least: int
) -> list[Chunk]:
    """Consecutive users cut into chunks of about equal work (events plus rows).

    Small enough to balance the load over processes and to keep each chunk's row
    buffers small; ``at_least`` chunks when there are that many users.

    Args:
        users: The users, from :func:`sorted_events` (or :func:`no_users`).
        columns: Their event columns, in the same order.
        at_least: The fewest chunks wanted.

    Returns:
        The chunks, in user order.
    """
    n_users = len(users.ids)
    work = np.cumsum(users.event_counts + users.rows)
    total = int(work[-1]) if n_users else 0
    n_chunks = min(n_users, max(at_least, -(-total // CHUNK_WORK)))
    targets = np.arange(1, n_chunks) * (total / max(n_chunks, 1))
    cuts = np.searchsorted(work, targets, side="left") + 1
    bounds = np.unique(np.concatenate(([0], cuts, [n_users])))
    bounds = bounds[bounds <= n_users]
    chunks = []
    for start, stop in itertools.pairwise(bounds.tolist()):
        first = int(users.first_events[start])
        last = first + int(users.event_counts[start:stop].sum())
        first_row = int(users.first_rows[start])
        rows = int(users.rows[start:stop].sum())
        chunks.append(
            Chunk(
                first_row=first_row,
                rows=rows,
                event_counts=users.event_counts[start:stop],
                user_rows=users.rows[start:stop],
                instants=users.instants[first_row : first_row + rows],
                **{
                    name: _rows(values, first, last) for name, values in columns.items()
                },
            )
        )
    return chunks
