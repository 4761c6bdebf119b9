"""Propensity labels: did the user buy in the horizon after a snapshot?

A label looks only at events strictly after its snapshot instant, and a snapshot is
labelled only when its whole horizon lies inside the data; otherwise a quiet final
week would read as "did not buy" when it only means "not observed yet".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.events import EventType
from core.user_state import DAY

log = logging.getLogger(__name__)

# The event columns the labels read: a caller done with the rest can drop it.
LABEL_COLUMNS = ("user_id", "event_type", "ts")


def labelled_snapshots(
    snapshot_times: Sequence[float], horizon_days: int, data_end: float
) -> list[float]:
    """The snapshots whose horizon ``(S, S + horizon]`` ends by ``data_end``.

    Args:
        snapshot_times: Candidate snapshot instants, epoch seconds.
        horizon_days: Label horizon in days.
        data_end: The last instant the event data covers, epoch seconds.

    Returns:
        The qualifying instants, ascending.
    """
    horizon = horizon_days * DAY
    return sorted({float(s) for s in snapshot_times if s + horizon <= data_end})


def purchase_labels(
    events: pd.DataFrame,
    snapshot_times: Sequence[float],
    horizon_days: int,
    data_end: float | None = None,
) -> pd.DataFrame:
    """Entity rows ``(user_id, event_timestamp, label)`` for the propensity model.

    One row per snapshot S and user seen by S (first event at or before S), with
    ``label = 1`` when the user has at least one purchase in ``(S, S + horizon]``.

    Args:
        events: Events with at least ``user_id``, ``event_type`` and ``ts`` (epoch
            seconds).
        snapshot_times: Snapshot instants, epoch seconds.
        horizon_days: Label horizon in days.
        data_end: The last instant the data covers; defaults to the latest event.

    Returns:
        The entity frame, ``event_timestamp`` as UTC datetimes and ``label`` int8,
        ordered by snapshot then user.
    """
    columns = ["user_id", "event_timestamp", "label"]
    if events.empty:
        return _empty(columns)
    ts = events["ts"].to_numpy(dtype=np.float64)
    end = float(ts.max()) if data_end is None else float(data_end)
    snaps = labelled_snapshots(snapshot_times, horizon_days, end)
    if not snaps:
        log.warning(
            "labels: no snapshot has a full %d-day horizon before %s",
            horizon_days,
            pd.Timestamp(end, unit="s", tz="UTC"),
        )
        return _empty(columns)

    codes, users = pd.factorize(events["user_id"], sort=True)
    first_seen = np.full(len(users), np.inf)
    np.minimum.at(first_seen, codes, ts)
    is_purchase = (
        events["event_type"].astype(str) == EventType.PURCHASE.value
    ).to_numpy()
    purchase_codes = codes[is_purchase]
    purchase_ts = ts[is_purchase]

    horizon = horizon_days * DAY
    parts: list[pd.DataFrame] = []
    for snap in snaps:
        seen = np.flatnonzero(first_seen <= snap)
        in_horizon = (purchase_ts > snap) & (purchase_ts <= snap + horizon)
        buyers = np.zeros(len(users), dtype=bool)
        buyers[purchase_codes[in_horizon]] = True
        parts.append(
            pd.DataFrame(
                {
                    "user_id": users[seen],
                    "event_timestamp": pd.Timestamp(snap, unit="s", tz="UTC"),
                    "label": buyers[seen].astype(np.int8),
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    log.info(
        "labels: %d rows over %d snapshots, positive rate %.3f",
        len(frame),
        len(snaps),
        float(frame["label"].mean()) if len(frame) else 0.0,
    )
    return frame


def snapshot_labels(
    events: pd.DataFrame,
    rows: pd.DataFrame,
    horizon_days: int,
    data_end: float | None = None,
) -> pd.DataFrame:
    """Entity rows ``(user_id, event_timestamp, label)`` for given snapshot rows.

    For the backfill's own (user, instant) rows, whatever instants each user
    has: each row S whose horizon ends by ``data_end`` gets ``label = 1`` when
    the user has a purchase in ``(S, S + horizon]``. Over every user at every
    grid instant this is :func:`purchase_labels`.

    Args:
        events: Events with at least ``user_id``, ``event_type`` and ``ts`` (epoch
            seconds).
        rows: ``user_id`` and ``event_timestamp`` (UTC) of the snapshot rows;
            other columns are ignored.
        horizon_days: Label horizon in days.
        data_end: The last instant the data covers; defaults to the latest event.

    Returns:
        The entity frame, ``event_timestamp`` as UTC datetimes and ``label`` int8,
        ordered by snapshot, then as in ``rows``.
    """
    columns = ["user_id", "event_timestamp", "label"]
    if events.empty or rows.empty:
        return _empty(columns)
    ts = events["ts"].to_numpy(dtype=np.float64)
    end = float(ts.max()) if data_end is None else float(data_end)
    horizon = horizon_days * DAY
    stamps = pd.Series(pd.to_datetime(rows["event_timestamp"], utc=True))
    instants = stamps.dt.as_unit("us").astype("int64").to_numpy() / 1e6
    kept = np.flatnonzero(instants + horizon <= end)
    if not len(kept):
        log.warning(
            "labels: no snapshot has a full %d-day horizon before %s",
            horizon_days,
            pd.Timestamp(end, unit="s", tz="UTC"),
        )
        return _empty(columns)
    kept = kept[np.argsort(instants[kept], kind="stable")]
    row_codes, users = pd.factorize(rows["user_id"].to_numpy(dtype=object)[kept])
    is_purchase = (
        events["event_type"].astype(str) == EventType.PURCHASE.value
    ).to_numpy()
    purchase_codes = pd.Index(users).get_indexer(
        events["user_id"].to_numpy(dtype=object)
    )
    bought = is_purchase & (purchase_codes >= 0)
    # The first purchase strictly after each snapshot, per user.
    purchases = pd.DataFrame(
        {"user": purchase_codes[bought], "next_purchase": ts[bought]}
    ).sort_values("next_purchase", kind="stable")
    snapshots = pd.DataFrame({"user": row_codes, "at": instants[kept]})
    nearest = pd.merge_asof(
        snapshots,
        purchases,
        left_on="at",
        right_on="next_purchase",
        by="user",
        direction="forward",
        allow_exact_matches=False,
    )
    label = (nearest["next_purchase"].to_numpy() <= instants[kept] + horizon).astype(
        np.int8
    )
    frame = pd.DataFrame(
        {
            "user_id": users[row_codes],
            "event_timestamp": stamps.array[kept],
            "label": label,
        }
    )
    log.info(
        "labels: %d of %d rows have a full horizon, positive rate %.3f",
        len(frame),
        len(rows),
        float(frame["label"].mean()),
    )
    return frame


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series(dtype=object),
            "event_timestamp": pd.Series(dtype="datetime64[us, UTC]"),
            "label": pd.Series(dtype=np.int8),
        }
    )[columns]
