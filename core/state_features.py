"""The stream and history features of many states, each read as of its own instant.

The one implementation of both feature groups (window semantics: see
:mod:`core.feature_math`). Every caller goes through :func:`read_features`: the
scoring path over the blobs it read, the stream worker over the states it
placed, the backfill over every snapshot row of a chunk at once. It works on a
:class:`~core.state_block.StateBlock`, whole columns at a time.

Exactness: each value is the float the per-state loops that preceded this
module returned, to the bit. Window totals add a state's buckets in their
stored (dict) order, starting from 0.0, one at a time, as those loops did:
``np.add.at`` and ``np.subtract.at`` apply their items unbuffered, in order.
The engagement decay uses :func:`math.exp` per row, since numpy's ``exp`` may
round differently. The oracle test (``tests/unit/core/test_state_read_parity``)
holds this against frozen copies of the loops.
"""

from __future__ import annotations

import math

import numpy as np

from core.feature_catalog import HISTORY_NAMES, STREAM_NAMES
from core.state_block import StateBlock, ragged_arange
from core.user_state import _DECAY, ABANDON_SECONDS, DAY, HOUR, MINUTE

# Columns of StateBlock.scalars (the codec's order).
_ENGAGEMENT, _ENGAGEMENT_TS, _FIRST_SEEN, _LAST_EVENT, _LAST_PURCHASE = range(5)
_ORDERS_ALL, _REVENUE_ALL, _DAYS_ALL, _FIRST_PURCHASE = 5, 6, 7, 8
_GAP_SUM, _GAP_SQ_SUM, _PRUNED, _PRUNED_PREVIOUS = 9, 10, 11, 12

N_STREAM, N_HISTORY = len(STREAM_NAMES), len(HISTORY_NAMES)


