"""One micro-batch of the stream: validate, dedupe, fold into state, compute features.

Pure apart from the state it is handed: the Faust agent does the I/O around it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from streams.events import Event, Rejection, parse_event
from streams.feature_catalog import STATE_FEATURE
from streams.feature_math import stream_features
from streams.user_state import Outcome, UserState, apply_event


@dataclass
class Parsed:
    """A batch split into valid events and rejections (with their index in it)."""

    events: list[Event] = field(default_factory=list)
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)


@dataclass
class BatchResult:
    """What a batch changed: feature rows to push, late events, counters."""

    rows: list[dict[str, object]]
    late: list[Event]
    counts: Counter[str]


def parse_batch(
    values: list[bytes],
    *,
    now: float | None = None,
    max_future_seconds: int = 300,
    max_bytes: int = 16_384,
) -> Parsed:
    """Validate every raw message of a batch."""
    wall = time.time() if now is None else now
    parsed = Parsed()
    for index, value in enumerate(values):
        result = parse_event(
            value, now=wall, max_future_seconds=max_future_seconds, max_bytes=max_bytes
        )
        if isinstance(result, Rejection):
            parsed.rejections.append((index, result))
        else:
            parsed.events.append(result)
    return parsed


def apply_batch(
    events: list[Event],
    states: dict[str, UserState],
    lateness_seconds: int,
    offsets: list[int | None] | None = None,
) -> BatchResult:
    """Fold events into ``states`` (in place) and compute touched users' features.

    Features are computed as of each user's newest event time, so a replay of the
    same log gives the same rows whatever the wall clock says. ``offsets`` are the
    events' source offsets (stream only), which make replays duplicates.
    """
    counts: Counter[str] = Counter()
    late: list[Event] = []
    touched: dict[str, None] = {}
    for i, event in enumerate(events):
        offset = offsets[i] if offsets is not None else None
        outcome = apply_event(states[event.user_id], event, lateness_seconds, offset)
        counts[outcome.value] += 1
        if outcome is Outcome.APPLIED:
            touched[event.user_id] = None
        elif outcome is Outcome.LATE:
            late.append(event)
    rows = []
    for uid in touched:
        state = states[uid]
        as_of = state.last_event_ts
        assert as_of is not None
        rows.append(online_row(uid, state, as_of))
    return BatchResult(rows=rows, late=late, counts=counts)


def online_row(uid: str, state: UserState, as_of: float) -> dict[str, object]:
    """The stream feature row pushed online for one user.

    Stamped with the user's newest event time: Feast keeps a row only if it is not
    older than the one it holds, and event time is what orders a user's rows.
    """
    return {
        "user_id": uid,
        "event_timestamp": state.last_event_ts,
        **stream_features(state, as_of),
        STATE_FEATURE: state.to_bytes(with_dedupe=False),
    }
