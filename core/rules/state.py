"""Per-user rule state: pending timers, memberships, cool-downs, repeat counts.

Kept by the stream worker with the user's dedupe data (never in Feast's feature
blob), written in the same ``HSET`` as the events that changed it, so a replayed
event -- a duplicate, not applied again -- can neither arm, cancel nor fire
anything a second time. Read by the service for a user's profile.

Bounds (why it cannot grow without limit): one timer and one membership per rule;
for a repeat rule at most :data:`MAX_REPEAT_KEYS` keys (products) per user, each
with at most the rule's ``count`` times, all within its window; the least
recently seen key is dropped first; one live-segment re-check time
(:mod:`streams.live_segments`). The outbox holds fired records until they are
produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_REPEAT_KEYS = 32


@dataclass(frozen=True)
class Timer:
    """A pending timer: fires at ``due`` (event time) unless cancelled first."""

    due: float
    armed_at: float  # event time of the event that armed it
    cause: str  # that event's id
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Membership:
    """A user is "in" a rule: since when, until when (None: until cancelled)."""

    since: float
    until: float | None = None


@dataclass
class RuleState:
    """One user's rule bookkeeping (see the module docstring for its bounds)."""

    timers: dict[str, Timer] = field(default_factory=dict)
    members: dict[str, Membership] = field(default_factory=dict)
    fired: dict[str, float] = field(default_factory=dict)  # rule -> last fire time
    repeats: dict[str, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    seq: int = 0  # records fired so far; with the user id, each record's id
    outbox: tuple[dict[str, Any], ...] = ()  # fired, not yet produced
    # When the worker next re-places the user in a live segment with no event
    # of theirs (streams.live_segments.recheck_at): a timer like the rules',
    # indexed with them, so it survives restarts and moves with rebalances.
    recheck: float | None = None

    def empty(self) -> bool:
        """Nothing worth storing with the dedupe data (the outbox is stored apart)."""
        return not (
            self.timers
            or self.members
            or self.fired
            or self.repeats
            or self.seq
            or self.recheck is not None
        )

    def next_due(self) -> float | None:
        """The earliest pending timer's (or segment re-check's) due time, or None."""
        due = self.recheck
        if self.timers:  # mostly empty: skip building a generator
            first = min(t.due for t in self.timers.values())
            if due is None or first < due:
                due = first
        return due

    def active(self, at: float) -> dict[str, Membership]:
        """Memberships that hold at ``at``."""
        return {
            rule: m
            for rule, m in self.members.items()
            if m.since <= at and (m.until is None or at < m.until)
        }

    def to_json(self) -> list[Any]:
        """A compact JSON-able form (see :meth:`from_json`)."""
        return [
            {r: [t.due, t.armed_at, t.cause, t.values] for r, t in self.timers.items()},
            {r: [m.since, m.until] for r, m in self.members.items()},
            self.fired,
            # orjson writes tuples as arrays: no per-key copies (this runs for
            # every user written, and repeats can hold 32 keys per rule).
            self.repeats,
            self.seq,
            [],  # the outbox has a field of its own (state_store.OUTBOX_FIELD)
            self.recheck,
        ]

    @classmethod
    def from_json(cls, raw: list[Any] | None) -> RuleState:
        """Inverse of :meth:`to_json`; None gives an empty state.

        An outbox in ``raw`` was written by a worker that kept it there.
        """
        if not raw:
            return cls()
        timers, members, fired, repeats, seq, outbox = raw[:6]
        return cls(
            timers={r: Timer(t[0], t[1], t[2], t[3]) for r, t in timers.items()},
            members={r: Membership(m[0], m[1]) for r, m in members.items()},
            fired={r: float(v) for r, v in fired.items()},
            repeats={
                r: {k: tuple(v) for k, v in keys.items()} for r, keys in repeats.items()
            },
            seq=int(seq),
            outbox=tuple(outbox),
            recheck=raw[6] if len(raw) > 6 else None,  # older states had none
        )