def read_features(
    block: StateBlock, as_of: np.ndarray, state_of_row: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row ``r``'s features: state ``state_of_row[r]`` as of ``as_of[r]``.

    Args:
        block: The states.
        as_of: One read instant per row, epoch seconds.
        state_of_row: Which state each row reads; ``None``: row i reads state i.

    Returns:
        ``(stream, history)``: one row per read, columns in ``STREAM_NAMES`` and
        ``HISTORY_NAMES`` order, NaN for a timestamp unknown as of the read.
    """
    at = np.asarray(as_of, dtype=np.float64)
    states = np.arange(block.n) if state_of_row is None else state_of_row
    scalars = block.scalars[states]
    # Every bucket index a window needs, each ``floor(at - back) // size`` on
    # integers, as the scalar code computed it.
    clock = np.floor(at[:, None] - _CLOCK_BACK).astype(np.int64) // _CLOCK_SIZE
    return (
        _stream(block, at, state_of_row, states, scalars, clock),
        _history(block, at, state_of_row, scalars, clock[:, _TODAY]),
    )


# Columns of the clock: (seconds back, bucket size) of each index.
_MINUTE, _HOUR, _LOW_1H, _LOW_24H, _LOW_7D, _TODAY = range(6)
_CLOCK_BACK = np.array([0.0, 0.0, HOUR, DAY, 7 * DAY, 0.0])
_CLOCK_SIZE = np.array([MINUTE, HOUR, MINUTE, HOUR, HOUR, DAY], dtype=np.int64)
# The windows' edges in seconds: (index column, +1 for an end, bucket size).
_EDGE_INDEX = np.array([_LOW_1H, _MINUTE, _LOW_24H, _LOW_7D, _HOUR])
_EDGE_SHIFT = np.array([0, 1, 0, 0, 1], dtype=np.int64)
_EDGE_SIZE = np.array([MINUTE, MINUTE, HOUR, HOUR, HOUR], dtype=np.int64)


def _stream(
    block: StateBlock,
    at: np.ndarray,
    state_of_row: np.ndarray | None,
    states: np.ndarray,
    scalars: np.ndarray,
    clock: np.ndarray,
) -> np.ndarray:
    rows = len(at)
    out = np.zeros((rows, N_STREAM))
    minute, hour = clock[:, _MINUTE], clock[:, _HOUR]
    low_1h, low_24h, low_7d = clock[:, _LOW_1H], clock[:, _LOW_24H], clock[:, _LOW_7D]

    # Window totals, slot by slot: events, views, adds, removes, purchases,
    # revenue (minute buckets: 1h); the same plus the price sums (hours: 24h, 7d).
    row, item = block.minutes.pairs(state_of_row)
    key = block.minutes.keys[item]
    take = (low_1h[row] <= key) & (key <= minute[row])
    sums_1h = np.zeros((rows, 6))
    np.add.at(sums_1h, row[take], block.minutes.values[item[take], :6])
    row, item = block.hours.pairs(state_of_row)
    key = block.hours.keys[item]
    take_7d = (low_7d[row] <= key) & (key <= hour[row])
    take_24h = take_7d & (low_24h[row] <= key)
    sums_7d, sums_24h = np.zeros((rows, 8)), np.zeros((rows, 8))
    np.add.at(sums_7d, row[take_7d], block.hours.values[item[take_7d]])
    np.add.at(sums_24h, row[take_24h], block.hours.values[item[take_24h]])
    # Catalogue order: each count's 1h, 24h and 7d, for the six counts.
    out[:, 0:18:3] = sums_1h
    out[:, 1:18:3] = sums_24h[:, :6]
    out[:, 2:18:3] = sums_7d[:, :6]

    # Times against the windows' edges in seconds (exact: see feature_math).
    edges = ((clock[:, _EDGE_INDEX] + _EDGE_SHIFT) * _EDGE_SIZE).astype(np.float64)
    start_1h, end_1h, start_24h, start_7d, end_hour = edges.T
    row, item = block.sessions.pairs(state_of_row)
    last = block.sessions.values[item, 1]
    in_7d = (start_7d[row] <= last) & (last < end_hour[row])
    in_24h = in_7d & (start_24h[row] <= last)
    in_1h = in_24h & (start_1h[row] <= last) & (last < end_1h[row])
    for column, chosen in ((18, in_1h), (19, in_24h), (20, in_7d)):
        out[:, column] = np.bincount(row[chosen], minlength=rows)
    row, item = block.categories.pairs(state_of_row)
    seen = block.categories.values[item]
    recent = (start_24h[row] <= seen) & (seen < end_hour[row])
    out[:, 21] = np.bincount(row[recent], minlength=rows)

    # The ratios read 0 without a denominator.
    np.divide(sums_24h[:, 6], sums_24h[:, 7], out=out[:, 22], where=sums_24h[:, 7] != 0)
    np.divide(sums_7d[:, 6], sums_7d[:, 7], out=out[:, 23], where=sums_7d[:, 7] != 0)
    np.divide(sums_7d[:, 2], sums_7d[:, 1], out=out[:, 24], where=sums_7d[:, 1] != 0)
    out[:, 25] = _abandonments(block, at, state_of_row, states, start_24h, end_hour)
    out[:, 26] = _engagement(scalars, at)
    # A replayed state may hold later events; "as of" must not see them.
    for column, source in ((27, _LAST_EVENT), (28, _LAST_PURCHASE)):
        stamp = scalars[:, source]
        out[:, column] = np.where(stamp <= at, stamp, np.nan)
    return out


def _abandonments(
    block: StateBlock,
    at: np.ndarray,
    state_of_row: np.ndarray | None,
    states: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> np.ndarray:
    """Cart adds in the 24h window (``[start, end)``) not bought within 30 minutes.

    Only decided cases count: an add less than 30 minutes before the read may
    still be bought.
    """
    row, item = block.cart_adds.pairs(state_of_row)
    added = block.cart_adds.values[item]
    decided = (
        (start[row] <= added)
        & (added < end[row])
        & ~(added + ABANDON_SECONDS > at[row])
    )
    row, added = row[decided], added[decided]
    rows = len(at)
    if not len(row):
        return np.zeros(rows)
    # Each decided add against each purchase of the row's state.
    state = states[row]
    count = block.purchases.count[state]
    add = np.repeat(np.arange(len(row)), count)
    bought = block.purchases.values[ragged_arange(block.purchases.start[state], count)]
    until = added + ABANDON_SECONDS
    hit = (added[add] < bought) & (bought <= until[add])
    followed = np.bincount(add[hit], minlength=len(row)) > 0
    return np.bincount(row[~followed], minlength=rows).astype(np.float64)


def _engagement(scalars: np.ndarray, at: np.ndarray) -> np.ndarray:
    score, ref = scalars[:, _ENGAGEMENT], scalars[:, _ENGAGEMENT_TS]
    out = np.where(np.isnan(ref), 0.0, score)
    decays = np.flatnonzero(at > ref)  # NaN compares False
    if len(decays):
        exponents = (-_DECAY * (at[decays] - ref[decays])).tolist()
        out[decays] = score[decays] * np.array([math.exp(x) for x in exponents])
    return out


def _history(
    block: StateBlock,
    at: np.ndarray,
    state_of_row: np.ndarray | None,
    scalars: np.ndarray,
    today: np.ndarray,
) -> np.ndarray:
    rows = len(at)
    out = np.empty((rows, N_HISTORY))
    row, item = block.days.pairs(state_of_row)
    # Day counters: purchases, revenue, sessions, views, adds, events.
    days = block.days.values[item]
    key = block.days.keys[item].astype(np.int64)
    bought = days[:, 0] > 0
    # Days overlapping [T - 90d, T]: the read's day and the 90 before it.
    in_90 = (today[row] - 90 <= key) & (key <= today[row])
    in_30 = in_90 & (key >= today[row] - 30)
    sums_90 = np.zeros((rows, 2))
    np.add.at(sums_90, row[in_90], days[in_90, :2])  # orders, revenue
    sums_30 = np.zeros((rows, 4))
    # orders, sessions, views, adds
    np.add.at(sums_30, row[in_30], days[in_30][:, [0, 2, 3, 4]])
    orders, revenue = sums_90[:, 0], sums_90[:, 1]
    purchase_days = np.bincount(row[in_90 & bought], minlength=rows)
    purchase_days_30 = np.bincount(row[in_30 & bought], minlength=rows)
    active_30 = np.bincount(row[in_30 & (days[:, 5] > 0)], minlength=rows)

    # The two latest purchase days by the read's day (-1: none), in or before
    # the window; a purchase day after it means the state holds later events.
    by_then = bought & (key <= today[row])
    latest = np.full(rows, -1, dtype=np.int64)
    np.maximum.at(latest, row[by_then], key[by_then])
    second = by_then & (key != latest[row])
    previous = np.full(rows, -1, dtype=np.int64)
    np.maximum.at(previous, row[second], key[second])
    later = np.zeros(rows, dtype=bool)
    later[row[bought & (key > today[row])]] = True

    lifetime = scalars[
        :, [_ORDERS_ALL, _REVENUE_ALL, _DAYS_ALL, _GAP_SUM, _GAP_SQ_SUM]
    ].copy()
    if later.any():
        _take_back_later(lifetime, scalars, today, row, key, days, bought, later)
    first_purchase = scalars[:, _FIRST_PURCHASE]
    never = np.isnan(first_purchase)
    first_day = np.floor(np.where(never, 0.0, first_purchase)).astype(np.int64) // DAY
    # Nothing bought by the read's day (its own day counts whole, as in the
    # windows), whatever later purchases the state holds.
    none_yet = never | (first_day > today)
    lifetime[none_yet] = 0.0
    orders_all, revenue_all, days_all, gap_sum, gap_sq_sum = lifetime.T

    # Without a bucketed second purchase day, the pruned ones chain before it.
    pruned, pruned_previous = scalars[:, _PRUNED], scalars[:, _PRUNED_PREVIOUS]
    chain = (previous < 0) & ~(np.isnan(pruned) & np.isnan(pruned_previous))
    if chain.any():
        previous = _previous_pruned_day(
            previous, chain, latest, pruned, pruned_previous, today
        )

    gaps = days_all - 1
    has_gaps = gaps > 0
    gap_mean = np.zeros(rows)
    np.divide(gap_sum, gaps, out=gap_mean, where=has_gaps)
    gap_var = np.zeros(rows)
    np.divide(gap_sq_sum, gaps, out=gap_var, where=has_gaps)
    gap_var = np.where(has_gaps, gap_var - gap_mean * gap_mean, 0.0)

    out[:, 0], out[:, 1] = orders, revenue
    out[:, 2] = 0.0
    np.divide(revenue, orders, out=out[:, 2], where=orders != 0)
    out[:, 3] = purchase_days
    out[:, 4:8] = sums_30
    out[:, 8] = 0.0
    np.divide(purchase_days_30, active_30, out=out[:, 8], where=active_30 != 0)
    out[:, 9], out[:, 10], out[:, 11] = orders_all, revenue_all, days_all
    out[:, 12] = gap_mean
    out[:, 13] = np.sqrt(np.where(gap_var > 0.0, gap_var, 0.0))
    out[:, 14] = np.where(first_purchase <= at, first_purchase, np.nan)
    out[:, 15] = np.where(previous >= 0, (previous * DAY).astype(np.float64), np.nan)
    first_seen = scalars[:, _FIRST_SEEN]
    out[:, 16] = np.where(first_seen <= at, first_seen, np.nan)
    return out


def _take_back_later(
    lifetime: np.ndarray,
    scalars: np.ndarray,
    today: np.ndarray,
    row: np.ndarray,
    key: np.ndarray,
    days: np.ndarray,
    bought: np.ndarray,
    later: np.ndarray,
) -> None:
    """The lifetime totals without the purchase days after the read's day.

    For reads of a state that already holds later events: each later purchase
    day takes back its orders, its revenue and the gap that led to it; purchase
    days chain from the latest pruned one through the bucketed ones in day order.
    """
    mine = bought & later[row]
    order = np.lexsort((key[mine], row[mine]))
    row, key = row[mine][order], key[mine][order]
    orders, revenue = days[mine][order, 0], days[mine][order, 1]
    first_of_row = np.ones(len(row), dtype=bool)
    first_of_row[1:] = row[1:] != row[:-1]
    before = np.empty(len(row))
    before[1:] = key[:-1]
    before[first_of_row] = scalars[row[first_of_row], _PRUNED]
    gone = key > today[row]
    np.subtract.at(lifetime[:, 0], row[gone], orders[gone])
    np.subtract.at(lifetime[:, 1], row[gone], revenue[gone])
    np.subtract.at(lifetime[:, 2], row[gone], 1.0)
    with_gap = gone & ~np.isnan(before)
    gap = key[with_gap] - before[with_gap]
    np.subtract.at(lifetime[:, 3], row[with_gap], gap)
    np.subtract.at(lifetime[:, 4], row[with_gap], gap * gap)


def _previous_pruned_day(
    previous: np.ndarray,
    chain: np.ndarray,
    latest: np.ndarray,
    pruned: np.ndarray,
    pruned_previous: np.ndarray,
    today: np.ndarray,
) -> np.ndarray:
    """The second-latest purchase day by the read when at most one is bucketed.

    The days known by then chain as ``[pruned previous, pruned, latest bucketed]``
    (every pruned day precedes every bucket), each only if on or before the
    read's day; the second-latest of them, or -1.
    """
    pruned_ok = pruned <= today  # NaN (none) compares False
    previous_ok = pruned_previous <= today
    pruned_day = np.nan_to_num(pruned, nan=-1).astype(np.int64)
    previous_day = np.nan_to_num(pruned_previous, nan=-1).astype(np.int64)
    with_latest = np.where(
        pruned_ok, pruned_day, np.where(previous_ok, previous_day, -1)
    )
    without = np.where(pruned_ok & previous_ok, previous_day, -1)
    found = np.where(latest >= 0, with_latest, without)
    return np.where(chain, found, previous)
