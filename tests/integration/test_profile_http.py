"""``GET /users/{user_id}`` and /score's rules over HTTP: real Redis, bentoml serve.

The worker's side is written straight into Redis with its own functions
(:func:`core.store.state_store.save_states` for the state, the live segment and the
memberships field; :func:`core.store.recent_events.stage_recent` for the last
events), so these tests hold the service to the contract the worker writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
import redis

from core.events import Event
from core.rules.state import Membership
from core.store.feast_config import feature_store
from core.store.recent_events import read_recent_async, stage_recent
from core.store.state_store import StateLayout, save_states
from core.user_state import UserState, apply_event
from infra.local_stack import start_redis, stop_pid
from serving.schemas import ErrorResponse, ScoreResponse, SegmentsResponse, UserProfile
from tests.support.live_service import (
    API_KEY,
    KNOWN_USER,
    LiveService,
    push_known_user,
    running_service,
)

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")

KEPT = 5  # SEGSCORE_PROFILE_RECENT_EVENTS for this service
COLLECTOR_KEY = "collector-only-key-42"
USER = "profile-user-1"
SLASHED_USER = "team/a b"  # a "/" and a space: sent percent-encoded
STAGED = 8  # events in the user's list, more than the service may return
HOUR = 3600.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    env = {
        "SEGSCORE_PROFILE_RECENT_EVENTS": str(KEPT),
        "SEGSCORE_COLLECTOR_KEY": COLLECTOR_KEY,
    }
    with running_service(tmp_path_factory.mktemp("profile-home"), env) as service:
        write_profiles(service)
        yield service


@pytest.fixture(scope="module")
def client(live: LiveService) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=live.url, timeout=10.0, headers={"X-API-Key": API_KEY}
    ) as http:
        yield http


def _events(user: str, now: float) -> list[Event]:
    """STAGED product views, one a minute, the newest two hours ago (oldest first)."""
    newest = now - 2 * HOUR
    return [
        Event(
            event_id=f"{user}-e{i}",
            user_id=user,
            event_type="product_view",
            ts=newest - 60.0 * (STAGED - 1 - i),
            product_id=f"p{i}",
        )
        for i in range(STAGED)
    ]


def write_profiles(live: LiveService) -> None:
    """What the worker would have written for USER and SLASHED_USER."""
    now = time.time()
    states = {}
    events = []
    for user in (USER, SLASHED_USER):
        state = UserState()
        for event in _events(user, now):
            apply_event(state, event, lateness_seconds=600)
            events.append(event)
        state.segment, state.segment_seq = 1, 1
        state.rules.members = {
            "cart_abandoner": Membership(now - 3 * HOUR, now - HOUR),  # expired
            "vip": Membership(now - 2 * HOUR, None),  # open-ended, active
            "browsing_spree": Membership(now - HOUR, now + HOUR),  # active
            "later": Membership(now + HOUR, None),  # not yet
        }
        states[user] = state
    client = redis.Redis.from_url(live.redis.address)
    try:
        layout = StateLayout.of(feature_store(live.settings, live.redis.address))
        save_states(client, layout, states)
        pipe = client.pipeline(transaction=False)
        # The worker would trim to its own setting; kept longer here so the
        # service's own bound is what limits the answer.
        stage_recent(pipe.pipeline_execute_command, events, keep=STAGED)
        pipe.execute()
    finally:
        client.close()


def _profile(client: httpx.Client, user: str, **params: object) -> httpx.Response:
    return client.get(f"/users/{quote(user, safe='')}", params=params)


def test_profile_shows_active_rules_live_segment_and_last_events(
    client: httpx.Client,
):
    response = _profile(client, USER)

    assert response.status_code == 200, response.text
    body = UserProfile.model_validate(response.json())
    assert body.user_id == USER and body.cold_start is False
    # Oldest first; the expired and the future memberships are left out.
    assert [(r.rule, r.until is None) for r in body.rules] == [
        ("vip", True),
        ("browsing_spree", False),
    ]
    assert body.rules[0].since.endswith("Z")
    # Newest first, bounded by the setting although the list holds more.
    assert [e.event_id for e in body.recent_events] == [
        f"{USER}-e{i}" for i in range(STAGED - 1, STAGED - 1 - KEPT, -1)
    ]
    assert body.recent_events[0].ts > body.recent_events[1].ts
    assert body.recent_events[0].model_extra == {"product_id": f"p{STAGED - 1}"}
    segments = SegmentsResponse.model_validate(client.get("/segments").json())
    names = {s.id: s.name for s in segments.segments}
    assert body.live_segment is not None
    assert (body.live_segment.id, body.live_segment.name) == (1, names[1])
    # The state was written as of the newest event, two hours ago.
    assert body.feature_ages["state"] == pytest.approx(2 * HOUR, abs=60)
    assert body.feature_age_seconds == body.feature_ages["state"]
    assert len(body.explanation) == 5


def test_profile_score_is_what_score_answers_with_the_same_rules(
    client: httpx.Client,
):
    profile = UserProfile.model_validate(_profile(client, USER, top_k=3).json())
    response = client.post("/score", json={"user_ids": [USER, "nobody"], "top_k": 3})

    assert response.status_code == 200, response.text
    scored, nobody = ScoreResponse.model_validate(response.json()).scores
    assert scored.segment == profile.segment
    assert scored.propensity == pytest.approx(profile.propensity, abs=1e-6)
    assert [c.feature for c in scored.explanation] == [
        c.feature for c in profile.explanation
    ]
    assert [r.rule for r in scored.rules] == ["vip", "browsing_spree"]
    assert scored.rules == profile.rules
    assert nobody.rules == [] and nobody.cold_start is True
    assert profile.model_versions == response.json()["model_versions"]


def test_events_parameter_bounds_the_list(client: httpx.Client):
    two = UserProfile.model_validate(_profile(client, USER, events=2).json())
    none = UserProfile.model_validate(_profile(client, USER, events=0).json())

    assert [e.event_id for e in two.recent_events] == [
        f"{USER}-e{STAGED - 1}",
        f"{USER}-e{STAGED - 2}",
    ]
    assert none.recent_events == []
    assert [r.rule for r in none.rules] == ["vip", "browsing_spree"]


def test_async_recent_reader_reads_the_list_newest_first(live: LiveService):
    import asyncio

    import redis.asyncio as aioredis

    async def read() -> tuple[list[dict], list[dict]]:
        client = aioredis.Redis.from_url(live.redis.address)
        try:
            return (
                await read_recent_async(client, USER, 3),
                await read_recent_async(client, USER, 0),
            )
        finally:
            await client.aclose()

    three, none = asyncio.run(read())

    assert [e["event_id"] for e in three] == [
        f"{USER}-e{i}" for i in (STAGED - 1, STAGED - 2, STAGED - 3)
    ]
    assert none == []


def test_an_id_with_a_slash_is_reachable_percent_encoded(client: httpx.Client):
    response = _profile(client, SLASHED_USER, events=1)

    assert response.status_code == 200, response.text
    body = UserProfile.model_validate(response.json())
    assert body.user_id == SLASHED_USER and body.cold_start is False
    assert [e.event_id for e in body.recent_events] == [f"{SLASHED_USER}-e{STAGED - 1}"]


def test_unknown_user_is_a_cold_start_not_a_404(client: httpx.Client):
    response = _profile(client, "never-seen-user")

    assert response.status_code == 200, response.text
    body = UserProfile.model_validate(response.json())
    assert body.cold_start is True and body.stale is False
    assert body.rules == [] and body.recent_events == []
    assert body.live_segment is None and body.feature_age_seconds is None
    assert set(body.feature_ages.values()) == {None}


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/users/" + "x" * 129, {}, "user_id"),
        ("/users/", {}, "user_id"),
        (f"/users/{USER}", {"events": KEPT + 1}, "events"),
        (f"/users/{USER}", {"events": "two"}, "events"),
        (f"/users/{USER}", {"top_k": 0}, "top_k"),
        (f"/users/{USER}", {"topk": 3}, "topk"),
    ],
)
def test_bad_id_or_parameter_is_a_422_naming_it(
    client: httpx.Client, path: str, params: dict, field: str
):
    response = client.get(path, params=params)

    assert response.status_code == 422, response.text
    assert [e["loc"][0] for e in response.json()["detail"]] == [field]
    assert "Traceback" not in response.text


def test_profile_needs_the_api_key_and_refuses_the_collector_key(live: LiveService):
    with httpx.Client(base_url=live.url, timeout=10.0) as anonymous:
        missing = anonymous.get(f"/users/{USER}")
        collector = anonymous.get(
            f"/users/{USER}", headers={"X-API-Key": COLLECTOR_KEY}
        )
        right = anonymous.get(f"/users/{USER}", headers={"X-API-Key": API_KEY})

    for response, reason in ((missing, "missing"), (collector, "wrong")):
        assert response.status_code == 401, response.text
        assert reason in (ErrorResponse.model_validate(response.json()).detail or "")
        assert USER not in response.text
    assert right.status_code == 200


def test_openapi_document_describes_the_profile(client: httpx.Client):
    spec = client.get("/docs.json").json()

    operation = spec["paths"]["/users/{user_id}"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["user_id"]["in"] == "path"
    assert params["user_id"]["schema"]["maxLength"] == 128
    assert params["events"]["schema"]["maximum"] == 1000
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/UserProfile")
    schemas = spec["components"]["schemas"]
    assert "recent_events" in schemas["UserProfile"]["properties"]
    assert "rules" in schemas["UserScore"]["properties"]


def test_redis_down_is_a_fast_503_for_the_profile(
    client: httpx.Client, live: LiveService
):
    stop_pid(live.redis.pid)
    try:
        started = time.monotonic()
        response = _profile(client, USER)
        elapsed = time.monotonic() - started

        assert response.status_code == 503, response.text
        assert elapsed < 0.1
        assert response.headers["retry-after"] == "1"
        error = ErrorResponse.model_validate(response.json())
        assert error.error == "online feature store unavailable"
    finally:
        live.redis = start_redis(live.settings.home, port=live.redis_port)
        push_known_user(live.settings, live.redis.address)
        write_profiles(live)

    deadline = time.monotonic() + 10.0
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not recover from Redis"
        time.sleep(0.1)
    response = _profile(client, USER)
    assert response.status_code == 200, response.text
    assert UserProfile.model_validate(response.json()).rules
    known = UserProfile.model_validate(_profile(client, KNOWN_USER).json())
    assert known.cold_start is False and known.rules == []


def test_profile_requests_are_one_series_not_one_per_user(client: httpx.Client):
    user = "metrics-probe-user-7"
    assert _profile(client, user).status_code == 200
    assert client.get(f"/users/{user}", params={"top_k": 0}).status_code == 422
    text = client.get("/metrics").text

    # BentoML labels its request series with the path: the route's template, not
    # the id (unbounded series, and ids that `forget` could not erase).
    assert user not in text
    profile_lines = [ln for ln in text.splitlines() if 'endpoint="/users/' in ln]
    assert profile_lines
    assert all('endpoint="/users/{user_id}"' in ln for ln in profile_lines)
    total = 'bentoml_service_request_total{endpoint="/users/{user_id}",'
    assert any(ln.startswith(total) and 'code="422"' in ln for ln in profile_lines)
