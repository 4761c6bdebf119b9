"""The ``stale`` flag of /score, and states handed to the scoring path in memory."""

from __future__ import annotations

import pytest

from core.events import Event
from core.feature_catalog import STATE_FEATURE
from core.scoring import TIMESTAMP_SUFFIX, ScoringModels, score
from core.user_state import UserState, apply_event
from serving.schemas import ScoreResponse
from tests.support.model_bundles import tiny_bundles

AS_OF = 1_800_000_000.0
DAY = 86_400.0
LIMIT = 90 * DAY
LATENESS = 600


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    return ScoringModels.from_bundles(*tiny_bundles())


def _state(uid: str, last_event_age: float) -> UserState:
    state = UserState()
    last = AS_OF - last_event_age
    for i, (etype, ts) in enumerate(
        [
            ("product_view", last - 3 * DAY),
            ("purchase", last - DAY),
            ("page_view", last),
        ]
    ):
        event = Event.model_validate(
            {
                "event_id": f"{uid}-{i}",
                "user_id": uid,
                "event_type": etype,
                "ts": ts,
                "session_id": f"{uid}-s{i}",
                "price": 20.0 if etype == "purchase" else None,
                "quantity": 1 if etype == "purchase" else None,
            }
        )
        apply_event(state, event, LATENESS)
    return state


def _stored(states: list[UserState | None], blobs: bool = True) -> dict[str, list]:
    """Columns as the online reader returns them: the state and its write time."""
    return {
        STATE_FEATURE: [
            (s.to_bytes(with_dedupe=False) if blobs else s) if s else None
            for s in states
        ],
        STATE_FEATURE + TIMESTAMP_SUFFIX: [
            s.last_event_ts if s else None for s in states
        ],
    }


def _flags(payload: dict) -> list[bool]:
    return [row["stale"] for row in payload["scores"]]


def test_a_user_older_than_the_limit_is_stale(models: ScoringModels) -> None:
    states = [_state("old", 100 * DAY), _state("fresh", 2 * DAY), None]
    payload = score(
        ["old", "fresh", "nobody"], _stored(states), AS_OF, models, stale_after=LIMIT
    )

    assert _flags(payload) == [True, False, False]
    old, fresh, nobody = payload["scores"]
    assert old["feature_age_seconds"] == pytest.approx(100 * DAY)
    assert fresh["feature_age_seconds"] == pytest.approx(2 * DAY)
    assert nobody["cold_start"] and nobody["feature_age_seconds"] is None
    ScoreResponse.model_validate(payload)


def test_an_age_equal_to_the_limit_is_not_yet_stale(models: ScoringModels) -> None:
    states = [_state("edge", LIMIT), _state("past", LIMIT + 1.0)]
    payload = score(["edge", "past"], _stored(states), AS_OF, models, stale_after=LIMIT)
    assert _flags(payload) == [False, True]


def test_the_flag_follows_the_read_time(models: ScoringModels) -> None:
    stored = _stored([_state("u", 10 * DAY)])
    now = score(["u"], stored, AS_OF, models, stale_after=LIMIT)
    later = score(["u"], stored, AS_OF + 81 * DAY, models, stale_after=LIMIT)
    assert _flags(now) == [False]
    assert _flags(later) == [True]


def test_without_a_limit_nobody_is_stale(models: ScoringModels) -> None:
    stored = _stored([_state("ancient", 30 * 365 * DAY)])
    assert _flags(score(["ancient"], stored, AS_OF, models)) == [False]


def test_the_flag_changes_no_other_field(models: ScoringModels) -> None:
    ids = ["old", "fresh", "nobody"]
    stored = _stored([_state("old", 100 * DAY), _state("fresh", DAY), None])
    flagged = score(ids, stored, AS_OF, models, stale_after=LIMIT)
    plain = score(ids, stored, AS_OF, models)
    for with_flag, without in zip(flagged["scores"], plain["scores"], strict=True):
        assert list(with_flag)[-1] == "stale"
        assert {k: v for k, v in with_flag.items() if k != "stale"} == {
            k: v for k, v in without.items() if k != "stale"
        }


def test_states_in_memory_score_as_their_blobs(models: ScoringModels) -> None:
    ids = ["a", "b", "c"]
    states = [_state("a", 3 * DAY), None, _state("c", 200 * DAY)]
    from_blobs = score(ids, _stored(states), AS_OF, models, stale_after=LIMIT)
    from_states = score(
        ids, _stored(states, blobs=False), AS_OF, models, stale_after=LIMIT
    )
    assert from_states == from_blobs
    assert _flags(from_states) == [False, False, True]
