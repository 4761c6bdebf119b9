"""Per-user feature state and the one transition that folds an event into it.

Mechanism (why windows are right when *read*, not only when written): the state
keeps time-bucketed counters by *event time* -- one-minute buckets for the last hour,
one-hour buckets for the last week, one-day buckets for 90 days -- plus the few
exact facts the other features need (session and category last-seen times, recent
cart-add and purchase times, a decayed engagement score with its reference time),
and lifetime purchase facts that outlive the buckets (see :class:`UserState`).
:mod:`core.feature_math` sums the buckets that fall inside each window *at the
instant of the read*. So a user idle for two hours reads 0 events in the last hour,
whenever the state was last written; an out-of-order event within the allowed
lateness lands in its own bucket; and a replay computes the same numbers.

The stream worker and the backfill both call :func:`apply_event`; that is what
makes online and offline features identical. The state is stored in Redis by the
worker and, without its dedupe ids, in the Feast online store (feature ``state``),
where the scoring path reads it and derives every window as of the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from math import floor
from operator import itemgetter
from typing import Any

import orjson

from core.events import Event, EventType
from core.rules.state import RuleState
from core.state_codec import DAY_SLOTS, SLOTS, decode, encode, offsets_of

MINUTE = 60
HOUR = 3600
DAY = 86_400

MINUTE_WINDOW = 60  # minute buckets read by the 1h windows
HOUR_WINDOW = 7 * 24  # hour buckets read by the 24h and 7d windows
DAY_WINDOW = 90  # day buckets read by the 30d and 90d history
ABANDON_SECONDS = 30 * MINUTE  # a cart add with no purchase this long after it
ENGAGEMENT_HALF_LIFE_SECONDS = DAY
_DECAY = math.log(2) / ENGAGEMENT_HALF_LIFE_SECONDS

# Counter slots of minute and hour buckets.
S_EVENTS, S_VIEWS, S_ADDS, S_REMOVES, S_PURCHASES, S_REVENUE = range(6)
S_VIEW_PRICE_SUM, S_VIEW_PRICE_N = 6, 7  # SLOTS of them
# Counter slots of day buckets.
D_PURCHASES, D_REVENUE, D_SESSIONS, D_VIEWS, D_ADDS, D_EVENTS = range(6)  # DAY_SLOTS

ENGAGEMENT_WEIGHTS: dict[EventType, float] = {
    EventType.PAGE_VIEW: 1.0,
    EventType.PRODUCT_VIEW: 1.0,
    EventType.SEARCH: 1.0,
    EventType.ADD_TO_CART: 3.0,
    EventType.REMOVE_FROM_CART: 0.0,
    EventType.CHECKOUT: 4.0,
    EventType.PURCHASE: 5.0,
}
_TYPE_SLOT: dict[EventType, int] = {
    EventType.PRODUCT_VIEW: S_VIEWS,
    EventType.ADD_TO_CART: S_ADDS,
    EventType.REMOVE_FROM_CART: S_REMOVES,
    EventType.PURCHASE: S_PURCHASES,
}


class Outcome(Enum):
    """What :func:`apply_event` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"

    # Members are singletons compared by identity: hashed by identity too, in C,
    # not by Enum's Python-level hash of the name (twice per event in a batch).
    __hash__ = object.__hash__


