"""The backfill's input: events grouped by user and cut into chunks of equal work.

Users come in order of first appearance, each user's events in event-time order;
the columns are the compact arrays :func:`~training.replay.replay_chunk` reads
(codes, floats with NaN for missing), cheap to slice and to send to a worker
process. Each user's snapshot rows take one known range of the output tables, so
a chunk of consecutive users writes one range.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.events import EventType
from training.replay import EVENT_TYPES, Chunk

# Events plus snapshot rows per chunk of users: about a tenth of a second of work,
# so that processes finish within that of each other, and a chunk's row buffers
# stay small (a few MB).
CHUNK_WORK = 20_000


@dataclass(frozen=True)
class Users:
    """Every user in first-appearance order, with where their events and rows lie.

    Attributes:
        ids: User ids (object array).
        event_counts: Events per user.
        first_events: Per user, the position of their first event in time order.
        first_snapshots: Per user, the first snapshot at or after their first event.
        rows: Snapshot rows per user (one per snapshot from the first on).
        first_rows: Per user, the output row of their first snapshot row.
    """

    ids: np.ndarray
    event_counts: np.ndarray
    first_events: np.ndarray
    first_snapshots: np.ndarray
    rows: np.ndarray
    first_rows: np.ndarray

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
        first_snapshots=nothing,
        rows=nothing,
        first_rows=nothing,
    )


def _text(events: pd.DataFrame, name: str, order: np.ndarray) -> np.ndarray:
    """A text column in ``order``, missing values (None, NaN, NA) as ``None``."""
    if name not in events:
        return np.full(len(order), None, dtype=object)
    column = events[name]
    values = column.to_numpy(dtype=object)[order]  # a copy: safe to write to
    missing = column.isna().to_numpy()[order]
    if missing.any():
        values[missing] = None
    return values


def sorted_events(
    events: pd.DataFrame, snaps: list[float]
) -> tuple[Users, dict[str, np.ndarray]]:
    """Users and their event columns, grouped by user and by time within a user.

    Users come in order of first appearance; each user's events in event-time
    order, stable, so equal times keep file order. Columns are what
    :func:`~training.replay.replay_chunk` reads: compact arrays (codes, floats
    with NaN for missing), cheap to slice and to send to a worker process.

    Args:
        events: Validated events with the contract columns, ``ts`` in epoch
            seconds, at least one.
        snaps: Snapshot instants, epoch seconds, ascending.

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
    first_snapshots = np.searchsorted(
        np.asarray(snaps, dtype=np.float64), sorted_ts[first_events], side="left"
    )
    rows = len(snaps) - first_snapshots
    users = Users(
        ids=np.asarray(uniques, dtype=object),
        event_counts=event_counts,
        first_events=first_events,
        first_snapshots=first_snapshots,
        rows=rows,
        first_rows=np.cumsum(rows) - rows,
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


def cut_chunks(
    users: Users, columns: dict[str, np.ndarray], at_least: int
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
        chunks.append(
            Chunk(
                first_row=int(users.first_rows[start]),
                rows=int(users.rows[start:stop].sum()),
                event_counts=users.event_counts[start:stop],
                first_snapshots=users.first_snapshots[start:stop],
                **{name: values[first:last] for name, values in columns.items()},
            )
        )
    return chunks
