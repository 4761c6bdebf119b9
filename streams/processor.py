"""One micro-batch of the stream: validate, dedupe, fold into per-user state.

Pure apart from the state it is handed: the Faust agent does the I/O around it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from streams.events import DEFAULT_MIN_TS, Event, Rejection, parse_event
from streams.user_state import Outcome, UserState, apply_fields


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
    values: Sequence[bytes | None],
    *,
    now: float | None = None,
    max_future_seconds: int = 300,
    max_bytes: int = 16_384,
    min_ts: float = DEFAULT_MIN_TS,
) -> Parsed:
    """Validate every raw message of a batch (``None``: a tombstone, rejected)."""
    wall = time.time() if now is None else now
    parsed = Parsed()
    for index, value in enumerate(values):
        result = parse_event(
            value,
            now=wall,
            max_future_seconds=max_future_seconds,
            max_bytes=max_bytes,
            min_ts=min_ts,
        )
        if isinstance(result, Rejection):
            parsed.rejections.append((index, result))
        else:
            parsed.events.append(result)
    return parsed


Position = tuple[str, int]
"""Where a record was read: its source partition (``source_key``) and offset."""
_NOWHERE: tuple[str, None] = ("", None)  # no position: no offset to compare


def apply_batch(
    events: list[Event],
    states: dict[str, UserState],
    lateness_seconds: int,
    positions: Sequence[Position | None] | None = None,
) -> BatchResult:
    """Fold events into ``states`` (in place); report which users changed.

    ``positions`` are the events' source partitions and offsets (stream only),
    which make replays duplicates. Features are not computed here: readers derive
    them from the state at the instant they read (see :mod:`streams.state_store`).
    """
    counts: Counter[str] = Counter()
    late: list[Event] = []
    touched: dict[str, None] = {}
    for i, event in enumerate(events):
        position = positions[i] if positions is not None else None
        source, offset = _NOWHERE if position is None else position
        # apply_event's body, inlined: one call less per event on the hot path.
        outcome = apply_fields(
            states[event.user_id],
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
        counts[outcome.value] += 1
        if outcome is Outcome.APPLIED:
            touched[event.user_id] = None
        elif outcome is Outcome.LATE:
            late.append(event)
    return BatchResult(touched=list(touched), late=late, counts=counts)
