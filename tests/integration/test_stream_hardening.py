"""Inputs that could stop the stream or lose events, on the real worker.

On the module's private stack (the ``rig`` fixture, see
:mod:`tests.support.stream_stack`: tansu, a persistent redis-server, real
``faust -A streams.app worker`` processes): a user whose stored state is
unreadable, one user's events spread over every partition by a producer this
project did not write (librdkafka's, via confluent-kafka), and a tombstone record.
"""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest
import redis
from confluent_kafka import Producer

from core.events import Event, EventType
from core.feature_math import stream_features
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, load_states
from segscore.producer import produce_raw, read_topic
from streams.metrics import sample_sum
from streams.routing import canonical_partition
from tests.support.processes import eventually
from tests.support.stream_stack import (
    Lane,
    Rig,
    assert_matches_batch,
    log_tail,
    simulated,
)

pytestmark = pytest.mark.timeout(300)

EVENTS_TOTAL = "segscore_worker_events_total"
DLQ_TOTAL = "segscore_worker_dlq_records_total"


def _event(event_id: str, user: str, ts: float) -> Event:
    return Event(
        event_id=event_id,
        user_id=user,
        event_type=EventType.PRODUCT_VIEW,
        ts=round(ts * 1000),  # whole ms, as on the wire
        price=12.5,
    )


def _letters(lane: Lane, expect: int) -> list[dict]:
    dead = read_topic(lane.rig.broker, lane.settings.dlq_topic, expect + 20, timeout=5)
    return [orjson.loads(value) for _, value in dead]


def _layout(lane: Lane) -> StateLayout:
    return StateLayout.of(feature_store(lane.settings, lane.redis_url))


def test_unprocessable_events_go_to_the_dlq_and_the_stream_moves_on(rig: Rig) -> None:
    """Errors no retry can fix make poison records, not a stuck stream."""
    lane = rig.lane("poison", db=6, batch_max_events=200)
    layout = _layout(lane)
    client = redis.Redis.from_url(lane.redis_url)
    # Two users the write path cannot handle: an unreadable stored state (a
    # decoding error) and a key of the wrong Redis type (a WRONGTYPE reply).
    garbage = b"\x07 not a feast value"
    client.hset(layout.key("corrupt"), layout.state_field, garbage)
    client.set(layout.key("wrongtype"), b"a string, not a hash")

    good = simulated(n_users=40, n_events=4_000, seed=21)
    newest = max(e.ts for e in good)
    poison = [
        _event(f"poison-{user}-{i}", user, newest - 100 + i)
        for i in range(15)
        for user in ("corrupt", "wrongtype")
    ]
    stream: list[Event] = []
    rest = iter(poison)  # one among every 130 good events
    for i, event in enumerate(good):
        stream.append(event)
        if i % 130 == 129 and (bad := next(rest, None)) is not None:
            stream.append(bad)
    stream.extend(rest)
    assert len(stream) == len(good) + len(poison)

    lane.produce(stream[:2_000])
    first = lane.start_worker("poison-1")
    eventually(lambda: lane.messages("poison-1") >= 500, 120, "500 events processed")
    # Crash it mid-stream: its replacement replays from the last commit, poison
    # records included, and must not wedge on them.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    lane.produce(stream[2_000:])
    second = lane.start_worker("poison-2")
    lane.wait_committed(len(stream), 150, [second])

    letters = _letters(lane, len(poison))
    assert {orjson.loads(x["raw"])["event_id"] for x in letters} == {
        e.event_id for e in poison
    }
    assert {x["reason"] for x in letters} == {"processing_error"}
    details = {orjson.loads(x["raw"])["user_id"]: x["detail"] for x in letters}
    assert details["corrupt"].startswith("DecodeError"), details
    assert details["wrongtype"].startswith("ResponseError"), details
    assert "WRONGTYPE" in details["wrongtype"]
    # Nothing a retry could fix was retried.
    time.sleep(1)  # one more metrics refresh
    retries = "segscore_worker_retries_total"
    assert sample_sum(lane.metrics("poison-2"), retries, stage="write") == 0
    # What was stored is left as it was, for someone to look at.
    assert client.hget(layout.key("corrupt"), layout.state_field) == garbage
    assert client.get(layout.key("wrongtype")) == b"a string, not a hash"

    client.delete(layout.key("corrupt"), layout.key("wrongtype"))
    assert_matches_batch(lane, good)


