"""Per-user feature state and the one transition that folds an event into it.

The state is time-bucketed by *event time*: one-minute buckets of counters for the
short windows (kept for 7 days plus the allowed lateness) and one-day buckets of
purchases and revenue for the 90-day history. Windows are sums of buckets taken at
read time (:mod:`streams.feature_math`), so the same state answers "as of" any
instant, and out-of-order events within the lateness land in the right bucket.

Both the Faust worker and the backfill call :func:`apply_event`; that is what makes
online and offline features identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from streams.events import Event, EventType

MINUTE = 60
DAY = 86_400
SHORT_HORIZON_SECONDS = 7 * DAY
LONG_HORIZON_DAYS = 90

# Counter slots of a minute bucket: one per event type, then revenue.
EVENT_SLOTS: dict[EventType, int] = {etype: i for i, etype in enumerate(EventType)}
REVENUE_SLOT = len(EVENT_SLOTS)
SLOTS = REVENUE_SLOT + 1


class Outcome(Enum):
    """What :func:`apply_event` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass
class UserState:
    """Everything needed to compute one user's features as of any recent instant."""

    minutes: dict[int, list[float]] = field(default_factory=dict)
    days: dict[int, list[float]] = field(default_factory=dict)
    first_seen_ts: float | None = None
    last_event_ts: float | None = None
    last_purchase_ts: float | None = None
    seen: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Compact JSON for the state store."""
        return orjson.dumps(
            {
                "m": [[k, *v] for k, v in self.minutes.items()],
                "d": [[k, *v] for k, v in self.days.items()],
                "f": self.first_seen_ts,
                "l": self.last_event_ts,
                "p": self.last_purchase_ts,
                "s": self.seen,
            }
        )

    @classmethod
    def from_bytes(cls, blob: bytes | None) -> UserState:
        """Inverse of :meth:`to_bytes`; ``None`` gives a fresh state."""
        if not blob:
            return cls()
        raw: dict[str, Any] = orjson.loads(blob)
        return cls(
            minutes={int(row[0]): list(row[1:]) for row in raw["m"]},
            days={int(row[0]): list(row[1:]) for row in raw["d"]},
            first_seen_ts=raw["f"],
            last_event_ts=raw["l"],
            last_purchase_ts=raw["p"],
            seen=raw["s"],
        )


def apply_event(state: UserState, event: Event, lateness_seconds: int) -> Outcome:
    """Fold one event into ``state`` (in place) unless it is a duplicate or too late.

    An event is late when its time lies more than ``lateness_seconds`` before the
    newest event time this user has shown; such events are refused rather than
    rewriting windows that may already have been served and trained on.
    """
    if event.event_id in state.seen:
        return Outcome.DUPLICATE
    ts = event.ts
    newest = state.last_event_ts
    if newest is not None and ts < newest - lateness_seconds:
        return Outcome.LATE

    minute = int(ts // MINUTE)
    bucket = state.minutes.get(minute)
    if bucket is None:
        bucket = state.minutes[minute] = [0.0] * SLOTS
    bucket[EVENT_SLOTS[event.event_type]] += 1.0
    if event.event_type is EventType.PURCHASE:
        revenue = event.revenue or 0.0
        bucket[REVENUE_SLOT] += revenue
        day = int(ts // DAY)
        day_bucket = state.days.get(day)
        if day_bucket is None:
            day_bucket = state.days[day] = [0.0, 0.0]
        day_bucket[0] += 1.0
        day_bucket[1] += revenue
        if state.last_purchase_ts is None or ts > state.last_purchase_ts:
            state.last_purchase_ts = ts
    if state.first_seen_ts is None or ts < state.first_seen_ts:
        state.first_seen_ts = ts
    state.seen[event.event_id] = ts
    if newest is None or ts > newest:
        state.last_event_ts = ts
        _prune(state, lateness_seconds)
    return Outcome.APPLIED


def _prune(state: UserState, lateness_seconds: int) -> None:
    """Forget what no window or dedupe check can reach any more."""
    newest = state.last_event_ts
    assert newest is not None
    oldest_minute = int((newest - SHORT_HORIZON_SECONDS - lateness_seconds) // MINUTE)
    oldest_day = int(newest // DAY) - LONG_HORIZON_DAYS - 1
    oldest_seen = newest - lateness_seconds
    for key in [k for k in state.minutes if k < oldest_minute]:
        del state.minutes[key]
    for key in [k for k in state.days if k < oldest_day]:
        del state.days[key]
    for key in [k for k, ts in state.seen.items() if ts < oldest_seen]:
        del state.seen[key]
