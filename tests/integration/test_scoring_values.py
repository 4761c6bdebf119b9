"""A user known only from the stream is scored with their own values, over HTTP.

Real components only: events produced to the local broker, the Faust worker
process folding them into the user's state in Redis, and ``bentoml serve``
answering ``POST /score``. The user was never backfilled or seeded, so there is no
history row: every history feature and age must come from the state the worker
wrote (0 where there is none), never from the population defaults.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from core.events import Event, EventType
from core.feature_catalog import PROPENSITY_FEATURES
from core.store.feast_config import feature_store
from feature_repo.apply import apply_repo
from infra import local_stack, processes
from infra.settings import Settings
from segscore.producer import produce_events
from tests.support.model_bundles import save_tiny_models
from tests.support.processes import eventually

MINUTE = 60.0
DAY = 86_400.0
REVENUE = 40.0

# Saving to the BentoML store goes through pathspec, which warns about its own API.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@dataclass
class Scoring:
    """The running worker and service, and where to send events."""

    settings: Settings
    url: str
    broker: str

    def score(self, *user_ids: str) -> dict[str, dict]:
        """``POST /score`` with every contribution explained, keyed by user."""
        response = httpx.post(
            f"{self.url}/score",
            json={"user_ids": list(user_ids), "explain": True, "top_k": 50},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return {s["user_id"]: s for s in response.json()["scores"]}


@pytest.fixture(scope="module")
def scoring(stack_settings: Settings) -> Iterator[Scoring]:
    """A worker and a service pinned to tiny models, on the session's stack."""
    settings = stack_settings
    stack = local_stack.current(settings)
    apply_repo(feature_store(settings, stack.redis_url))
    segmenter, propensity = save_tiny_models(settings)
    # Pinned, so a champion another module trained on this stack is not used,
    # and nothing here changes which model is champion.
    pins = {
        "SEGSCORE_SEGMENTER_VERSION": segmenter,
        "SEGSCORE_PROPENSITY_VERSION": propensity,
    }
    worker = processes.start_worker(settings, name="worker-scoring-values")
    port = local_stack.free_port()
    server = processes.start_server(settings, port, extra_env=pins)
    try:
        url = f"http://127.0.0.1:{port}"
        processes.wait_ready(f"{url}/readyz", server)
        yield Scoring(settings, url, stack.kafka_broker)
    finally:
        processes.stop(server)
        processes.stop(worker)


def _stream_only_events(uid: str, now: float) -> list[Event]:
    """First seen 30 minutes ago; two purchases since; last event 2 minutes ago."""
    plan = [
        (EventType.PAGE_VIEW, 30),
        (EventType.PRODUCT_VIEW, 28),
        (EventType.ADD_TO_CART, 27),
        (EventType.PURCHASE, 25),
        (EventType.PRODUCT_VIEW, 12),
        (EventType.PURCHASE, 10),
        (EventType.PAGE_VIEW, 2),
    ]
    return [
        Event(
            event_id=f"{uid}-{i}",
            user_id=uid,
            event_type=kind,
            ts=round((now - minutes * MINUTE) * 1000),  # epoch milliseconds
            session_id=f"{uid}-session",
            price=REVENUE if kind is not EventType.PAGE_VIEW else None,
            revenue=REVENUE if kind is EventType.PURCHASE else None,
        )
        for i, (kind, minutes) in enumerate(plan)
    ]


def test_stream_only_user_is_explained_with_their_real_values(
    scoring: Scoring,
) -> None:
    uid = f"stream-only-{time.time_ns()}"
    cold = f"never-seen-{time.time_ns()}"
    now = time.time()
    events = _stream_only_events(uid, now)
    assert scoring.score(uid)[uid]["cold_start"] is True
    produce_events(scoring.broker, scoring.settings.events_topic, events)

    def all_applied() -> dict[str, dict] | None:
        scores = scoring.score(uid, cold)
        values = {c["feature"]: c["value"] for c in scores[uid]["explanation"]}
        return scores if values.get("events_1h") == len(events) else None

    scores = eventually(all_applied, 90, "the worker to apply the user's events")
    user, unknown = scores[uid], scores[cold]
    read_at = time.time()
    values = {c["feature"]: c["value"] for c in user["explanation"]}

    assert user["cold_start"] is False
    # History from the state the worker wrote, not the population's medians.
    assert values["orders_90d"] == 2.0
    assert values["orders_30d"] == 2.0
    assert values["revenue_90d"] == 2 * REVENUE
    assert values["avg_order_value_90d"] == REVENUE
    # Two purchases 15 minutes apart fall on one or (across midnight) two days.
    assert values["purchase_days_90d"] in (1.0, 2.0)
    # Ages as of the read: first seen 30 minutes ago, not 90 days.
    first_seen = events[0].ts
    assert values["tenure_days"] == pytest.approx(
        (read_at - first_seen) / DAY, abs=2 * MINUTE / DAY
    )
    assert values["tenure_days"] < 1 / 24
    assert values["days_since_last_purchase"] == pytest.approx(
        (read_at - events[5].ts) / DAY, abs=2 * MINUTE / DAY
    )
    assert values["hours_since_last_event"] == pytest.approx(
        (read_at - events[-1].ts) / 3600, abs=2 * MINUTE / 3600
    )
    # Lifetime facts from the same state, the first purchase 25 minutes ago.
    assert values["orders_lifetime"] == 2.0
    assert values["revenue_lifetime"] == 2 * REVENUE
    assert values["purchase_days_lifetime"] == values["purchase_days_90d"]
    assert values["days_since_first_purchase"] == pytest.approx(
        (read_at - events[3].ts) / DAY, abs=2 * MINUTE / DAY
    )
    # Windows: all seven events, one cart add, two purchases.
    assert values["events_24h"] == len(events)
    assert values["cart_adds_24h"] == 1.0
    assert values["purchases_7d"] == 2.0
    assert values["revenue_7d"] == 2 * REVENUE
    # Nothing left out of the explanation, so nothing hides a default.
    assert len(user["explanation"]) == len(values) == len(PROPENSITY_FEATURES)

    # A user with no state and no history row is the only cold start.
    assert unknown["cold_start"] is True
    assert unknown["feature_age_seconds"] is None
