"""The scoring service over real HTTP: real Redis, real Feast, ``bentoml serve``.

One module-scoped stack (:func:`tests.support.live_service.running_service`): a
private redis-server, a Feast registry with the repo applied, tiny models trained
on synthetic data in the BentoML store of a temporary home, one known user's
features pushed online, and the service started with ``bentoml serve`` as a
subprocess.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from core.feature_catalog import PROPENSITY_FEATURES
from core.store.feast_config import feature_store
from core.store.state_store import MEMBERS_FIELD, StateLayout
from infra.local_stack import start_redis, stop_pid
from serving.schemas import ErrorResponse, ScoreResponse, SegmentsResponse
from tests.support.live_service import (
    API_KEY,
    KNOWN_USER,
    TWO_HOURS,
    LiveService,
    push_known_user,
    running_service,
)
from tests.support.model_bundles import TINY_CALIBRATION as CALIBRATION
from tests.support.model_bundles import save_tiny_models

JSON = "application/json"
# Saving to the BentoML store goes through pathspec, which warns about its own API.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with running_service(tmp_path_factory.mktemp("segscore-home")) as service:
        yield service


@pytest.fixture(scope="module")
def client(live: LiveService) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=live.url, timeout=10.0, headers=headers) as http:
        yield http


def test_requests_without_the_api_key_get_401(live: LiveService) -> None:
    with httpx.Client(base_url=live.url, timeout=10.0) as anonymous:
        missing = anonymous.post("/score", json={"user_ids": [KNOWN_USER]})
        wrong = anonymous.post(
            "/score", json={"user_ids": [KNOWN_USER]}, headers={"X-API-Key": "nope"}
        )
        segments = anonymous.get("/segments")
        # Probes stay open for orchestrators.
        probes = [anonymous.get(p).status_code for p in ("/healthz", "/readyz")]
    for response, reason in (
        (missing, "missing"),
        (wrong, "wrong"),
        (segments, "missing"),
    ):
        assert response.status_code == 401, response.text
        body = ErrorResponse.model_validate(response.json())
        assert body.error == "unauthorized" and reason in (body.detail or "")
        assert "X-API-Key" in response.headers["www-authenticate"]
    assert probes == [200, 200]


def _score(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/score", json=body)


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_known_user_is_scored_from_online_features(
    client: httpx.Client, live: LiveService
):
    response = _score(client, user_ids=[KNOWN_USER], top_k=3)

    assert response.status_code == 200, response.text
    body = ScoreResponse.model_validate(response.json())
    assert body.model_versions == {
        "segmenter": live.model_tags[0],
        "propensity": live.model_tags[1],
    }
    (user,) = body.scores
    assert user.user_id == KNOWN_USER
    assert user.cold_start is False
    assert len(user.explanation) == 3
    magnitudes = [abs(c.contribution) for c in user.explanation]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert user.feature_age_seconds is not None
    # Stream rows are stamped with the newest event time: two hours ago.
    assert user.feature_age_seconds == pytest.approx(TWO_HOURS, abs=60)
    assert user.segment.name == f"synthetic-{user.segment.id}"


def test_full_explanation_adds_up_and_uses_natural_units(client: httpx.Client):
    response = _score(client, user_ids=[KNOWN_USER], top_k=50)
    (user,) = ScoreResponse.model_validate(response.json()).scores
    values = {c.feature: c.value for c in user.explanation}

    assert len(user.explanation) == len(PROPENSITY_FEATURES)
    # Ages are derived at read time, in hours and days, from the pushed timestamps.
    assert values["hours_since_last_event"] == pytest.approx(2.0, abs=0.1)
    assert values["days_since_last_purchase"] == pytest.approx(3.0, abs=0.01)
    assert values["cart_adds_24h"] == 4.0
    # History is derived from the state (its one purchase), which wins over the
    # pushed history row (2.0): the row is only a stateless user's fallback.
    assert values["orders_90d"] == 1.0
    margin = user.base_value + sum(c.contribution for c in user.explanation)
    slope, intercept = CALIBRATION
    expected = 1.0 / (1.0 + math.exp(-(slope * margin + intercept)))
    assert user.propensity == pytest.approx(expected, rel=1e-6)


def test_unknown_user_is_a_cold_start_not_an_error(client: httpx.Client):
    response = _score(client, user_ids=["never-seen"], top_k=2)

    assert response.status_code == 200, response.text
    (user,) = ScoreResponse.model_validate(response.json()).scores
    assert user.cold_start is True
    assert user.feature_age_seconds is None
    assert len(user.explanation) == 2


def test_batch_keeps_request_order_and_explain_false(client: httpx.Client):
    ids = ["nobody-a", KNOWN_USER, "nobody-b", KNOWN_USER]
    response = _score(client, user_ids=ids, explain=False)

    assert response.status_code == 200, response.text
    scores = ScoreResponse.model_validate(response.json()).scores
    assert [s.user_id for s in scores] == ids
    assert [s.cold_start for s in scores] == [True, False, True, False]
    assert all(s.explanation == [] for s in scores)
    assert scores[1].propensity == scores[3].propensity


def test_segments_catalogue(client: httpx.Client, live: LiveService):
    response = client.get("/segments")

    assert response.status_code == 200, response.text
    body = SegmentsResponse.model_validate(response.json())
    assert body.model_version == live.model_tags[0]
    assert [s.id for s in body.segments] == [0, 1, 2]
    assert all(s.description and s.profile for s in body.segments)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": ["x" * 129]}, "user_ids"),
        ({"user_ids": [f"u{i}" for i in range(1001)]}, "user_ids"),
        ({"user_ids": ["u"], "top_k": 0}, "top_k"),
        ({"user_ids": ["u"], "top_k": 51}, "top_k"),
        ({"user_ids": ["u"], "top_k": "five"}, "top_k"),
        ({"user_ids": ["u"], "topk": 3}, "topk"),
        ({}, "user_ids"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    client: httpx.Client, body: dict, field: str
):
    response = client.post("/score", json=body)

    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["detail"][0]["loc"][0] == field
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"user_ids": ["x" * 129]}, ["user_ids", 0]),
        ({"user_ids": []}, ["user_ids"]),
        ({"user_ids": ["u"], "top_k": 100_000}, ["top_k"]),
        ({"user_ids": [f"u{i}" for i in range(1001)]}, ["user_ids"]),
        ({"user_ids": [f"u{i}" for i in range(995)] + [""] * 5}, ["user_ids", 995]),
    ],
)
def test_bad_fields_are_named_down_to_the_id(
    client: httpx.Client, body: dict, loc: list
) -> None:
    # Valid bodies are scored ahead of BentoML's route (serving.score_route);
    # these must still reach the request model and be named by it.
    response = client.post("/score", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_bentomls_route_still_scores_a_valid_body_it_is_given(
    client: httpx.Client,
) -> None:
    # A byte-order mark is valid to the request model but left to it by the
    # short path: one request down each path, the same answer.
    raw = b'{"user_ids": ["%s", "nobody"], "top_k": 4}' % KNOWN_USER.encode()
    short = client.post("/score", content=raw, headers={"Content-Type": JSON})
    model = client.post(
        "/score", content=b"\xef\xbb\xbf" + raw, headers={"Content-Type": JSON}
    )

    assert short.status_code == model.status_code == 200, model.text
    assert short.headers["content-type"] == model.headers["content-type"] == JSON
    assert short.headers["server"] == model.headers["server"]

    def stable(response: httpx.Response) -> object:
        body = ScoreResponse.model_validate(response.json())
        return body.model_versions, [
            (s.user_id, s.segment, s.cold_start, [c.feature for c in s.explanation])
            for s in body.scores
        ]

    assert stable(short) == stable(model)


def test_invalid_requests_are_logged_without_tracebacks(
    client: httpx.Client, live: LiveService
):
    assert client.post("/score", json={"user_ids": []}).status_code == 422
    log = live.log.read_text(errors="replace")
    assert "invalid request body on /score" in log
    # A caller's mistake is not a server error: no traceback per bad request.
    assert "ValidationError" not in log


def test_malformed_json_is_a_4xx(client: httpx.Client):
    response = client.post(
        "/score", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    # Not JSON at all is a bad request, not a schema violation.
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text


def test_redis_down_is_a_fast_503_and_service_recovers(
    client: httpx.Client, live: LiveService
):
    stop_pid(live.redis.pid)
    try:
        started = time.monotonic()
        response = _score(client, user_ids=[KNOWN_USER])
        elapsed = time.monotonic() - started

        assert response.status_code == 503, response.text
        assert elapsed < 0.1
        error = ErrorResponse.model_validate(response.json())
        assert error.error == "online feature store unavailable"
        assert "Traceback" not in response.text

        started = time.monotonic()
        assert client.get("/readyz").status_code == 503
        assert time.monotonic() - started < 0.1
    finally:
        # Same port, so the service's recorded address is valid again; the data
        # was in memory only, so the known user is pushed again for later tests.
        live.redis = start_redis(live.settings.home, port=live.redis_port)
        push_known_user(live.settings, live.redis.address)

    deadline = time.monotonic() + 10.0
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not recover from Redis"
        time.sleep(0.1)
    response = _score(client, user_ids=[KNOWN_USER])
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["cold_start"] is False


def test_a_stalled_redis_is_a_503_within_the_read_timeout_then_it_recovers(
    client: httpx.Client, live: LiveService
):
    # SIGSTOP: connections stay open and nothing answers (a hung store, not a
    # dead one). The whole read is bounded, not each reply.
    assert (
        _score(
            client, user_ids=[KNOWN_USER, *(f"other-{i}" for i in range(49))]
        ).status_code
        == 200
    )
    os.kill(live.redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = _score(
            client, user_ids=[KNOWN_USER, *(f"other-{i}" for i in range(49))]
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        limit = live.settings.online_read_timeout_seconds
        assert limit <= elapsed < limit + 2.0
        assert client.get("/readyz").status_code == 503
    finally:
        os.kill(live.redis.pid, signal.SIGCONT)
    # The timed-out connection was dropped, not pooled with replies pending:
    # the next answers are this request's own.
    for _ in range(3):
        response = _score(client, user_ids=[KNOWN_USER])
        assert response.status_code == 200, response.text
        assert response.json()["scores"][0]["user_id"] == KNOWN_USER
        assert response.json()["scores"][0]["cold_start"] is False


def test_redis_restart_between_requests_is_transparent(
    client: httpx.Client, live: LiveService
):
    # Pooled connections to the old server are dead; the first request after the
    # restart must reconnect instead of failing.
    assert _score(client, user_ids=[KNOWN_USER]).status_code == 200
    stop_pid(live.redis.pid)
    live.redis = start_redis(live.settings.home, port=live.redis_port)
    push_known_user(live.settings, live.redis.address)

    response = _score(client, user_ids=[KNOWN_USER])
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["cold_start"] is False


def test_oversized_body_is_a_413_naming_the_body(client: httpx.Client):
    # Within the id limits a body cannot get this large, so only the size check
    # can answer; it must do so before any parsing.
    body = b'{"user_ids": ["' + b"x" * 300_000 + b'"]}'
    response = client.post(
        "/score", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413, response.text
    assert "body" in ErrorResponse.model_validate(response.json()).detail


def test_online_reader_returns_what_feast_returns(live: LiveService):
    import asyncio

    import redis.asyncio as aioredis

    from core.scoring import ONLINE_FEATURES, online_columns
    from core.store.online_reader import OnlineReader, resolve_views

    store = feature_store(live.settings, live.redis.address)
    names = online_columns(ONLINE_FEATURES)
    views = resolve_views(store, names)
    refs = [f"{v.view}:{f}" for v in views for f in v.features]
    users = [KNOWN_USER, "never-seen", "ünïcødé-user"]

    async def read() -> dict[str, list]:
        client = aioredis.Redis.from_url(live.redis.address)
        try:
            reader = OnlineReader(client, StateLayout.of(store), views)
            return await reader.read_columns(users)
        finally:
            await client.aclose()

    ours = asyncio.run(read())
    theirs = store.get_online_features(refs, [{"user_id": u} for u in users]).to_dict(
        include_event_timestamps=True
    )

    for name in names:
        assert ours[name] == theirs[name], name
        # Feast's dict truncates write times to whole seconds; ours keep them.
        for mine, feast in zip(ours[name + "__ts"], theirs[name + "__ts"], strict=True):
            if mine is None:
                assert not feast
            else:
                assert abs(mine - _epoch(feast)) < 1.0
    assert ours["state"][0] and ours["orders_90d"][0] == 2.0
    assert ours["state"][1] is None and ours["orders_90d"][1] is None


def test_online_reader_reads_many_replies_and_raises_an_error_reply(
    live: LiveService,
) -> None:
    """Replies spanning many socket reads come back whole and in order; a
    WRONGTYPE reply among them raises, and the next read works."""
    import asyncio

    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from core.scoring import ONLINE_FEATURES, online_columns
    from core.store.online_reader import OnlineReader, resolve_views

    store = feature_store(live.settings, live.redis.address)
    views = resolve_views(store, online_columns(ONLINE_FEATURES))
    layout = StateLayout.of(store)
    many = [KNOWN_USER, "never-seen"] * 300

    async def read() -> tuple[list, bool, list]:
        client = aioredis.Redis.from_url(live.redis.address)
        try:
            reader = OnlineReader(client, layout, views)
            replies = await reader.fetch(many)
            await client.set(layout.key("wrong-type-user"), b"not a hash")
            try:
                await reader.fetch([KNOWN_USER, "wrong-type-user", KNOWN_USER])
                raised = False
            except ResponseError as exc:
                raised = "WRONGTYPE" in str(exc)
            return replies, raised, await reader.fetch([KNOWN_USER])
        finally:
            await client.delete(layout.key("wrong-type-user"))
            await client.aclose()

    replies, raised, after = asyncio.run(read())
    assert len(replies) == len(many)
    assert all(r == replies[0] for r in replies[::2])
    assert all(all(v is None for v in r) for r in replies[1::2])
    assert raised
    assert after == [replies[0]]


def test_online_reader_reads_other_features_only_without_the_state(
    live: LiveService,
) -> None:
    """The scoring read: state, timestamps and extra fields for everyone; the
    whole row only of a user with a history row but no state, in a second trip;
    nothing more for an unknown user."""
    import asyncio

    import redis.asyncio as aioredis

    from core.scoring import ONLINE_FEATURES, online_columns
    from core.store.online_reader import OnlineReader, resolve_views

    store = feature_store(live.settings, live.redis.address)
    views = resolve_views(store, online_columns(ONLINE_FEATURES))
    layout = StateLayout.of(store)
    members = MEMBERS_FIELD
    state_field = next(
        v.fields[v.features.index("state")] for v in views if "state" in v.features
    )
    users = [KNOWN_USER, "history-only", "never-seen"]

    async def hmgets(client: aioredis.Redis) -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_hmget", {}).get("calls", 0))

    async def read() -> tuple[list, list, int, list, int]:
        client = aioredis.Redis.from_url(live.redis.address)
        try:
            reader = OnlineReader(client, layout, views, extra_fields=[members])
            row = await client.hgetall(layout.key(KNOWN_USER))
            await client.hset(layout.key("history-only"), mapping=row)
            await client.hdel(layout.key("history-only"), state_field)
            whole = await reader.fetch(users)
            before = await hmgets(client)
            lean = await reader.fetch_preferring(users, "state")
            with_fallback = await hmgets(client) - before
            before = await hmgets(client)
            known_only = await reader.fetch_preferring(
                [KNOWN_USER, "never-seen"], "state"
            )
            return whole, lean, with_fallback, known_only, await hmgets(client) - before
        finally:
            await client.delete(layout.key("history-only"))
            await client.aclose()

    whole, lean, with_fallback, known_only, without_fallback = asyncio.run(read())
    reader = OnlineReader(None, layout, views, extra_fields=[members])  # type: ignore[arg-type]
    kept = {
        i
        for i, field in enumerate(reader.fields)
        if field in (state_field, members) or field.startswith(b"_ts:")
    }
    history = [i for i in range(len(reader.fields)) if i not in kept]
    assert history and whole[0][history[0]] is not None
    # The user with a state: everything but the other features, as a whole read.
    assert [v for i, v in enumerate(lean[0]) if i in kept] == [
        v for i, v in enumerate(whole[0]) if i in kept
    ]
    assert all(lean[0][i] is None for i in history)
    # The history-only user's whole row; the unknown user's nothing.
    assert lean[1] == whole[1] and whole[1][history[0]] is not None
    assert lean[2] == whole[2] == [None] * len(reader.fields)
    assert with_fallback == 3 + 1 and without_fallback == 2
    assert known_only == [lean[0], lean[2]]
    # Scoring decodes the same columns from either read.
    assert reader.columns(lean, only_without="state") == reader.columns(
        whole, only_without="state"
    )


def _epoch(value: object) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else float(value)  # type: ignore[union-attr, arg-type]


def test_openapi_document_describes_score(client: httpx.Client):
    response = client.get("/docs.json")

    assert response.status_code == 200
    spec = response.json()
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]
    schema = body["application/json"]["schema"]
    assert schema["title"] == "ScoreRequest"
    assert schema["properties"]["user_ids"]["maxItems"] == 1000
    assert schema["properties"]["top_k"]["maximum"] == 50


def _metric(text: str, name: str) -> float:
    """The value of one series (exact name with labels) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_count_outcomes_cold_starts_ages_and_latency(client: httpx.Client):
    before = client.get("/metrics").text
    assert _score(client, user_ids=[KNOWN_USER, "cold-1", "cold-2"]).status_code == 200
    assert _score(client, user_ids=[]).status_code == 422
    assert (
        client.post(
            "/score", json={"user_ids": ["u"]}, headers={"X-API-Key": "no"}
        ).status_code
        == 401
    )
    after = client.get("/metrics").text

    def delta(name: str) -> float:
        return _metric(after, name) - _metric(before, name)

    assert delta('segscore_score_requests_total{outcome="ok"}') == 1
    assert delta('segscore_score_requests_total{outcome="invalid"}') == 1
    assert delta('segscore_score_requests_total{outcome="unauthorized"}') == 1
    assert delta("segscore_users_scored_total") == 3
    assert delta("segscore_cold_starts_total") == 2
    # The known user's features are two hours old: in the (1 h, 6 h] bucket.
    assert delta('segscore_feature_age_seconds_bucket{le="3600.0"}') == 0
    assert delta('segscore_feature_age_seconds_bucket{le="21600.0"}') == 1
    latency = 'segscore_score_duration_seconds_count{batch="2-100",explain="true"}'
    assert delta(latency) == 1
    assert "bentoml_service_request_duration_seconds_bucket" in after


