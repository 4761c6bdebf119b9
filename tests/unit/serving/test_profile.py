"""The profile's pure parts: memberships at an instant, live segment, query, shape."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio.connection import Connection

from core.events import Event
from core.feature_catalog import STATE_FEATURE
from core.rules.state import Membership
from core.scoring import ScoringModels, score
from core.store.online_reader import _resp
from core.store.recent_events import decode_recent, recent_command, recent_key
from core.store.state_store import decode_members, members_value
from core.user_state import UserState, apply_event
from serving import profile
from serving.schemas import (
    MAX_USER_ID_CHARS,
    ProfileQuery,
    ScoreResponse,
    UserProfile,
)
from tests.support.model_bundles import tiny_bundles

T = 1_800_000_000.0  # 2027-01-15T08:00:00Z
HOUR = 3600.0


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    return ScoringModels.from_bundles(*tiny_bundles())


def _members(**spans: tuple[float, float | None]) -> bytes:
    state = UserState()
    state.rules.members = {
        r: Membership(s, u) for r, s_u in spans.items() for s, u in [s_u]
    }
    return members_value(state)


def test_only_memberships_holding_at_the_instant_are_active():
    raw = _members(
        expired=(T - 5 * HOUR, T - HOUR),
        open_ended=(T - 2 * HOUR, None),
        bounded=(T - 3 * HOUR, T + HOUR),
        future=(T + HOUR, None),
    )

    rules = profile.active_rules(raw, T)

    # Oldest first; the expired and the not-yet-started ones are left out.
    assert [r["rule"] for r in rules] == ["bounded", "open_ended"]
    assert rules[0] == {
        "rule": "bounded",
        "since": "2027-01-15T05:00:00.000Z",
        "until": "2027-01-15T09:00:00.000Z",
    }
    assert rules[1]["until"] is None


def test_membership_bounds_are_since_inclusive_until_exclusive():
    raw = _members(r=(T, T + 10.0))

    assert profile.active_rules(raw, T - 0.001) == []
    assert [r["rule"] for r in profile.active_rules(raw, T)] == ["r"]
    assert [r["rule"] for r in profile.active_rules(raw, T + 9.999)] == ["r"]
    assert profile.active_rules(raw, T + 10.0) == []


def test_active_rules_agree_with_the_workers_own_test():
    # active_rules writes RuleState.active's test out for speed; on every
    # combination of a membership's bounds around the instant they must agree.
    offsets = (-2.0, -1.0, 0.0, 1.0, 2.0)
    spans = [(T + s, None) for s in offsets] + [
        (T + s, T + u) for s in offsets for u in offsets
    ]
    members = {f"r{i}": Membership(*span) for i, span in enumerate(spans)}
    state = UserState()
    state.rules.members = members

    for at in (T - 1.5, T - 1.0, T, T + 0.5, T + 1.0, T + 2.0):
        expected = state.rules.active(at).keys()
        found = {r["rule"] for r in profile.active_rules(members_value(state), at)}
        assert found == expected, at
        assert 0 < len(expected) < len(members), at


def test_equal_since_orders_by_rule_name():
    raw = _members(b=(T - HOUR, None), a=(T - HOUR, None), c=(T - 2 * HOUR, None))

    assert [r["rule"] for r in profile.active_rules(raw, T)] == ["c", "a", "b"]


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[1, 2]", b'"text"', b"{}"],
)
def test_absent_or_unreadable_members_field_is_no_memberships(raw: bytes | None):
    assert profile.active_rules(raw, T) == []


def test_a_damaged_entry_is_left_out_and_the_others_kept():
    raw = orjson.dumps(
        {
            "good": [T - HOUR, None],
            "short": [T - HOUR],
            "text": ["yesterday", None],
            "flag": [True, None],
            "until_text": [T - HOUR, "soon"],
            "huge": [1e300, None],  # a time no date can show
            "not_a_list": 5,
        }
    )

    assert decode_members(raw).keys() == {"good", "huge"}
    assert [r["rule"] for r in profile.active_rules(raw, 2e300)] == ["good"]


def test_members_field_round_trips_through_the_worker_encoding():
    raw = _members(a=(T, None), b=(T - 1.5, T + 2.25))

    assert decode_members(raw) == {
        "a": Membership(T, None),
        "b": Membership(T - 1.5, T + 2.25),
    }


def test_add_rules_gives_every_score_its_own_memberships():
    scores = [{"user_id": "a"}, {"user_id": "b"}, {"user_id": "c"}]
    members = [_members(x=(T - HOUR, None)), None, _members(y=(T - HOUR, T - 1))]

    profile.add_rules(scores, members, T)

    assert [[r["rule"] for r in s["rules"]] for s in scores] == [["x"], [], []]


def _placed(segment: int | None) -> bytes:
    state = UserState()
    state.segment, state.segment_seq = segment, 3
    return state.dedupe_bytes()


def test_live_segment_is_the_workers_placement_named_from_the_catalogue():
    names = {0: "browsers", 2: "buyers"}

    assert profile.live_segment(_placed(2), names) == {"id": 2, "name": "buyers"}
    # A segment the serving catalogue does not name (another model version).
    assert profile.live_segment(_placed(7), names) == {"id": 7, "name": "segment 7"}
    assert profile.live_segment(_placed(None), names) is None
    assert profile.live_segment(None, names) is None
    assert profile.live_segment(b"{broken", names) is None
    assert profile.live_segment(b'{"no": "seen"}', names) is None


def _event(i: int, ts: float) -> Event:
    return Event(
        event_id=f"e{i}", user_id="u1", event_type="product_view", ts=ts, price=1.0
    )


def test_recent_events_keep_the_list_order_and_leave_out_damaged_items():
    items = [
        _event(2, T).to_json(),
        b"\xff not json",
        b"[1]",
        _event(1, T - 60).to_json(),
    ]

    events = profile.recent_events(items)

    assert [e["event_id"] for e in events] == ["e2", "e1"]
    assert events[0]["ts"] == int(T * 1000)
    assert decode_recent([]) == []
    # A Redis error reply (a key of another type) reads as no events.
    assert profile.recent_events(Exception("WRONGTYPE")) == []


def test_recent_command_reads_the_newest_n():
    assert recent_command("u1", 5) == (b"LRANGE", recent_key("u1"), 0, 4)


def test_raw_commands_are_encoded_as_redis_py_encodes_them():
    command = (b"LRANGE", "ünï/cødé".encode(), 0, 19)

    assert _resp(command) == b"".join(Connection().pack_command(*command))


@pytest.mark.parametrize(
    ("user_id", "params", "field"),
    [
        ("", [], "user_id"),
        ("x" * (MAX_USER_ID_CHARS + 1), [], "user_id"),
        ("\ud800", [], "user_id"),
        ("u", [("events", "21")], "events"),
        ("u", [("events", "-1")], "events"),
        ("u", [("events", "5.0")], "events"),
        ("u", [("events", "")], "events"),
        ("u", [("top_k", "0")], "top_k"),
        ("u", [("top_k", "51")], "top_k"),
        ("u", [("topk", "3")], "topk"),
        ("u", [("events", "1"), ("events", "2")], "events"),
    ],
)
def test_bad_ids_and_parameters_are_named(
    user_id: str, params: list[tuple[str, str]], field: str
):
    errors = profile.parse_query(user_id, params, max_events=20)

    assert isinstance(errors, list)
    assert [e["loc"][0] for e in errors] == [field]
    assert all(e["msg"] for e in errors)


def test_a_valid_query_reads_its_numbers_and_defaults():
    query = profile.parse_query("a/b", [("events", "20"), ("top_k", "3")], 20)
    default = profile.parse_query("u", [], 20)

    assert query == ProfileQuery(user_id="a/b", events=20, top_k=3)
    assert default == ProfileQuery(user_id="u", events=None, top_k=5)


def _stored_state() -> tuple[dict[str, list], float]:
    state = UserState()
    for i, offset in enumerate((3 * HOUR, 2 * HOUR)):
        event = Event(
            event_id=f"k{i}",
            user_id="u1",
            event_type="add_to_cart",
            ts=T - offset,
            price=5.0,
        )
        apply_event(state, event, lateness_seconds=600)
    written = T - 2 * HOUR
    stored = {
        STATE_FEATURE: [state.to_bytes(with_dedupe=False)],
        STATE_FEATURE + "__ts": [written],
        "orders_90d": [None],
        "orders_90d__ts": [None],
    }
    return stored, written


def test_profile_carries_the_score_exactly_and_validates(models: ScoringModels):
    stored, written = _stored_state()
    payload = score(["u1"], stored, T, models, top_k=3, stale_after=1e9)
    (entry,) = payload["scores"]
    rules = profile.active_rules(_members(vip=(T - HOUR, None)), T)
    events = [orjson.loads(_event(1, T - 2 * HOUR).to_json())]
    ages = profile.feature_ages_by_name(stored, (STATE_FEATURE, "orders_90d"), T)

    body = profile.profile_payload(
        "u1",
        entry,
        payload["model_versions"],
        T,
        rules=rules,
        live={"id": 1, "name": "segment-1"},
        events=events,
        ages=ages,
    )

    parsed = UserProfile.model_validate(body)
    assert set(body) == set(UserProfile.model_fields)
    assert parsed.as_of == "2027-01-15T08:00:00.000Z"
    for name in ("segment", "propensity", "base_value", "explanation", "stale"):
        assert body[name] == entry[name], name
    assert parsed.cold_start is False and len(parsed.explanation) == 3
    assert ages == {STATE_FEATURE: 2 * HOUR, "orders_90d": None}
    assert parsed.feature_age_seconds == pytest.approx(T - written)
    assert [r.rule for r in parsed.rules] == ["vip"]
    assert parsed.recent_events[0].event_id == "e1"
    assert parsed.live_segment is not None and parsed.live_segment.id == 1


def test_scores_with_rules_still_match_the_score_schema(models: ScoringModels):
    stored, _ = _stored_state()
    payload = score(["u1"], stored, T, models)
    profile.add_rules(payload["scores"], [_members(vip=(T - HOUR, None))], T)

    (parsed,) = ScoreResponse.model_validate(payload).scores

    assert [(r.rule, r.until) for r in parsed.rules] == [("vip", None)]
