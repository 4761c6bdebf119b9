"""Who owns a user (streams.routing), and how the engine re-routes and classifies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka.partitioner import DefaultPartitioner

from core.store.state_store import DEDUPE_FIELD
from streams.routing import Router, canonical_partition
from streams.worker_engine import is_transient
from tests.support.worker_fakes import (
    LAYOUT,
    NOW,
    FakeRedis,
    Record,
    event_json,
    make_rig,
)

IDS = ["u1", "u-42", "500000007", "ß∂ƒ-user", "x" * 128, " "]


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 12])
def test_canonical_partition_is_kafkas_default_partitioner(partitions: int) -> None:
    every = list(range(partitions))
    for uid in IDS:
        want = DefaultPartitioner()(uid.encode(), every, every)
        assert canonical_partition(uid, partitions) == want


def test_a_record_is_misrouted_unless_keyed_by_its_user_on_its_partition() -> None:
    router = Router()
    home = canonical_partition("u1", 4)
    other = (home + 1) % 4
    assert not router.misrouted("u1", b"u1", home, 4)
    assert router.misrouted("u1", None, home, 4)  # no key
    assert router.misrouted("u1", b" u1 ", home, 4)  # differs by spaces
    assert router.misrouted("u1", b"u2", home, 4)  # another key
    assert router.misrouted("u1", b"u1", other, 4)  # an explicit partition
    assert router.owner("u1", 4) == (b"u1", home)


def test_a_topic_that_gains_partitions_moves_users_to_their_new_partition() -> None:
    router = Router()
    moved = next(
        u for u in (f"user-{i}" for i in range(100))
        if canonical_partition(u, 2) != canonical_partition(u, 3)
    )  # fmt: skip
    before = router.owner(moved, 2)[1]
    assert not router.misrouted(moved, moved.encode(), before, 2)
    assert router.misrouted(moved, moved.encode(), before, 3)
    assert router.owner(moved, 3)[1] == canonical_partition(moved, 3)


def test_the_cache_stays_bounded() -> None:
    router = Router(max_users=10)
    for i in range(25):
        router.owner(f"u{i}", 4)
    assert len(router._owners) <= 10
    assert router.owner("u3", 4) == (b"u3", canonical_partition("u3", 4))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (redis.ConnectionError("refused"), True),
        (redis.TimeoutError("timed out"), True),
        (redis.exceptions.BusyLoadingError("loading"), True),
        (redis.exceptions.ReadOnlyError("read only replica"), True),
        (redis.exceptions.OutOfMemoryError("command not allowed"), True),
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (
            redis.ResponseError(
                "Command # 1 (HSET k) of pipeline caused error: MISCONF no disk"
            ),
            True,
        ),
        (redis.ResponseError("WRONGTYPE Operation against a key"), False),
        (ValueError("year -316889355 is out of range"), False),
        (OverflowError("cannot convert float infinity to integer"), False),
        (TypeError("unsupported type"), False),
        (orjson.JSONDecodeError("unexpected character", "x", 0), False),
    ],
)
def test_only_outages_are_retried(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


# --- the engine, on the worker fakes -------------------------------------------------


class FakeEvents:
    """The events topic: ``send`` with an explicit partition, delivery futures."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int]] = []

    async def send(self, key: bytes, value: bytes, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.sent.append((key, value, partition))
        future.set_result(None)
        return future


def test_misrouted_records_are_produced_to_their_users_partition(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path)
    events = FakeEvents()
    rig.engine.events_topic = events
    rig.engine.partitions_for = lambda topic: {0, 1, 2}
    home = canonical_partition("u1", 3)
    away = (home + 1) % 3
    values = [event_json(f"e{i}", "u1", 30 - i) for i in range(4)]
    stamp = int((NOW - 1) * 1000)
    batch = [
        Record("events", home, 0, stamp, b"u1", values[0]),  # right: applied
        Record("events", home, 1, stamp, None, values[1]),  # no key
        Record("events", home, 2, stamp, b"u1 ", values[2]),  # key with a space
        Record("events", away, 0, stamp, b"u1", values[3]),  # wrong partition
    ]
    rig.handle(batch)

    assert events.sent == [(b"u1", v, home) for v in values[1:]]
    assert rig.state("u1").seen == {"e0": NOW - 30}
    assert rig.engine.counts["rerouted"] == 3
    assert rig.dlq.sent == []


def test_corrupt_stored_state_makes_only_that_users_events_poison(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path)
    rig.redis.data[LAYOUT.key("broken")] = {LAYOUT.state_field: b"\xff garbage"}
    values = [event_json("a", "u1", 30), event_json("b", "broken", 20)]
    values.append(event_json("c", "u2", 10))
    rig.handle([*_records(values)])

    assert rig.state("u1").seen == {"a": NOW - 30}
    assert rig.state("u2").seen == {"c": NOW - 10}
    assert DEDUPE_FIELD not in rig.redis.data[LAYOUT.key("broken")]
    [(key, letter)] = rig.dlq.sent
    assert (key, letter["reason"], letter["offset"]) == (b"k1", "processing_error", 1)
    assert letter["detail"].startswith("DecodeError")
    assert rig.sleeps == []  # no retry: nothing a retry could fix


def test_an_outage_is_still_retried_not_dead_lettered(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.redis = FakeRedis(3, redis.exceptions.ReadOnlyError("read only replica"))
    rig.engine._redis = rig.redis  # type: ignore[assignment]
    rig.handle([*_records([event_json("a", "u1", 30)])])
    assert len(rig.sleeps) == 3 and rig.dlq.sent == []
    assert rig.state("u1").seen == {"a": NOW - 30}


def _records(values: list[bytes]) -> list[Record]:
    stamp = int((NOW - 1) * 1000)
    return [
        Record("events", 0, i, stamp, f"k{i}".encode(), v) for i, v in enumerate(values)
    ]
