"""Lifetime purchase facts a stored state lacks, derived from what it holds.

A state blob may lack the lifetime facts (all of them, or the second-latest
pruned purchase day); :meth:`core.user_state.UserState.from_bytes` fills them
in here from the day buckets and the facts the blob does hold, exactly where
those determine them and as documented approximations elsewhere. From then on
every fact is an exact increment on top (see :func:`core.user_state.apply_fields`).
"""

from __future__ import annotations

from itertools import pairwise
from math import floor

from core.user_state import D_PURCHASES, D_REVENUE, DAY, UserState


def derive_lifetime(state: UserState) -> None:
    """Every lifetime fact of a state stored without them, from what it still holds.

    An approximation, since such a state forgot everything older than its day
    buckets (90 days): the lifetime facts cover the bucketed purchase days, plus
    the day of ``last_purchase_ts`` when no bucket holds a purchase (one order of
    unknown revenue, then). ``first_purchase_ts`` is the start of the earliest
    such day, or ``first_seen_ts`` when that is later the same day (at most a
    day early), or ``last_purchase_ts`` for the unbucketed case. No purchase
    day before the latest pruned one is known.

    Args:
        state: A freshly decoded state; its lifetime fields are overwritten.
    """
    days = sorted(k for k, bucket in state.days.items() if bucket[D_PURCHASES])
    state.orders_lifetime = sum(state.days[k][D_PURCHASES] for k in days)
    state.revenue_lifetime = sum(state.days[k][D_REVENUE] for k in days)
    state.pruned_purchase_day = state.pruned_previous_purchase_day = None
    if days:
        first = float(days[0] * DAY)
        if state.first_seen_ts is not None and state.first_seen_ts > first:
            first = min(state.first_seen_ts, first + DAY - 1)
        state.first_purchase_ts = first
    elif state.last_purchase_ts is not None:
        days = [floor(state.last_purchase_ts) // DAY]
        state.orders_lifetime = 1.0
        state.first_purchase_ts = state.last_purchase_ts
        state.pruned_purchase_day = days[0]
    state.purchase_days_lifetime = len(days)
    gaps = [float(b - a) for a, b in pairwise(days)]
    state.purchase_gap_sum = sum(gaps)
    state.purchase_gap_sq_sum = sum(g * g for g in gaps)


def derive_pruned_previous_day(state: UserState) -> int | None:
    """The purchase day pruned before ``pruned_purchase_day``, where the state fixes it.

    The purchase days a state no longer buckets are ``purchase_days_lifetime``
    minus the bucketed ones. Exactly two of them: the earlier is the first
    purchase day. One or none: there is no such day. More: it is unknown (None),
    until the next pruned purchase day makes the current latest one it.

    Args:
        state: A decoded state holding every other lifetime fact.

    Returns:
        A UTC day index, or None.
    """
    bucketed = sum(1 for bucket in state.days.values() if bucket[D_PURCHASES])
    first = state.first_purchase_ts
    if first is None or state.purchase_days_lifetime - bucketed != 2:
        return None
    return floor(first) // DAY