def test_one_users_events_on_every_partition_are_each_applied_once(rig: Rig) -> None:
    """No key, a key with spaces, explicit partitions: all counted once."""
    lane = rig.lane("spread", db=7, topic_partitions=3)
    user = "spread-user"
    home = canonical_partition(user, 3)
    away = (home + 1) % 3
    start = time.time() - 300
    events = [_event(f"spread-{i}", user, start + i) for i in range(80)]
    others = [_event(f"other-{i}", f"other-{i % 5}", start + i) for i in range(50)]

    # librdkafka's producer with its default partitioner (CRC32, random for no key).
    producer = Producer({"bootstrap.servers": rig.broker, "acks": "all"})
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    for i, event in enumerate(events):
        value = event.to_json()
        kind = i % 4
        if kind == 0:  # no key
            producer.produce(lane.topic, value=value, on_delivery=delivered)
        elif kind == 1:  # a key that differs from user_id by spaces
            key = f" {user} ".encode()
            producer.produce(lane.topic, value=value, key=key, on_delivery=delivered)
        elif kind == 2:  # the right key, an explicit partition that is not its own
            producer.produce(
                lane.topic, value=value, key=user.encode(), partition=away,
                on_delivery=delivered,
            )  # fmt: skip
        else:  # what a murmur2 producer does
            producer.produce(
                lane.topic, value=value, key=user.encode(), partition=home,
                on_delivery=delivered,
            )  # fmt: skip
    assert producer.flush(30) == 0 and not failures, failures
    del producer  # closes its connections
    lane.produce(others)

    worker = lane.start_worker("spread-1")
    total = len(events) + len(others) + 60  # 60 re-routed copies
    lane.wait_committed(total, 150, [worker])
    time.sleep(1)  # one more metrics refresh
    samples = lane.metrics("spread-1")
    assert sample_sum(samples, EVENTS_TOTAL, outcome="rerouted") == 60
    assert sample_sum(samples, EVENTS_TOTAL, outcome="applied") == 130
    assert sample_sum(samples, EVENTS_TOTAL, outcome="duplicate") == 0
    assert sample_sum(samples, DLQ_TOTAL) == 0

    layout = _layout(lane)
    state = load_states(redis.Redis.from_url(lane.redis_url), layout, [user])[user]
    assert set(state.seen) == {e.event_id for e in events}
    as_of = events[-1].ts
    assert stream_features(state, as_of)["events_1h"] == 80
    # Only the user's own partition fed its state.
    assert set(state.offsets) == {f"{lane.topic}:{home}"}
    assert_matches_batch(lane, events + others)
    client = redis.Redis.from_url(lane.redis_url)
    stored = client.hgetall(layout.key(user))

    # A full replay (a new consumer group reads everything again): the 60
    # originals are re-routed again, and every copy is a duplicate by event id.
    replay = Lane(
        rig, lane.settings.model_copy(update={"consumer_group": "spread-replay"})
    )
    again = replay.start_worker("spread-2")
    replay.wait_committed(total + 60, 150, [again])
    time.sleep(1)
    samples = lane.metrics("spread-2")
    assert sample_sum(samples, EVENTS_TOTAL, outcome="applied") == 0
    assert sample_sum(samples, EVENTS_TOTAL, outcome="rerouted") == 60
    assert sample_sum(samples, EVENTS_TOTAL, outcome="duplicate") == total
    assert sample_sum(samples, DLQ_TOTAL) == 0
    assert client.hgetall(layout.key(user)) == stored
    assert_matches_batch(lane, events + others)
    assert _letters(lane, 0) == []


def test_a_tombstone_gets_its_own_reason_and_no_traceback(rig: Rig) -> None:
    """A null-value record is dead-lettered as ``tombstone``, quietly."""
    lane = rig.lane("tombstone", db=8)
    event = _event("after-tombstone", "tomb-user", time.time() - 60)
    produce_raw(
        rig.broker,
        lane.topic,
        [(b"tomb-user", None), (b"tomb-user", event.to_json())],  # type: ignore[list-item]
    )
    worker = lane.start_worker("tombstone-1")
    lane.wait_committed(2, 120, [worker])

    [letter] = _letters(lane, 1)
    assert letter["reason"] == "tombstone"
    assert letter["detail"] and letter["raw"] == ""
    assert letter["offset"] is not None
    layout = _layout(lane)
    client = redis.Redis.from_url(lane.redis_url)
    state = load_states(client, layout, ["tomb-user"])["tomb-user"]
    assert set(state.seen) == {"after-tombstone"}
    log = (lane.settings.home / "logs" / "tombstone-1.log").read_text()
    assert "Traceback" not in log, log_tail(rig)
    assert "TypeError" not in log
