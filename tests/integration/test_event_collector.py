"""POST /events on the real service, producing to a real tansu broker.

What a site without a Kafka client relies on: an accepted event is in the topic
before the 202, a bad one is refused with its field named and nothing of its batch
is produced, the write-only key cannot read scores, and a broker outage is a fast
503 from which the collector recovers by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from core.events import Event, parse_event
from infra.local_stack import Service, start_tansu, stop_pid
from infra.topics import ensure_topics
from segscore.producer import read_topic
from tests.support.live_service import API_KEY, LiveService, running_service

WRITE_KEY = "site-write-key-42"
PRODUCE_TIMEOUT = 2.0

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@dataclass
class Collector:
    service: LiveService
    brokers: list[Service]  # the latest is running; a test restarts it
    port: int

    @property
    def broker(self) -> Service:
        return self.brokers[-1]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    broker_home = tmp_path_factory.mktemp("collector-broker")
    (broker_home / "logs").mkdir()
    broker = start_tansu(broker_home)
    env = {
        "SEGSCORE_KAFKA_BROKER": broker.address,
        "SEGSCORE_COLLECTOR_KEY": WRITE_KEY,
        "SEGSCORE_COLLECTOR_PRODUCE_TIMEOUT_SECONDS": str(PRODUCE_TIMEOUT),
        "SEGSCORE_SERVE_WORKERS": "1",
    }
    brokers = [broker]
    try:
        with running_service(tmp_path_factory.mktemp("segscore-home"), env) as live:
            ensure_topics(broker.address, live.settings)
            port = int(broker.address.rsplit(":", 1)[1])
            yield Collector(live, brokers, port)
    finally:
        for started in brokers:
            stop_pid(started.pid)


def _event(i: int, **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": f"col-{i}",
        "user_id": f"site-user-{i % 3}",
        "event_type": "add_to_cart",
        "ts": round((time.time() - 30) * 1000),
        "product_id": f"p{i}",
        "price": 9.5,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def _post(
    c: Collector, body: Any, key: str | None = WRITE_KEY, path: str = "/events"
) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(
        f"{c.service.url}{path}",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
        timeout=30.0,
    )


def _topic(c: Collector, expect: int, timeout: float = 20.0) -> list[Event]:
    records = read_topic(
        c.broker.address, c.service.settings.events_topic, expect, timeout
    )
    events = []
    for key, value in records:
        event = parse_event(value)
        assert isinstance(event, Event), value
        assert key == event.user_id.encode()
        events.append(event)
    return events


def test_accepted_events_are_in_the_topic_when_answered(collector: Collector) -> None:
    single = _post(collector, _event(1))
    batch = _post(collector, {"events": [_event(2), _event(3)]}, key=API_KEY)
    listed = _post(collector, [_event(4, event_type="purchase", revenue=19.0)])

    assert (single.status_code, single.json()) == (202, {"accepted": 1})
    assert (batch.status_code, batch.json()) == (202, {"accepted": 2})
    assert listed.status_code == 202
    # No wait after the 202s: acks=all means the records are already there.
    events = {e.event_id: e for e in _topic(collector, 4, timeout=10.0)}
    assert set(events) == {"col-1", "col-2", "col-3", "col-4"}
    assert events["col-4"].revenue == 19.0
    assert events["col-1"].price == 9.5


def test_one_bad_event_refuses_its_batch_naming_each_field(
    collector: Collector,
) -> None:
    before = len(_topic(collector, 4))
    answer = _post(
        collector,
        [
            _event(10),
            _event(11, price=-3),
            _event(12, user_id=None),
            _event(13, event_type="hover"),
        ],
    )

    assert answer.status_code == 422
    body = answer.json()
    assert body["detail"].startswith("events[1].price")
    assert [e["field"] for e in body["errors"]] == [
        "events[1].price",
        "events[2].user_id",
        "events[3].event_type",
    ]
    # A marker after the refused batch: once it is read, the batch's good event
    # would have been too.
    assert _post(collector, _event(14)).status_code == 202
    ids = [e.event_id for e in _topic(collector, before + 1)]
    assert "col-14" in ids and "col-10" not in ids


def test_keys_media_type_and_size(collector: Collector) -> None:
    assert _post(collector, _event(20), key=None).status_code == 401
    assert _post(collector, _event(20), key="guess").status_code == 401
    # The write-only key a site embeds cannot read scores.
    denied = _post(collector, {"user_ids": ["u"]}, key=WRITE_KEY, path="/score")
    assert denied.status_code == 401
    plain = httpx.post(
        f"{collector.service.url}/events",
        content=b"user=1",
        headers={"Content-Type": "text/plain", "X-API-Key": WRITE_KEY},
    )
    assert plain.status_code == 415
    too_many = _post(collector, [_event(i) for i in range(1001)])
    assert too_many.status_code == 413
    assert too_many.json()["detail"].startswith("events")


def test_a_broker_outage_is_a_fast_503_then_it_recovers(collector: Collector) -> None:
    stop_pid(collector.broker.pid)
    started = time.monotonic()
    answer = _post(collector, _event(30))
    took = time.monotonic() - started

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert "event ids" in answer.json()["detail"]
    assert took < PRODUCE_TIMEOUT + 2.0

    home = collector.service.settings.home
    collector.brokers.append(start_tansu(home, port=collector.port))
    ensure_topics(collector.broker.address, collector.service.settings)
    deadline = time.monotonic() + 30.0
    status = 0
    while time.monotonic() < deadline and status != 202:
        status = _post(collector, _event(30)).status_code
        time.sleep(0.2)
    assert status == 202
    # Attempts that timed out may have landed too; the worker drops such replays.
    assert {e.event_id for e in _topic(collector, 1)} == {"col-30"}
