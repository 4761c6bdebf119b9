"""One micro-batch of the stream: validate, dedupe, fold into per-user state.

Pure apart from the state it is handed: the Faust agent does the I/O around it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from streams.events import Event, Rejection, parse_event
from streams.user_state import Outcome, UserState, apply_event


@dataclass
class Parsed:
    """A batch split into valid events and rejections (with their index in it)."""

    events: list[Event] = field(default_factory=list)
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)


@dataclass
class BatchResult:
    """What a batch changed: the users whose state changed, late events, counters."""

    touched: list[str]
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
    """Fold events into ``states`` (in place); report which users changed.

    ``offsets`` are the events' source offsets (stream only), which make replays
    duplicates. Features are not computed here: readers derive them from the state
    at the instant they read (see :mod:`streams.state_store`).
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
    return BatchResult(touched=list(touched), late=late, counts=counts)
