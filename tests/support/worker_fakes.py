"""In-memory fakes of Redis, the DLQ topic and aiokafka records, for worker unit tests.

:func:`make_rig` puts a real :class:`streams.worker_engine.FeatureEngine` on them,
with a fixed clock (:data:`NOW`) and a sleep that only records its delays.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import TopicPartition

from core.store.state_store import (
    DEDUPE_FIELD,
    OUTBOX_FIELD,
    StateLayout,
    decode_fields,
)
from core.user_state import UserState
from infra.settings import Settings
from streams.metrics import WorkerMetrics, parse_exposition
from streams.worker_engine import FeatureEngine

NOW = 1_800_000_000.0
LAYOUT = StateLayout(project="unit")


@dataclass
class Record:
    """What aiokafka's getmany returns per message."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None  # ms
    key: bytes | None
    value: bytes


# A rules file with one timer: the cart-abandonment rule of the default file.
CART_RULES = """
rules:
  - name: cart_abandoned
    on: add_to_cart
    after: 30m
    unless: [purchase]
"""


def event_json(
    event_id: str, user: str, age_s: float, etype: str = "page_view"
) -> bytes:
    """An event's JSON, ``age_s`` seconds older than :data:`NOW`."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "event_type": etype,
            "ts": int((NOW - age_s) * 1000),
        }
    )


def batch_of(*values: bytes, partition: int = 0, first_offset: int = 0) -> list[Record]:
    """Records of the ``events`` topic on consecutive offsets, keyed k0, k1, ..."""
    return [
        Record(
            "events",
            partition,
            first_offset + i,
            int((NOW - 1.0) * 1000),
            f"k{i}".encode(),
            value,
        )
        for i, value in enumerate(values)
    ]


class FakeRedis:
    """Pipelined hmget / hset / expire on hashes; the first ``fail`` calls raise."""

    def __init__(self, fail: int = 0, error: Exception | None = None) -> None:
        self.data: dict[bytes, dict[bytes, bytes]] = {}
        self.lists: dict[bytes, list[bytes]] = {}
        self.zsets: dict[bytes, dict[bytes, float]] = {}
        self.fail = fail
        self.error = error or redis.ConnectionError("Connection refused")
        self.reads = 0
        self.run_id = "a" * 40

    def info(self, section: str) -> dict[str, str]:
        """The server's ``run_id`` (what the engine checks for a restarted store)."""
        self._call()
        return {"run_id": self.run_id}

    def _call(self) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise self.error

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        """A pipeline that applies its commands to this fake's data on execute."""
        return FakePipeline(self)


@dataclass
class FakePipeline:
    """The commands the engine stages, run against :class:`FakeRedis` at once."""

    client: FakeRedis
    ops: list[tuple[str, bytes, Any]] = field(default_factory=list)

    def hmget(self, key: bytes, fields: tuple[bytes, ...]) -> FakePipeline:
        """Stage a read of ``fields`` of hash ``key``."""
        self.ops.append(("hmget", key, fields))
        return self

    def hset(self, key: bytes, mapping: dict[bytes, bytes]) -> FakePipeline:
        """Stage a write of ``mapping`` into hash ``key``."""
        self.ops.append(("hset", key, mapping))
        return self

    def zrangebyscore(
        self, key: bytes, low: Any, high: float, start: int = 0, num: int = -1
    ) -> FakePipeline:
        """Stage a read of the members of ``key`` scored at most ``high``."""
        self.ops.append(("zrange", key, (high, num)))
        return self

    def pipeline_execute_command(self, name: bytes, key: bytes, *args: Any) -> None:
        """Raw commands, as save_states stages them (HSET field value ...)."""
        if name == b"HSET":
            self.hset(key, dict(zip(args[::2], args[1::2], strict=True)))
        elif name in (b"LPUSH", b"LTRIM", b"ZADD", b"ZREM", b"EXPIRE", b"HDEL"):
            self.ops.append((name.decode(), key, args))
        else:
            raise AssertionError(f"unexpected command {name!r}")

    def execute(self) -> list[Any]:
        """Run the staged commands (or raise, while the client is set to fail)."""
        self.client._call()
        out: list[Any] = []
        for op, key, arg in self.ops:
            if op == "hmget":
                self.client.reads += 1
                row = self.client.data.get(key, {})
                out.append([row.get(f) for f in arg])
            elif op in ("LPUSH", "LTRIM", "ZADD", "ZREM", "EXPIRE", "HDEL", "zrange"):
                out.append(self._other(op, key, arg))
            else:
                self.client.data.setdefault(key, {}).update(arg)
                out.append(len(arg))
        return out

    def _other(self, op: str, key: bytes, args: Any) -> Any:
        lists, zsets = self.client.lists, self.client.zsets
        if op == "LPUSH":
            lists[key] = [*reversed(args), *lists.get(key, [])]
        elif op == "LTRIM":
            lists[key] = lists.get(key, [])[args[0] : args[1] + 1]
        elif op == "ZADD":
            zsets.setdefault(key, {})[args[1].encode()] = float(args[0])
        elif op == "HDEL":
            row = self.client.data.get(key, {})
            for name in args:
                row.pop(name, None)
        elif op == "ZREM":
            zsets.get(key, {}).pop(args[0].encode(), None)
        elif op == "zrange":
            high, num = args
            members = sorted(zsets.get(key, {}).items(), key=lambda m: m[1])
            due = [m for m, score in members if score <= high]
            return due if num < 0 else due[:num]
        return None