class Hammer:
    """Scores the known user back to back in a thread; records every answer."""

    def __init__(self, live: LiveService) -> None:
        self.live = live
        self.answers: list[tuple[int, dict[str, str] | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = {"X-API-Key": API_KEY}
        with httpx.Client(base_url=self.live.url, headers=headers, timeout=10) as c:
            while not self._stop.is_set():
                response = c.post("/score", json={"user_ids": [KNOWN_USER]})
                versions = (
                    response.json()["model_versions"]
                    if response.status_code == 200
                    else None
                )
                self.answers.append((response.status_code, versions))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def wait_for(self, versions: dict[str, str], timeout: float = 20.0) -> None:
        """Until an answer carries ``versions``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(v == versions for _, v in self.answers[-50:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"{versions} not served within {timeout:.0f}s")


def _versions(tags: tuple[str, str]) -> dict[str, str]:
    return {"segmenter": tags[0], "propensity": tags[1]}


def test_promotion_is_picked_up_without_failed_requests(
    client: httpx.Client, live: LiveService
):
    from core.registry import PROPENSITY, SEGMENTER, promote

    old = _score(client, user_ids=[KNOWN_USER]).json()["model_versions"]
    new = save_tiny_models(live.settings, seed=11, rounds=30)
    with Hammer(live) as hammer:
        time.sleep(0.5)  # answers from the old pair first
        promote(SEGMENTER, new[0], live.settings)
        promote(PROPENSITY, new[1], live.settings)
        hammer.wait_for(_versions(new))
        time.sleep(0.3)  # and some from the new one

    statuses = [status for status, _ in hammer.answers]
    assert statuses and set(statuses) == {200}, statuses
    served = [v for _, v in hammer.answers]
    assert served[0] == old and served[-1] == _versions(new)
    # Each answer came from one consistent pair: never old and new mixed.
    assert all(v in (old, _versions(new)) for v in served)
    segments = SegmentsResponse.model_validate(client.get("/segments").json())
    assert segments.model_version == new[0]
    live.model_tags = new


def test_broken_model_is_refused_and_the_last_good_keeps_serving(
    client: httpx.Client, live: LiveService
):
    from core.registry import PROPENSITY, load_propensity, promote, save_propensity

    good = _versions(live.model_tags)
    broken = load_propensity(live.settings, live.model_tags[1])
    # A calibration that yields NaN probabilities: loads fine, must not serve.
    broken.calibration = (float("nan"), 0.0)
    broken_tag = save_propensity(broken, live.settings, {"source": "broken"})
    before = _metric(client.get("/metrics").text, _REFUSED)

    with Hammer(live) as hammer:
        promote(PROPENSITY, broken_tag, live.settings)
        deadline = time.monotonic() + 10
        while _metric(client.get("/metrics").text, _REFUSED) == before:
            assert time.monotonic() < deadline, "the broken model was not refused"
            time.sleep(0.1)
        time.sleep(0.3)

    assert {status for status, _ in hammer.answers} == {200}
    assert all(v == good for _, v in hammer.answers)
    assert "refused" in live.log.read_text(errors="replace")

    # Rolling back to a good version is picked up like any promotion.
    promote(PROPENSITY, live.model_tags[1], live.settings)
    assert _score(client, user_ids=[KNOWN_USER]).json()["model_versions"] == good


_REFUSED = 'segscore_model_reloads_total{outcome="refused"}'


def test_non_json_body_is_a_415_naming_the_content_type(client: httpx.Client):
    # Found by schemathesis: BentoML's multipart decoder answered a multipart
    # header without a boundary with a 500.
    response = client.post(
        "/score",
        content=b'{"user_ids": ["u-1"]}',
        headers={"Content-Type": "multipart/form-data"},
    )

    assert response.status_code == 415, response.text
    assert "Content-Type" in ErrorResponse.model_validate(response.json()).detail
    charset = client.post(
        "/score",
        content=b'{"user_ids": ["u-1"]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert charset.status_code == 200, charset.text
