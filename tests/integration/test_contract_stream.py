"""The event contract's limits on the real broker, Redis and worker process.

Events come from librdkafka (confluent-kafka), a producer this project did not
write, as a new user's site backend would send them. One worker serves the whole
module on its own topics, consumer group and Redis database of the test stack:

- finding 3: purchases of revenue 1e308 are dead-lettered as ``invalid:revenue``,
  the user's later events are applied, and the stored state stays finite;
- finding 4: ``ts`` 1700000000 (epoch seconds) lands at 2023-11-14, the same
  instant as 1700000000000 (ms); year 1, -1e14 and -1e22 are dead-lettered as
  ``too_old`` and the events after them are applied (the stream goes on).
"""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis
from confluent_kafka import Producer

from core.feature_math import history_values, stream_values
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, load_states
from core.user_state import UserState
from infra import local_stack, processes
from infra.settings import Settings
from infra.topics import ensure_topics
from segscore.producer import read_topic
from tests.support.processes import eventually

pytestmark = pytest.mark.timeout(300)

CONTRACT_DB = 11  # a Redis database of the shared test stack no other test uses
SECONDS_TS = 1_700_000_000  # 2023-11-14T22:13:20Z
TOO_OLD = ["0001-01-01T00:00:00+00:00", -1e14, -1e22]


@dataclass
class Contract:
    """The worker's lane, what was produced to it, and how to read the results."""

    settings: Settings
    broker: str
    worker: subprocess.Popen
    run: str  # makes this run's ids unique
    now: float

    def uid(self, name: str) -> str:
        return f"{self.run}-{name}"

    def state(self, name: str) -> UserState | None:
        """The user's state as the worker stored it (None until it has one)."""
        client = redis.Redis.from_url(self.redis_url)
        layout = StateLayout.of(feature_store(self.settings, self.redis_url))
        uid = self.uid(name)
        state = load_states(client, layout, [uid])[uid]
        return state if state.last_event_ts is not None else None

    def applied(self, name: str, event_ids: set[str]) -> UserState:
        """Wait until every one of ``event_ids`` is in the user's state."""

        def check() -> UserState | None:
            assert self.worker.poll() is None, "the worker exited"
            state = self.state(name)
            if state is None or not event_ids <= state.seen.keys():
                return None
            return state

        return eventually(check, 90, f"{sorted(event_ids)} applied for {name}")

    def dead_letters(self, expect: int) -> list[dict[str, Any]]:
        """This run's DLQ records, once there are at least ``expect``."""

        def check() -> list[dict[str, Any]] | None:
            records = read_topic(self.broker, self.settings.dlq_topic, 10_000, 2)
            letters = [orjson.loads(value) for _, value in records]
            mine = [r for r in letters if self.run in r["raw"]]
            return mine if len(mine) >= expect else None

        return eventually(check, 90, f"{expect} DLQ records")

    @property
    def redis_url(self) -> str:
        assert self.settings.redis_url
        return self.settings.redis_url


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _event(uid: str, event_id: str, ts: object, etype: str, **extra: object) -> bytes:
    body = {"event_id": event_id, "user_id": uid, "event_type": etype, "ts": ts}
    return orjson.dumps({**body, **extra})


def _records(contract: Contract) -> list[tuple[str, bytes]]:
    """Every record of the module, in produce order, keyed by user id."""
    now_ms = round(contract.now * 1000)
    rich, seconds, millis, old = (
        contract.uid(n) for n in ("rich", "seconds", "millis", "old")
    )
    out: list[tuple[str, bytes]] = []
    # Finding 3: two purchases of revenue 1e308, then ordinary events.
    for i in range(2):
        out.append(
            (rich, _event(rich, f"{rich}-huge{i}", now_ms, "purchase", revenue=1e308))
        )
    out.append((rich, _event(rich, f"{rich}-ok1", now_ms + 1, "purchase", revenue=25)))
    out.append(
        (rich, _event(rich, f"{rich}-ok2", now_ms + 2, "product_view", price=9.5))
    )
    # Finding 4: epoch seconds and milliseconds of the same instant.
    out.append((seconds, _event(seconds, f"{seconds}-s", SECONDS_TS, "page_view")))
    out.append((millis, _event(millis, f"{millis}-ms", SECONDS_TS * 1000, "page_view")))
    # Finding 4: times before the floor, then an ordinary event of the same user.
    for i, ts in enumerate(TOO_OLD):
        out.append((old, _event(old, f"{old}-old{i}", ts, "page_view")))
    out.append((old, _event(old, f"{old}-after", now_ms, "page_view")))
    return out


