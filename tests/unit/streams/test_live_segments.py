"""Live segments in the feature engine: changes recorded with the state, sent once.

The engine runs on the in-memory fakes of :mod:`tests.support.worker_fakes` with
tiny models; the real worker, broker and Redis are in
``tests/integration/test_live_segments.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from core.registry import PROPENSITY, SEGMENTER, promote
from core.scoring import ScoringModels, place
from core.store.state_store import decode_fields, encode_fields, outbox_value
from core.user_state import UserState
from infra.settings import Settings
from streams.live_segments import LiveSegments
from tests.support.model_bundles import save_tiny_models, tiny_bundles
from tests.support.worker_fakes import (
    LAYOUT,
    NOW,
    EngineRig,
    FakeDlq,
    batch_of,
    event_json,
    make_rig,
)


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    return ScoringModels.from_bundles(*tiny_bundles())


def _live_rig(tmp_path: Path, models: Any, fail: int = 0) -> tuple[EngineRig, FakeDlq]:
    rig = make_rig(tmp_path)
    changes = FakeDlq(fail)
    rig.engine.live = LiveSegments(Settings(home=tmp_path), models=models)
    rig.engine.changes_topic = changes
    return rig, changes


def _purchase(event_id: str, user: str, age_s: float) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "event_type": "purchase",
            "ts": int((NOW - age_s) * 1000),
            "revenue": 40.0,
        }
    )


def test_first_placement_is_a_change_from_nobody_and_a_replay_adds_none(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _live_rig(tmp_path, models)
    batch = batch_of(
        event_json("a1", "ann", 300),
        _purchase("a2", "ann", 200),
        event_json("b1", "bob", 100),
    )

    rig.handle(batch)

    sent = {value["user_id"]: (key, value) for key, value in changes.sent}
    assert set(sent) == {"ann", "bob"}
    key, ann = sent["ann"]
    assert key == b"ann"
    state = rig.state("ann")
    expected = place([state], [state.last_event_ts], models).segments[0]
    assert (ann["from"], ann["to"], ann["seq"]) == (None, expected, 1)
    assert ann["id"] == "ann:1" and ann["caused_by"] == "a2"
    assert ann["to_name"] == models.segment_names[expected]
    assert ann["model_version"] == models.segmenter.tag
    assert ann["top_features"] == []
    # Stored: the segment kept, the outbox empty once produced.
    assert (state.segment, state.segment_seq, state.segment_outbox) == (
        expected,
        1,
        (),
    )

    rig.handle(batch)  # the same records again: duplicates, nothing new
    assert len(changes.sent) == 2
    assert rig.engine.counts["segment_changes"] == 2


def test_a_changed_segment_names_both_ends_and_what_moved_the_user(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _live_rig(tmp_path, models)
    rig.handle(batch_of(event_json("c1", "cid", 500)))
    placed = rig.state("cid").segment
    assert placed is not None
    # Pretend the user sat in another segment; their next event places them.
    elsewhere = next(s.id for s in models.segmenter.segments if s.id != placed)
    state = rig.state("cid")
    state.segment = elsewhere
    rig.redis.data[LAYOUT.key("cid")].update(encode_fields(LAYOUT, state))
    rig.engine.cache.clear()

    rig.handle(batch_of(event_json("c2", "cid", 400), first_offset=1))

    _, change = changes.sent[-1]
    assert (change["from"], change["to"], change["seq"]) == (elsewhere, placed, 2)
    assert change["caused_by"] == "c2"
    assert change["top_features"], "a move between profiles has reasons"
    assert {"feature", "value", "from_profile", "to_profile"} == set(
        change["top_features"][0]
    )


def test_a_change_left_in_the_outbox_by_a_crash_is_sent_on_replay(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _live_rig(tmp_path, models)
    batch = batch_of(event_json("d1", "dee", 60))
    rig.handle(batch)
    record = changes.sent[0][1]
    # As if the worker died after writing the state and before producing.
    state = rig.state("dee")
    state.segment_outbox = (record,)
    rig.redis.data[LAYOUT.key("dee")].update(encode_fields(LAYOUT, state))
    rig.engine.cache.clear()
    changes.sent.clear()

    rig.handle(batch)  # the uncommitted batch comes again

    assert [value for _, value in changes.sent] == [record]
    assert rig.state("dee").segment_outbox == ()


def test_a_broker_failure_is_retried_and_the_change_still_sent_once(
    tmp_path: Path, models: ScoringModels
) -> None:
    rig, changes = _live_rig(tmp_path, models, fail=2)
    rig.handle(batch_of(event_json("e1", "eve", 60)))
    assert [value["user_id"] for _, value in changes.sent] == ["eve"]
    assert rig.sleeps, "the failed sends were retried after a pause"


class _BrokenModels:
    """Models whose segmenter fails: placement must not fail the batch."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("segmenter exploded")


def test_a_failing_segmenter_leaves_the_events_applied(tmp_path: Path) -> None:
    rig, changes = _live_rig(tmp_path, _BrokenModels())
    rig.handle(batch_of(event_json("f1", "fay", 60), event_json("f2", "fay", 30)))
    assert rig.state("fay").last_event_ts == pytest.approx(NOW - 30)
    assert changes.sent == []
    assert rig.engine.counts["segment_errors"] == 1


def test_the_live_segment_survives_the_stores_round_trip() -> None:
    state = UserState()
    state.segment, state.segment_seq = 2, 5
    state.segment_outbox = ({"id": "u:5", "to": 2},)
    assert b"u:5" not in state.dedupe_bytes(), "the outbox has a field of its own"
    back = decode_fields(None, state.dedupe_bytes(), outbox_value(state))
    assert (back.segment, back.segment_seq, back.segment_outbox) == (
        2,
        5,
        ({"id": "u:5", "to": 2},),
    )
    # A user never placed stores nothing extra.
    assert b'"g"' not in UserState().dedupe_bytes()


def test_without_models_nobody_is_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    live = LiveSegments(Settings(home=tmp_path))  # an empty model store
    assert live.models is None
    assert live.place({"u": UserState()}, ["u"], []) == 0


def test_a_promotion_is_taken_up_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    settings = Settings(home=tmp_path, model_poll_seconds=0.01)
    first = save_tiny_models(settings, seed=1)
    promote(SEGMENTER, first[0], settings)
    promote(PROPENSITY, first[1], settings)
    live = LiveSegments(settings)
    assert live.models is not None and live.models.segmenter.tag == first[0]

    second = save_tiny_models(settings, seed=2)
    promote(SEGMENTER, second[0], settings)
    promote(PROPENSITY, second[1], settings)
    time.sleep(0.02)
    assert live.due()
    live.refresh()

    assert live.models is not None and live.models.segmenter.tag == second[0]
