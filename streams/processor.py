"""One micro-batch of the stream: validate, dedupe, fold into per-user state.

Pure apart from the state it is handed: :mod:`streams.worker_engine` does the I/O
around it (reads and writes of states, the DLQ), so batches can be tested without a
broker or a store.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.events import DEFAULT_MIN_TS, Event, Rejection, parse_event
from core.user_state import Outcome, UserState, apply_fields


@dataclass
class Parsed:
    """A batch split into valid events and rejections (with their index in it)."""

    events: list[Event] = field(default_factory=list)
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)

    def extend(self, more: Parsed, start: int) -> None:
        """Append ``more``, parsed from records that follow this batch's ``start``."""
        self.events += more.events
        self.rejections += [(start + i, rejection) for i, rejection in more.rejections]


@dataclass
class BatchResult:
    """What a batch changed: the users whose state changed, late events, counters."""

    touched: list[str]
    late: list[Event]
    counts: Counter[str]
    applied: list[Event] = field(default_factory=list)  # neither duplicate nor late
    # Users whose state holds live-segment changes still to produce (the worker
    # fills this in; see streams.live_segments).
    outbox: dict[str, UserState] = field(default_factory=dict)


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
_OUTCOMES = tuple(Outcome)
# Enum members as plain globals: cheaper to reach than class attributes.
_APPLIED, _LATE = Outcome.APPLIED, Outcome.LATE


def apply_batch(
    events: list[Event],
    states: dict[str, UserState],
    lateness_seconds: int,
    positions: Sequence[Position | None] | None = None,
) -> BatchResult:
    """Fold events into ``states`` (in place); report which users changed.

    ``positions`` are the events' source partitions and offsets (stream only),
    which make replays duplicates. Features are not computed here: readers derive
    them from the state at the instant they read (see :mod:`core.store.state_store`).
    """
    # Tallied per Outcome and named once at the end: ``outcome.value`` is an
    # enum property lookup, and this loop runs once per event.
    tally = dict.fromkeys(_OUTCOMES, 0)
    late: list[Event] = []
    applied: list[Event] = []
    touched: dict[str, None] = {}
    if positions is None:
        positions = [None] * len(events)
    for event, position in zip(events, positions, strict=True):
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
        tally[outcome] += 1
        if outcome is _APPLIED:
            touched[event.user_id] = None
            applied.append(event)
        elif outcome is _LATE:
            late.append(event)
    counts = Counter({outcome.value: n for outcome, n in tally.items() if n})
    return BatchResult(touched=list(touched), late=late, counts=counts, applied=applied)