@dataclass
class UserState:
    """Everything needed to compute one user's features as of any recent instant."""

    # Counters and spans are tuples of floats, replaced on update, not lists:
    # the garbage collector stops tracking a tuple of floats (and a dict holding
    # only such tuples) after one look, so it never rescans the cached states.
    # With lists, a worker caching 10k users carried ~600k tracked containers and
    # each full collection stalled it for ~0.3 s (the freshness p99).
    minutes: dict[int, tuple[float, ...]] = field(default_factory=dict)
    hours: dict[int, tuple[float, ...]] = field(default_factory=dict)
    days: dict[int, tuple[float, ...]] = field(default_factory=dict)
    # session id -> (first seen, last seen); the first decides the day it counts on
    sessions: dict[str, tuple[float, float]] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)  # name -> last seen
    cart_adds: tuple[float, ...] = ()  # recent add times
    purchases: tuple[float, ...] = ()  # recent purchase times
    engagement: float = 0.0  # decayed score at engagement_ts
    engagement_ts: float | None = None
    first_seen_ts: float | None = None
    last_event_ts: float | None = None
    last_purchase_ts: float | None = None
    # Lifetime purchase facts, kept forever at a few floats each. Gaps are between
    # consecutive distinct purchase days (UTC day indexes), in days; there are
    # ``purchase_days_lifetime - 1`` of them, so the sum and the sum of squares
    # give their exact mean and standard deviation.
    orders_lifetime: float = 0.0
    revenue_lifetime: float = 0.0
    purchase_days_lifetime: int = 0
    first_purchase_ts: float | None = None
    purchase_gap_sum: float = 0.0
    purchase_gap_sq_sum: float = 0.0
    # The latest purchase day whose bucket was pruned: the neighbour an
    # out-of-order purchase needs when no kept bucket precedes it. With the one
    # pruned before it, a read finds the second-latest purchase day (a feature)
    # even when one or no kept bucket holds a purchase. Every pruned day precedes
    # every kept bucket: no event old enough to land before them is accepted.
    pruned_purchase_day: int | None = None
    pruned_previous_purchase_day: int | None = None
    seen: dict[str, float] = field(default_factory=dict)  # event id -> time
    # Highest source offset applied, per source partition ("topic:partition", see
    # :func:`source_key`). Offsets only order records within one partition, so a
    # replay after a crash is recognised per partition, even beyond the event-id
    # window (which only spans the allowed lateness). A user's events normally all
    # come from one partition (streams.routing); a second entry appears when the
    # topic gains partitions and the user's partition changes.
    offsets: dict[str, int] = field(default_factory=dict)
    # The stream worker's live segment (streams/live_segments.py): where the user
    # was last placed, how many times that changed, and the change records written
    # with this state but not yet produced (an outbox: a crash between the write
    # and the produce sends them again, with the same ``seq``). The worker's own
    # bookkeeping, stored with the dedupe data, never in Feast's blob; not part of
    # equality, which is about features.
    segment: int | None = field(default=None, compare=False)
    segment_seq: int = field(default=0, compare=False)
    segment_outbox: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    # The worker's behavioural triggers (core/rules/state.py), kept likewise.
    rules: RuleState = field(default_factory=RuleState, compare=False)

    # The earliest "oldest kept time" (newest event time minus the lateness) at
    # which :func:`_prune` can find a bucket, session, category or cart time to
    # drop; clean-ups before it would find nothing and are skipped. A cache, not
    # state: not stored or compared; a new or loaded state checks everything once.
    _prune_due: float = field(default=-math.inf, init=False, repr=False, compare=False)
    # Events pushed onto the user's recent-events list (core.store.recent_events)
    # since it was last trimmed; None: unknown (a state just loaded), trim first.
    recent_untrimmed: int | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def to_bytes(self, with_dedupe: bool = True) -> bytes:
        """Compact bytes (:mod:`core.state_codec`); without the dedupe ids for Feast."""
        return encode(self, with_dedupe)

    def dedupe_bytes(self) -> bytes:
        """The worker's part: recent event ids, source offsets, live segment, rules."""
        worker: dict[str, Any] = {"s": self.seen, "o": self.offsets}
        # The outboxes are not here: they have a field of their own
        # (core.store.state_store.OUTBOX_FIELD), emptied without this rewrite.
        if self.segment is not None:
            worker["g"] = [self.segment, self.segment_seq]
        if not self.rules.empty():
            worker["r"] = self.rules.to_json()
        return orjson.dumps(worker)

    @classmethod
    def from_bytes(cls, blob: bytes | None, dedupe: bytes | None = None) -> UserState:
        """Inverse of :meth:`to_bytes` (plus :meth:`dedupe_bytes` when given).

        ``None`` or empty gives a fresh state.
        """
        state = decode(cls, blob) if blob else cls()
        if dedupe:
            extra = orjson.loads(dedupe)
            state.seen = extra["s"]
            state.offsets = offsets_of(extra["o"])
            live = extra.get("g")
            if live:
                state.segment, state.segment_seq = live[0], int(live[1])
                # Written by workers that kept the outbox here (before its field).
                state.segment_outbox = tuple(live[2]) if len(live) > 2 else ()
            state.rules = RuleState.from_json(extra.get("r"))
        return state


