"""Live segments: the worker places each touched user, and says when that changes.

After a batch is folded into the states, every user it touched is placed by the
champion segmenter as of their latest event (:func:`core.scoring.place`, the
assignment ``/score`` makes), and a user whose segment differs from the one kept
in their state gets a change record:

``{"id": "<user>:<seq>", "user_id", "seq", "from", "from_name", "to", "to_name",
"at", "caused_by", "cause", "model_version", "top_features"}``

``seq`` counts the user's changes; ``at`` is the causing event's time (ISO-8601)
and ``caused_by`` its ``event_id`` (``cause`` is ``"event"``); ``from`` is null
the first time a user is placed. ``top_features``
(:func:`core.scoring.change_reasons`) names what moved them. The record is
written into the state (its outbox) in the same ``HSET`` as the events that
caused it, then produced to the ``segment-changes`` topic keyed by user, then
cleared (:mod:`streams.outbox`). So a change is never lost: a crash before the
produce leaves it in the outbox, and the replay of the batch (whose events are
recognised as duplicates and change nothing) sends it. A crash after the produce
and before the clear sends it again with the same ``id``. A replayed event never
makes a change of its own, because it is not applied twice.

Time alone moves users too: windows empty and ages grow while a user is away, so
a buyer can drift into a lapsed segment with no event at all. Each placed user has
a re-check (:func:`recheck_at`): an hour, a day, a week, a month, three months,
half a year and a year after their latest event, as the windows the segmenter
reads empty and ages grow. It is a timer like the rules' (kept in the rule state,
indexed with them in Redis, fired by the partition's owner once its clock passes
it, see :mod:`streams.triggers`), so it survives restarts, moves with rebalances
and fires once. At the re-check the user is placed as of that instant, as
``/score`` would place them then; a change gets a record with ``cause``
``"time"``, ``at`` the re-check's time and ``caused_by`` null. A move between two
re-checks shows at the next one.

The models are the ones the scoring service follows (:mod:`core.model_manager`):
pinned versions or the champions, reloaded on promotion without a restart. Until
a pair is trained, nobody is placed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.events import Event, iso
from core.model_manager import ModelManager, ModelRefused
from core.scoring import (
    ONLINE_FEATURES,
    Placements,
    ScoringModels,
    change_reasons,
    place,
)
from core.user_state import DAY, HOUR, UserState
from infra.settings import Settings

if TYPE_CHECKING:
    from streams.processor import BatchResult

log = logging.getLogger(__name__)

# Re-checks after a user's latest event: past the last bucket of the 1h, 24h and
# 7d windows (hour buckets: the latest one stays up to an hour past the window),
# of the 30d and 90d ones (day buckets), then ages only.
RECHECK_AFTER: tuple[float, ...] = (
    HOUR,
    DAY,
    7 * DAY + HOUR,
    31 * DAY,
    91 * DAY,
    182 * DAY,
    365 * DAY,
)


def recheck_at(last_event_ts: float | None, after: float) -> float | None:
    """The first re-check of a user last seen at ``last_event_ts`` later than ``after``.

    None once the year of re-checks has passed (or for a user with no event).
    """
    if last_event_ts is None:
        return None
    for offset in RECHECK_AFTER:
        due = last_event_ts + offset
        if due > after:
            return due
    return None


@dataclass(frozen=True)
class LastPlacement:
    """Who a batch placed (in row order), how, and with which models."""

    users: list[str]
    placed: Placements
    models: ScoringModels


class LiveSegments:
    """Holds the serving models for the worker and places users with them."""

    def __init__(self, settings: Settings, models: ScoringModels | None = None) -> None:
        self.settings = settings
        self._fixed = models
        self._manager: ModelManager | None = None
        self._next_check = 0.0
        self._waiting = False
        # The latest batch's placement: its feature columns and propensity inputs
        # serve the batch's rules too (streams.triggers), computed once.
        self.last: LastPlacement | None = None
        if models is None:
            self.refresh()

    @property
    def models(self) -> ScoringModels | None:
        """The pair in use, or None before any is trained."""
        if self._fixed is not None:
            return self._fixed
        return self._manager.current if self._manager is not None else None

    def refresh(self) -> None:
        """Load a first pair, or follow a promotion (blocking: reads the store)."""
        self._next_check = time.monotonic() + self.settings.model_poll_seconds
        if self._fixed is not None:
            return
        if self._manager is not None:
            self._manager.check()
            return
        try:
            # LightGBM's own predictor: the worker scores whole batches, where
            # it is several times faster than the lean replay (the activation
            # bench's trigger p99 went from ~1.3 s to 4-5 s with it).
            self._manager = ModelManager(
                self.settings, allowed=ONLINE_FEATURES, lean=False
            )
        except ModelRefused as exc:
            if not self._waiting:  # once, not at every poll
                log.info("live segments off until a model pair loads: %s", exc)
                self._waiting = True
            return
        log.info("live segments by %s", self._manager.current.segmenter.tag)

    def place_batch(
        self, events: list[Event], states: dict[str, UserState], result: BatchResult
    ) -> bool:
        """:meth:`place` the users a batch touched; False if the models failed.

        Never raises: the events are applied either way, and a model problem must
        not turn them into poison (the users are placed again on their next
        event). A duplicate event in the batch may be taken as a cause; it has the
        id and time it had when first applied.
        """
        late = {id(e) for e in result.late}
        self.last = None
        try:
            self.place(states, result.touched, (e for e in events if id(e) not in late))
        except Exception:
            log.exception("placing users in live segments failed; batch kept")
            return False
        return True

    def due(self) -> bool:
        """Whether :meth:`refresh` should run (once per model poll interval)."""
        return self._fixed is None and time.monotonic() >= self._next_check

    def place(
        self,
        states: dict[str, UserState],
        users: list[str],
        applied: Iterable[Event],
    ) -> int:
        """Place ``users``; a changed segment goes into the state's outbox.

        Args:
            states: The batch's states, after its events were applied.
            users: The users whose state the batch changed.
            applied: The events applied; each user's latest is the cause.

        Returns:
            How many changes were recorded.
        """
        models = self.models
        if models is None or not users:
            return 0
        causes: dict[str, Event] = {}
        for event in applied:
            cause = causes.get(event.user_id)
            if cause is None or event.ts >= cause.ts:
                causes[event.user_id] = event
        users = [u for u in users if u in causes]
        chosen = [states[u] for u in users]
        instants = [
            s.last_event_ts or causes[u].ts for u, s in zip(users, chosen, strict=True)
        ]
        placed = place(chosen, instants, models)
        self.last = LastPlacement(users, placed, models)
        changes = 0
        for row, (user, state, segment) in enumerate(
            zip(users, chosen, placed.segments, strict=True)
        ):
            if state.segment == segment:
                continue
            cause = causes[user]
            _change(user, state, segment, models, placed, row, cause.ts, cause.event_id)
            changes += 1
        return changes


def recheck(
    states: dict[str, UserState],
    clocks: dict[str, float],
    models: ScoringModels | None,
) -> list[str]:
    """Re-place the users of ``states`` whose re-check is due by their clock.

    Args:
        states: Loaded states (changed in place).
        clocks: Each user's partition clock (event time).
        models: The live pair; None (live segments off, or no pair trained)
            drops the due re-checks, to be armed again on the user's next
            placement, rather than leave them due and found at every tick.

    Returns:
        The users whose state changed: a re-check moved on or was dropped, and
        perhaps a change record went into the outbox.
    """
    due = [
        u
        for u, s in states.items()
        if s.rules.recheck is not None and s.rules.recheck <= clocks[u]
    ]
    if due and models is not None:
        chosen = [states[u] for u in due]
        # Never before their latest event: "as of" an earlier instant would
        # not see it (a clock held back to the wall by a future-stamped event).
        instants = [
            max(clocks[u], s.last_event_ts or 0.0)
            for u, s in zip(due, chosen, strict=True)
        ]
        placed = place(chosen, instants, models)
        rows = zip(due, chosen, instants, strict=True)
        for row, (user, state, at) in enumerate(rows):
            segment = placed.segments[row]
            if state.segment != segment:
                _change(user, state, segment, models, placed, row, at, None)
    for user in due:
        state = states[user]
        state.rules.recheck = (
            recheck_at(state.last_event_ts, clocks[user])
            if models is not None
            else None
        )
    return due


def _change(
    user: str,
    state: UserState,
    segment: int,
    models: ScoringModels,
    placed: Placements,
    row: int,
    at: float,
    caused_by: str | None,
) -> None:
    """Record ``user``'s move to ``segment`` in their outbox (``caused_by`` None:
    time alone moved them)."""
    reasons = (
        change_reasons(models, placed.inputs[row], state.segment, segment)
        if state.segment is not None
        else []
    )
    state.segment_seq += 1
    state.segment_outbox += (
        _record(user, state, segment, at, caused_by, models, reasons),
    )
    state.segment = segment


def _record(
    user: str,
    state: UserState,
    segment: int,
    at: float,
    caused_by: str | None,
    models: ScoringModels,
    reasons: list[dict[str, Any]],
) -> dict[str, Any]:
    names = models.segment_names
    old = state.segment
    return {
        "id": f"{user}:{state.segment_seq}",
        "user_id": user,
        "seq": state.segment_seq,
        "from": old,
        "from_name": None if old is None else names.get(old, f"segment {old}"),
        "to": segment,
        "to_name": names.get(segment, f"segment {segment}"),
        "at": iso(at),
        "caused_by": caused_by,
        "cause": "event" if caused_by is not None else "time",
        "model_version": models.segmenter.tag,
        "top_features": reasons,
    }
