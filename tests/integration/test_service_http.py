"""The scoring service over real HTTP: real Redis, real Feast, ``bentoml serve``.

One module-scoped stack: a private redis-server, a Feast registry with the repo
applied, tiny models trained on synthetic data in the BentoML store of a temporary
home, one known user's features pushed online, and the service started with
``bentoml serve`` as a subprocess.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import redis
from sklearn.cluster import KMeans
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from infra.feast_config import apply_repo, feature_store
from infra.local_stack import Service, Stack, free_port, start_redis, stop_pid
from infra.settings import PROJECT_ROOT, Settings, get_settings
from serving.schemas import ErrorResponse, ScoreResponse, SegmentsResponse
from streams.events import Event
from streams.feature_catalog import (
    HISTORY_FEATURES,
    PROPENSITY_FEATURES,
    SEGMENTATION_FEATURES,
)
from streams.state_store import StateLayout, save_states
from streams.user_state import UserState, apply_event
from training.registry import (
    PropensityBundle,
    Segment,
    SegmenterBundle,
    save_propensity,
    save_segmenter,
)

API_KEY = "test-key-0123456789"
KNOWN_USER = "known-user-1"
TWO_HOURS = 2 * 3600.0
THREE_DAYS = 3 * 86_400.0
CALIBRATION = (0.9, 0.1)
SERVER_START_TIMEOUT = 90.0

# Saving to the BentoML store goes through pathspec, which warns about its own API.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


def save_tiny_models(settings: Settings) -> tuple[str, str]:
    """Train tiny models on synthetic data and save them with the registry."""
    rng = np.random.default_rng(7)
    n = 300
    seg_x = rng.gamma(2.0, 2.0, size=(n, len(SEGMENTATION_FEATURES)))
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("kmeans", KMeans(n_clusters=3, n_init=3, random_state=0)),
        ]
    ).fit(seg_x)
    labels = pipeline.predict(seg_x)
    segmenter = SegmenterBundle(
        pipeline=pipeline,
        features=list(SEGMENTATION_FEATURES),
        segments=[
            Segment(
                id=i,
                name=f"synthetic-{i}",
                description=f"Synthetic segment {i}",
                size=int((labels == i).sum()),
                profile={
                    f: float(seg_x[labels == i, j].mean())
                    for j, f in enumerate(SEGMENTATION_FEATURES)
                },
            )
            for i in range(3)
        ],
        defaults={
            f: float(np.median(seg_x[:, j]))
            for j, f in enumerate(SEGMENTATION_FEATURES)
        },
    )
    prop_x = rng.gamma(2.0, 2.0, size=(n, len(PROPENSITY_FEATURES)))
    logit = prop_x[:, PROPENSITY_FEATURES.index("cart_adds_24h")] - 2.0
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1},
        lgb.Dataset(prop_x, y, feature_name=list(PROPENSITY_FEATURES)),
        num_boost_round=20,
    )
    propensity = PropensityBundle(
        booster=booster,
        features=list(PROPENSITY_FEATURES),
        defaults={
            f: float(np.median(prop_x[:, j])) for j, f in enumerate(PROPENSITY_FEATURES)
        },
        calibration=CALIBRATION,
    )
    provenance = {"source": "tests/integration/test_service_http.py"}
    return (
        save_segmenter(segmenter, settings, provenance),
        save_propensity(propensity, settings, provenance),
    )


@dataclass
class LiveService:
    """What the tests talk to, and what they may stop and restart."""

    url: str
    settings: Settings
    redis: Service
    redis_port: int
    model_tags: tuple[str, str]
    log: Path


def _push_known_user(settings: Settings, redis_url: str) -> None:
    store = feature_store(settings, redis_url)
    now = pd.Timestamp.now(tz="UTC")
    # Real events folded into real state: the service derives every window from
    # the pushed state blob at request time.
    state = UserState()
    last = now.timestamp() - TWO_HOURS
    history_events = [
        ("purchase", now.timestamp() - THREE_DAYS),
        *(("add_to_cart", last - 60 * i) for i in (3, 2, 1, 0)),
    ]
    for i, (etype, ts) in enumerate(history_events):
        event = Event(
            event_id=f"known-{i}",
            user_id=KNOWN_USER,
            event_type=etype,
            ts=ts * 1000,
            revenue=10.0 if etype == "purchase" else None,
        )
        apply_event(state, event, lateness_seconds=600)
    client = redis.Redis.from_url(redis_url)
    save_states(client, StateLayout.of(store), {KNOWN_USER: state})
    client.close()
    history = {spec.name: 2.0 for spec in HISTORY_FEATURES}
    history["first_seen_ts"] = now.timestamp() - 30 * 86_400.0
    store.write_to_online_store(
        "user_history_features",
        pd.DataFrame([{"user_id": KNOWN_USER, "event_timestamp": now, **history}]),
    )


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited ({proc.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"service not ready within {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _stop_group(proc: subprocess.Popen) -> None:
    # bentoml serve runs an arbiter with worker children; they share the process
    # group we created for it, so signal that group only.
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    home = tmp_path_factory.mktemp("segscore-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGSCORE_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        # Every test here runs with authentication on; the client sends the key.
        mp.setenv("SEGSCORE_API_KEY", API_KEY)
        # The stack file written below must be what the service uses.
        mp.delenv("SEGSCORE_REDIS_URL", raising=False)
        mp.delenv("SEGSCORE_KAFKA_BROKER", raising=False)
        settings = get_settings()

        redis = start_redis(home)
        proc: subprocess.Popen | None = None
        service: LiveService | None = None
        try:
            Stack(redis.address, "127.0.0.1:1", [redis]).save(settings.stack_file)
            apply_repo(feature_store(settings, redis.address))
            tags = save_tiny_models(settings)
            _push_known_user(settings, redis.address)

            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = home / "logs" / "bentoml.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            bentoml_cli = Path(sys.executable).with_name("bentoml")
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        str(bentoml_cli),
                        "serve",
                        "serving.service:ScoringService",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    cwd=PROJECT_ROOT,
                    env=dict(os.environ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _wait_ready(url, proc, log, SERVER_START_TIMEOUT)
            redis_port = urlparse(redis.address).port
            assert redis_port is not None
            service = LiveService(url, settings, redis, redis_port, tags, log)
            yield service
        finally:
            if proc is not None:
                _stop_group(proc)
            # The Redis test may have replaced the first server with a new one.
            stop_pid(service.redis.pid if service else redis.pid)


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
    assert values["orders_90d"] == 2.0
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

    assert 400 <= response.status_code < 500, response.text
    payload = response.json()
    assert field in response.text
    assert payload["detail"][0]["loc"][0] == field
    assert "Traceback" not in response.text


def test_malformed_json_is_a_4xx(client: httpx.Client):
    response = client.post(
        "/score", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
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
        assert elapsed < 1.0
        error = ErrorResponse.model_validate(response.json())
        assert error.error == "online feature store unavailable"
        assert "Traceback" not in response.text

        started = time.monotonic()
        assert client.get("/readyz").status_code == 503
        assert time.monotonic() - started < 1.0
    finally:
        # Same port, so the service's recorded address is valid again; the data
        # was in memory only, so the known user is pushed again for later tests.
        live.redis = start_redis(live.settings.home, port=live.redis_port)
        _push_known_user(live.settings, live.redis.address)

    deadline = time.monotonic() + 10.0
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not recover from Redis"
        time.sleep(0.1)
    response = _score(client, user_ids=[KNOWN_USER])
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["cold_start"] is False


def test_redis_restart_between_requests_is_transparent(
    client: httpx.Client, live: LiveService
):
    # Pooled connections to the old server are dead; the first request after the
    # restart must reconnect instead of failing.
    assert _score(client, user_ids=[KNOWN_USER]).status_code == 200
    stop_pid(live.redis.pid)
    live.redis = start_redis(live.settings.home, port=live.redis_port)
    _push_known_user(live.settings, live.redis.address)

    response = _score(client, user_ids=[KNOWN_USER])
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["cold_start"] is False