def source_key(topic: str, partition: int) -> str:
    """The name of a source partition in :attr:`UserState.offsets`."""
    return f"{topic}:{partition}"


_NO_COUNTS = (0.0,) * SLOTS
_NO_DAY_COUNTS = (0.0,) * DAY_SLOTS


# Enum members as plain globals: a class attribute lookup on an Enum costs about
# eight times a global's, and the transition runs once per event.
_VIEW, _ADD, _PURCHASE = (
    EventType.PRODUCT_VIEW,
    EventType.ADD_TO_CART,
    EventType.PURCHASE,
)
_APPLIED, _DUPLICATE, _LATE = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.LATE


def apply_event(
    state: UserState,
    event: Event,
    lateness_seconds: int,
    offset: int | None = None,
    source: str = "",
) -> Outcome:
    """Fold one event into ``state`` (in place) unless it is a duplicate or too late.

    An event is late when its time lies more than ``lateness_seconds`` before the
    newest event time this user has shown; such events are refused rather than
    rewriting windows that may already have been served and trained on. With a
    source ``offset`` (the stream) read from partition ``source`` (see
    :func:`source_key`), anything at or below the highest offset already applied
    from that partition is a replay, hence a duplicate, whatever its time.
    """
    return apply_fields(
        state,
        event.event_id,
        event.event_type,
        event.ts,
        event.session_id,
        event.category,
        event.price,
        event.revenue,
        lateness_seconds,
        offset,
        source,
    )