class FakeDlq:
    """Faust-like ``send`` returning a delivery future; the first deliveries fail."""

    def __init__(self, fail: int = 0) -> None:
        self.sent: list[tuple[bytes | None, dict]] = []
        self.fail = fail

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future:
        """Record the dead letter (decoded) unless this delivery is set to fail."""
        future = asyncio.get_running_loop().create_future()
        if self.fail > 0:
            self.fail -= 1
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            self.sent.append((key, orjson.loads(value)))
            future.set_result(None)
        return future


@dataclass
class EngineRig:
    """A feature engine on the fakes, and what it slept for."""

    engine: FeatureEngine
    redis: FakeRedis
    dlq: FakeDlq
    sleeps: list[float]

    def handle(self, batch: list[Record]) -> None:
        """Run the engine on one batch to completion, records delivered and the
        produced outboxes emptied (as the worker's next write would)."""

        async def run() -> None:
            await self.engine.handle(batch, self.dlq)
            await self.engine.flush_outbox()

        asyncio.run(run())

    def tick(self) -> None:
        """Fire the timers due now (as the consume loop does between batches),
        their records delivered and the produced outboxes emptied."""
        self.engine._next_tick = 0.0

        async def run() -> None:
            await self.engine.fire_timers()
            await self.engine.flush_outbox()

        asyncio.run(run())

    def samples(self) -> dict:
        """The engine's metrics, parsed."""
        return parse_exposition(self.engine.metrics.exposition().decode())

    def stored(self, user: str) -> bool:
        """Whether the fake Redis holds a hash for ``user``."""
        return LAYOUT.key(user) in self.redis.data

    def state(self, user: str) -> UserState:
        """``user``'s state as stored in the fake Redis."""
        row = self.redis.data.get(LAYOUT.key(user), {})
        return decode_fields(
            row.get(LAYOUT.state_field),
            row.get(DEDUPE_FIELD),
            row.get(OUTBOX_FIELD),
        )


def make_rig(tmp_path: Path, redis_fail: int = 0, dlq_fail: int = 0) -> EngineRig:
    """An engine whose Redis fails ``redis_fail`` calls, its DLQ ``dlq_fail`` sends."""
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    fake_redis, dlq = FakeRedis(redis_fail), FakeDlq(dlq_fail)
    engine = FeatureEngine(
        Settings(home=tmp_path),
        "redis://unused",
        WorkerMetrics("test-worker"),
        layout=LAYOUT,
        redis_client=fake_redis,  # type: ignore[arg-type]
        clock=lambda: NOW,
        sleep=sleep,
    )
    return EngineRig(engine, fake_redis, dlq, sleeps)


class FakeConsumer:
    """aiokafka's consumer as the loop uses it: commits, committed offsets, seeks."""

    def __init__(self, committed: dict[Any, int] | None = None) -> None:
        self.commits: list[dict[Any, int]] = []
        self.broker_committed: dict[Any, int] = dict(committed or {})
        self.seeks: dict[Any, int] = {}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))
        self.broker_committed.update(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("events", 0), TopicPartition("events", 1)}

    async def committed(self, tp: Any) -> int | None:
        return self.broker_committed.get(tp)

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, tp: Any) -> None:
        self.seeks[tp] = 0


def records_of(batch: list[Record]) -> dict[tuple[str, int], list[Record]]:
    out: dict[tuple[str, int], list[Record]] = {}
    for record in batch:
        out.setdefault((record.topic, record.partition), []).append(record)
    return out