@pytest.fixture(scope="module")
def contract(stack_settings: Settings) -> Iterator[Contract]:
    stack = local_stack.current(stack_settings)
    settings = Settings(
        home=stack_settings.home,
        redis_url=_with_db(stack.redis_url, CONTRACT_DB),
        kafka_broker=stack.kafka_broker,
        events_topic="contract.events",
        dlq_topic="contract.dlq",
        consumer_group="contract-features",
    )
    ensure_topics(stack.kafka_broker, settings)
    env = {
        "SEGSCORE_REDIS_URL": settings.redis_url or "",
        "SEGSCORE_KAFKA_BROKER": stack.kafka_broker,
        "SEGSCORE_EVENTS_TOPIC": settings.events_topic,
        "SEGSCORE_DLQ_TOPIC": settings.dlq_topic,
        "SEGSCORE_CONSUMER_GROUP": settings.consumer_group,
        "SEGSCORE_WORKER_ID": "contract-1",
    }
    worker = processes.start_worker(settings, name="worker-contract", extra_env=env)
    try:
        run = f"c{uuid.uuid4().hex[:8]}"
        contract = Contract(settings, stack.kafka_broker, worker, run, time.time())
        producer = Producer({"bootstrap.servers": stack.kafka_broker, "acks": "all"})
        for key, value in _records(contract):
            producer.produce(settings.events_topic, key=key.encode(), value=value)
        assert producer.flush(30) == 0, "librdkafka did not deliver every record"
        yield contract
    finally:
        processes.stop(worker)


def _assert_finite(state: UserState, as_of: float) -> None:
    counters = [c for b in (state.minutes, state.hours, state.days) for c in b.values()]
    for counts in counters:
        assert all(isinstance(c, float) and math.isfinite(c) for c in counts), counts
    features = (*stream_values(state, as_of), *history_values(state, as_of))
    assert all(v is None or math.isfinite(v) for v in features), features


def test_huge_revenue_is_dead_lettered_and_the_user_goes_on(contract: Contract) -> None:
    rich = contract.uid("rich")
    state = contract.applied("rich", {f"{rich}-ok1", f"{rich}-ok2"})
    assert not {f"{rich}-huge0", f"{rich}-huge1"} & state.seen.keys()
    letters = [r for r in contract.dead_letters(5) if f'"user_id":"{rich}"' in r["raw"]]
    assert sorted(orjson.loads(r["raw"])["event_id"] for r in letters) == [
        f"{rich}-huge0",
        f"{rich}-huge1",
    ]
    for letter in letters:
        assert letter["reason"] == "invalid:revenue"
        assert "1000000000" in letter["detail"]  # the limit, named
    _assert_finite(state, contract.now + 1)
    orders_90d, revenue_90d, *_ = history_values(state, contract.now + 1)
    assert (orders_90d, revenue_90d) == (1.0, 25.0)


def test_epoch_seconds_and_milliseconds_land_at_the_same_instant(
    contract: Contract,
) -> None:
    seconds = contract.applied("seconds", {contract.uid("seconds") + "-s"})
    millis = contract.applied("millis", {contract.uid("millis") + "-ms"})
    assert seconds.last_event_ts == millis.last_event_ts == float(SECONDS_TS)
    assert time.strftime("%Y-%m-%d", time.gmtime(seconds.last_event_ts)) == (
        "2023-11-14"
    )


def test_times_before_the_floor_are_too_old_and_the_stream_goes_on(
    contract: Contract,
) -> None:
    old = contract.uid("old")
    state = contract.applied("old", {f"{old}-after"})
    assert set(state.seen) == {f"{old}-after"}
    assert state.first_seen_ts is not None and state.first_seen_ts >= 631_152_000
    letters = [r for r in contract.dead_letters(5) if f'"user_id":"{old}"' in r["raw"]]
    by_id = {orjson.loads(r["raw"])["event_id"]: r for r in letters}
    assert sorted(by_id) == [f"{old}-old{i}" for i in range(len(TOO_OLD))]
    for letter in by_id.values():
        assert letter["reason"] == "too_old"
        assert "1990-01-01T00:00:00+00:00" in letter["detail"]
        assert letter["offset"] is not None
    _assert_finite(state, contract.now)
    assert contract.worker.poll() is None