def apply_fields(
    state: UserState,
    event_id: str,
    etype: EventType,
    ts: float,
    session_id: str | None,
    category: str | None,
    price: float | None,
    revenue: float | None,
    lateness_seconds: int,
    offset: int | None = None,
    source: str = "",
) -> Outcome:
    """:func:`apply_event` on the fields of a validated event, field by field.

    The one transition (``apply_event`` delegates here); for callers holding
    events as columns, like the backfill, which would otherwise build an
    :class:`Event` per row only to have it taken apart again. ``revenue`` is the
    validated one (a purchase's price times quantity when the source gave none).

    Returns:
        What happened to the event, as :func:`apply_event` describes.
    """
    if offset is not None:
        offsets = state.offsets
        if offset <= offsets.get(source, -1):
            return _DUPLICATE
        offsets[source] = offset
    seen = state.seen
    if event_id in seen:
        return _DUPLICATE
    newest = state.last_event_ts
    if newest is not None and ts < newest - lateness_seconds:
        return _LATE

    # ``floor(ts) // n`` is ``int(ts // n)`` for any epoch time, at half the cost.
    whole = floor(ts)
    day_index, hour_index, minute_index = whole // DAY, whole // HOUR, whole // MINUTE
    # The same increments into the minute and the hour bucket, written out
    # rather than looped over: this runs once per event.
    minutes, hours = state.minutes, state.hours
    minute = list(minutes.get(minute_index) or _NO_COUNTS)
    hour = list(hours.get(hour_index) or _NO_COUNTS)
    minute[S_EVENTS] += 1.0
    hour[S_EVENTS] += 1.0
    slot = _TYPE_SLOT.get(etype)
    if slot is not None:
        minute[slot] += 1.0
        hour[slot] += 1.0
    if etype is _PURCHASE:
        amount = revenue or 0.0
        minute[S_REVENUE] += amount
        hour[S_REVENUE] += amount
    elif etype is _VIEW and price is not None:
        minute[S_VIEW_PRICE_SUM] += price
        minute[S_VIEW_PRICE_N] += 1.0
        hour[S_VIEW_PRICE_SUM] += price
        hour[S_VIEW_PRICE_N] += 1.0
    minutes[minute_index] = tuple(minute)
    hours[hour_index] = tuple(hour)

    days = state.days
    day = list(days.get(day_index) or _NO_DAY_COUNTS)
    day[D_EVENTS] += 1.0
    if etype is _VIEW:
        day[D_VIEWS] += 1.0
    elif etype is _ADD:
        day[D_ADDS] += 1.0
        state.cart_adds = (*state.cart_adds, ts)
    elif etype is _PURCHASE:
        amount = revenue or 0.0
        if not day[D_PURCHASES]:
            _add_purchase_day(state, day_index)
        day[D_PURCHASES] += 1.0
        day[D_REVENUE] += amount
        state.orders_lifetime += 1.0
        state.revenue_lifetime += amount
        state.purchases = (*state.purchases, ts)
        if state.last_purchase_ts is None or ts > state.last_purchase_ts:
            state.last_purchase_ts = ts
        if state.first_purchase_ts is None or ts < state.first_purchase_ts:
            state.first_purchase_ts = ts

    if session_id:
        sessions = state.sessions
        span = sessions.get(session_id)
        if span is None:
            day[D_SESSIONS] += 1.0
            sessions[session_id] = (ts, ts)
        elif ts < span[0]:
            # An earlier event of a known session arrived late: the session counts
            # on the day it started, whatever order its events came in.
            first_index = int(span[0] // DAY)
            if first_index == day_index:
                day[D_SESSIONS] -= 1.0
            elif first_index in days:
                first_day = list(days[first_index])
                first_day[D_SESSIONS] -= 1.0
                days[first_index] = tuple(first_day)
            day[D_SESSIONS] += 1.0
            sessions[session_id] = (ts, span[1])
        elif ts > span[1]:
            sessions[session_id] = (span[0], ts)
    days[day_index] = tuple(day)
    if category:
        previous = state.categories.get(category)
        if previous is None or ts > previous:
            state.categories[category] = ts

    weight = ENGAGEMENT_WEIGHTS[etype]
    ref = state.engagement_ts
    if ref is None or ts >= ref:
        decayed = state.engagement * math.exp(-_DECAY * (ts - ref)) if ref else 0.0
        state.engagement = decayed + weight
        state.engagement_ts = ts
    else:
        state.engagement += weight * math.exp(-_DECAY * (ref - ts))

    if state.first_seen_ts is None or ts < state.first_seen_ts:
        state.first_seen_ts = ts
    seen[event_id] = ts
    if newest is None or ts > newest:
        state.last_event_ts = ts
        # Pruning once per new minute is enough: reads filter by window anyway, so
        # what is kept a little longer never changes a feature.
        if newest is None or minute_index != floor(newest) // MINUTE:
            _prune(state, lateness_seconds)
    elif ts < newest:
        # An older event may have added a bucket or time that expires before
        # anything the state held: the next clean-up checks everything.
        state._prune_due = -math.inf
    return _APPLIED


def _add_purchase_day(state: UserState, day: int) -> None:
    """Count ``day`` (no purchase on it yet) as a purchase day, and its gaps.

    Called before the purchase updates ``last_purchase_ts``. A day after the
    latest purchase day adds one gap; an earlier one (an out-of-order event
    within the lateness) splits the gap between its neighbours, so any arrival
    order gives the in-order sums. The later neighbour always has a bucket (it
    lies after the lateness horizon, which no pruning reaches); the earlier one
    is the latest purchase bucket before ``day``, else the latest pruned one.
    """
    state.purchase_days_lifetime += 1
    last = state.last_purchase_ts
    if last is None:
        return
    last_day = floor(last) // DAY
    if day > last_day:
        gap = float(day - last_day)
        state.purchase_gap_sum += gap
        state.purchase_gap_sq_sum += gap * gap
        return
    before, after = state.pruned_purchase_day, last_day
    for key, bucket in state.days.items():
        if bucket[D_PURCHASES]:
            if key < day:
                if before is None or key > before:
                    before = key
            elif day < key < after:
                after = key
    tail = float(after - day)
    if before is None:  # the new first purchase day
        state.purchase_gap_sum += tail
        state.purchase_gap_sq_sum += tail * tail
        return
    head, whole = float(day - before), float(after - before)
    # head + tail == whole: the sum is unchanged, one gap becomes two.
    state.purchase_gap_sq_sum += head * head + tail * tail - whole * whole


_SPAN_END = itemgetter(1)


def _prune(state: UserState, lateness_seconds: int) -> None:
    """Forget what no window (read at or after the newest event) can reach.

    The event ids go whenever they are older than the lateness (they decide
    whether an event is a duplicate or late, so exactly when matters); the rest
    only once :attr:`UserState._prune_due` says something may have expired.
    Until then every check would find nothing: most calls cost two comparisons.
    """
    newest = state.last_event_ts
    assert newest is not None
    oldest = newest - lateness_seconds
    seen = state.seen
    if seen and min(seen.values()) < oldest:
        for key in [k for k, ts in seen.items() if ts < oldest]:
            del seen[key]
    if oldest >= state._prune_due:
        state._prune_due = _prune_windows(state, oldest)


def _prune_windows(state: UserState, oldest: float) -> float:
    """Drop the buckets, sessions, categories and cart times out of every window.

    Reads at or after ``oldest`` reach back to the bucket holding oldest - W.
    Each clean-up first asks (at C speed) whether anything is old enough to drop.
    (``floor(x) // n`` is ``int(x // n)``, ``if x < due`` is ``min``, both cheaper.)

    Returns:
        A value of ``oldest`` before which no call would drop anything: each
        kept item's expiry, derived from its drop condition below, rounded down
        (a bucket early, or a second for the rest, so float rounding of the
        conditions can never make it late). Items added later by events in time
        order expire later still; an out-of-order event resets it.
    """
    due = math.inf
    oldest_minute = floor(oldest - MINUTE_WINDOW * MINUTE) // MINUTE
    if state.minutes:  # dropped once oldest - W >= (first + 1) minutes
        due = (_drop_below(state.minutes, oldest_minute) + MINUTE_WINDOW) * MINUTE
    oldest_hour = floor(oldest - HOUR_WINDOW * HOUR) // HOUR
    if state.hours:
        expiry = (_drop_below(state.hours, oldest_hour) + HOUR_WINDOW) * HOUR
        if expiry < due:
            due = expiry
    if state.days:
        first = _drop_days_below(state, floor(oldest) // DAY - DAY_WINDOW)
        expiry = (first + DAY_WINDOW) * DAY  # dropped once oldest day >= first + W + 1
        if expiry < due:
            due = expiry
    # The floors below lie at or before oldest minus their span, so an item
    # older than the floor is older than oldest minus the span.
    sessions = state.sessions
    if sessions:
        session_floor = oldest_hour * HOUR
        last = min(map(_SPAN_END, sessions.values()))
        if last < session_floor:
            for key in [k for k, span in sessions.items() if span[1] < session_floor]:
                del sessions[key]
            last = min(map(_SPAN_END, sessions.values()), default=math.inf)
        if last + HOUR_WINDOW * HOUR < due:
            due = last + HOUR_WINDOW * HOUR
    day_floor = floor(oldest - DAY) // HOUR * HOUR
    categories = state.categories
    if categories:
        last = min(categories.values())
        if last < day_floor:
            for key in [k for k, ts in categories.items() if ts < day_floor]:
                del categories[key]
            last = min(categories.values(), default=math.inf)
        if last + DAY < due:
            due = last + DAY
    cart_floor = day_floor - ABANDON_SECONDS
    for times, name in ((state.cart_adds, "cart_adds"), (state.purchases, "purchases")):
        if times:
            last = min(times)
            if last < cart_floor:
                times = tuple(t for t in times if t >= cart_floor)
                setattr(state, name, times)
                last = min(times, default=math.inf)
            if last + DAY + ABANDON_SECONDS < due:
                due = last + DAY + ABANDON_SECONDS
    return due - 1.0


def _drop_days_below(state: UserState, low: int) -> float:
    """:func:`_drop_below` for the day buckets, keeping the two latest purchase days.

    ``state.days`` must not be empty.
    """
    days = state.days
    first: float = min(days)
    if first < low:
        # In day order: each pruned purchase day is the latest pruned so far.
        for key in sorted(k for k in days if k < low):
            if days.pop(key)[D_PURCHASES]:
                state.pruned_previous_purchase_day = state.pruned_purchase_day
                state.pruned_purchase_day = key
        first = min(days, default=math.inf)
    return first


def _drop_below(buckets: dict[int, tuple[float, ...]], low: int) -> float:
    """Drop the buckets keyed below ``low``; the lowest key left (inf if none).

    ``buckets`` must not be empty. The first ``min`` asks at C speed whether
    anything is old enough; most calls find nothing.
    """
    first: float = min(buckets)
    if first < low:
        for key in [k for k in buckets if k < low]:
            del buckets[key]
        first = min(buckets, default=math.inf)
    return first
