"""Segment changes from time alone: re-checks armed, indexed, fired once.

The engine runs on the in-memory fakes of :mod:`tests.support.worker_fakes` with
tiny models; the real worker, broker and Redis are in
``tests/integration/test_live_segments.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.events import iso
from core.rules.spec import parse_rules
from core.rules.state import RuleState, Timer
from core.scoring import ScoringModels, place
from core.store.state_store import encode_fields
from core.user_state import DAY, HOUR
from infra.settings import Settings
from streams.live_segments import RECHECK_AFTER, LiveSegments, recheck_at
from streams.triggers import Triggers, timers_key
from tests.support.model_bundles import tiny_bundles
from tests.support.worker_fakes import (
    CART_RULES,
    LAYOUT,
    NOW,
    EngineRig,
    FakeDlq,
    batch_of,
    event_json,
    make_rig,
)

INDEX = timers_key(("events", 0))


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    return ScoringModels.from_bundles(*tiny_bundles())


def _rig(tmp_path: Path, models: ScoringModels) -> tuple[EngineRig, FakeDlq]:
    rig = make_rig(tmp_path)
    changes = FakeDlq()
    settings = Settings(home=tmp_path)
    rig.engine.live = LiveSegments(settings, models=models)
    rig.engine.changes_topic = changes
    rig.engine.triggers = Triggers(settings, parse_rules(CART_RULES))
    rig.engine.triggers_topic = FakeDlq()
    return rig, changes


def _sit_elsewhere(rig: EngineRig, models: ScoringModels, user: str, at: float) -> int:
    """Store ``user`` in a segment other than the one they belong to at ``at``."""
    state = rig.state(user)
    truth = place([state], [at], models).segments[0]
    state.segment = next(s.id for s in models.segmenter.segments if s.id != truth)
    rig.redis.data[LAYOUT.key(user)].update(encode_fields(LAYOUT, state))
    rig.engine.cache.clear()
    return truth


def test_the_schedule_follows_the_windows_then_stops() -> None:
    last = 1_000_000.0
    assert recheck_at(last, -1.0) == last + HOUR
    assert recheck_at(last, last + HOUR) == last + DAY
    assert recheck_at(last, last + 2 * DAY) == last + 7 * DAY + HOUR
    assert recheck_at(last, last + 100 * DAY) == last + 182 * DAY
    assert recheck_at(last, last + RECHECK_AFTER[-1]) is None
    assert recheck_at(None, 0.0) is None
    # Strictly increasing: each re-check moves on.
    assert list(RECHECK_AFTER) == sorted(set(RECHECK_AFTER))


def test_a_recheck_is_the_rule_states_earliest_due_and_round_trips() -> None:
    state = RuleState(recheck=500.0)
    assert state.next_due() == 500.0 and not state.empty()
    state.timers["t"] = Timer(due=400.0, armed_at=0.0, cause="e")
    assert state.next_due() == 400.0
    state.timers["t"] = Timer(due=600.0, armed_at=0.0, cause="e")
    assert state.next_due() == 500.0
    assert RuleState.from_json(state.to_json()).recheck == 500.0
    # A state written before re-checks existed reads as having none.
    assert RuleState.from_json(state.to_json()[:6]).recheck is None


def test_time_alone_moves_a_user_once_with_the_reason(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _rig(tmp_path, models)
    last = NOW - 3 * HOUR
    rig.handle(batch_of(event_json("a1", "ann", 3 * HOUR)))
    assert rig.state("ann").rules.recheck == last + HOUR
    assert rig.redis.zsets[INDEX] == {b"ann": last + HOUR}
    truth = _sit_elsewhere(rig, models, "ann", NOW)
    sent_before = len(changes.sent)

    rig.tick()  # the partition's clock is still ann's own event: nothing due
    assert len(changes.sent) == sent_before

    # Bob's event moves the partition's clock to NOW, past ann's re-check.
    rig.handle(batch_of(event_json("b1", "bob", 0), first_offset=1))
    rig.tick()
    by_time = [v for _, v in changes.sent if v["user_id"] == "ann"][-1]
    assert by_time["cause"] == "time" and by_time["caused_by"] is None
    assert (by_time["to"], by_time["at"]) == (truth, iso(NOW))
    assert by_time["from"] != truth and by_time["top_features"]
    stored = rig.state("ann")
    assert stored.segment == truth and stored.segment_outbox == ()
    # The next re-check is the first step after the clock, and indexed.
    assert stored.rules.recheck == last + DAY
    assert rig.redis.zsets[INDEX][b"ann"] == last + DAY
    # Event-driven records say so.
    assert {v["cause"] for _, v in changes.sent if v["user_id"] == "bob"} == {"event"}

    count = len(changes.sent)
    rig.tick()
    rig.engine.cache.clear()  # as a restarted worker: only Redis carried over
    rig.tick()
    assert len(changes.sent) == count, "fired once"


def test_an_unchanged_user_gets_no_record_and_an_active_one_no_index_write(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _rig(tmp_path, models)
    rig.handle(batch_of(event_json("c1", "cid", 3 * HOUR)))
    first = rig.state("cid").rules.recheck
    # A later event of an active user leaves the pending re-check where it is.
    rig.handle(batch_of(event_json("c2", "cid", 2.5 * HOUR), first_offset=1))
    assert rig.state("cid").rules.recheck == first
    assert rig.redis.zsets[INDEX] == {b"cid": first}
    placed = rig.state("cid").segment
    expected = place([rig.state("cid")], [NOW], models).segments[0]
    sent = len(changes.sent)

    rig.handle(batch_of(event_json("d1", "dan", 0), first_offset=2))
    rig.tick()

    own = [v for _, v in changes.sent[sent:] if v["user_id"] == "cid"]
    assert bool(own) == (expected != placed)
    assert rig.state("cid").rules.recheck == NOW - 2.5 * HOUR + DAY


def test_without_live_segments_a_due_recheck_is_dropped_not_found_forever(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _rig(tmp_path, models)
    rig.handle(batch_of(event_json("e1", "eve", 3 * HOUR)))
    rig.engine.live = None  # turned off since
    rig.handle(batch_of(event_json("f1", "fay", 0), first_offset=1))
    sent = len(changes.sent)
    rig.tick()
    assert rig.state("eve").rules.recheck is None
    assert b"eve" not in rig.redis.zsets.get(INDEX, {})
    assert len(changes.sent) == sent
