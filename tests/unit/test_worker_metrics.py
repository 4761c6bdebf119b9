"""The worker's batch handling, acknowledgement and metrics, without real services.

The engine runs against in-memory fakes of Redis, the Feast store and the DLQ topic;
the Faust agent of :mod:`streams.app` runs against a fake stream.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
import redis

from infra.settings import Settings
from streams import worker_engine
from streams.metrics import (
    WorkerMetrics,
    label_values,
    parse_exposition,
    remove_textfile,
    sample_sum,
    textfile_path,
)
from streams.state_store import state_key
from streams.user_state import UserState
from streams.worker_engine import MAX_BACKOFF_SECONDS, FeatureEngine

NOW = 1_800_000_000.0


# --- fakes ----------------------------------------------------------------------


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    timestamp: float | None


@dataclass
class FakeEvent:
    key: bytes | None
    value: bytes
    message: Message


def event_json(event_id: str, user: str, age_s: float, etype: str = "page_view"):
    return orjson.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "event_type": etype,
            "ts": int((NOW - age_s) * 1000),
        }
    )


def batch_of(*values: bytes, partition: int = 0, first_offset: int = 0):
    return [
        FakeEvent(
            key=f"k{i}".encode(),
            value=value,
            message=Message("events", partition, first_offset + i, NOW - 1.0),
        )
        for i, value in enumerate(values)
    ]


class FakeRedis:
    """mget + pipelined mset; the first ``fail`` calls raise ``error``."""

    def __init__(self, fail: int = 0, error: Exception | None = None) -> None:
        self.data: dict[str, bytes] = {}
        self.fail = fail
        self.error = error or redis.ConnectionError("Connection refused")

    def _call(self) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise self.error

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self._call()
        return [self.data.get(k) for k in keys]

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)


@dataclass
class FakePipeline:
    client: FakeRedis
    ops: list[dict[str, bytes]] = field(default_factory=list)

    def mset(self, mapping: dict[str, bytes]) -> FakePipeline:
        self.ops.append(mapping)
        return self

    def execute(self) -> None:
        self.client._call()
        for mapping in self.ops:
            self.client.data.update(mapping)


class FakeStore:
    """Records online writes (the engine's ``writer``)."""

    def __init__(self) -> None:
        self.pushed: list[Any] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.pushed.append(pd.DataFrame.from_records(rows))


class FakeDlq:
    """Faust-like ``send`` returning a delivery future; the first deliveries fail."""

    def __init__(self, fail: int = 0) -> None:
        self.sent: list[tuple[bytes | None, dict]] = []
        self.fail = fail

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.fail > 0:
            self.fail -= 1
            future.set_exception(ConnectionError("broker unavailable"))
        else:
            self.sent.append((key, orjson.loads(value)))
            future.set_result(None)
        return future


@dataclass
class Rig:
    engine: FeatureEngine
    redis: FakeRedis
    store: FakeStore
    dlq: FakeDlq
    sleeps: list[float]

    def handle(self, batch: list[FakeEvent]) -> None:
        asyncio.run(self.engine.handle(batch, self.dlq))

    def samples(self) -> dict:
        return parse_exposition(self.engine.metrics.exposition().decode())

    def state(self, user: str) -> UserState:
        return UserState.from_bytes(self.redis.data.get(state_key(user)))


def make_rig(tmp_path: Path, redis_fail: int = 0, dlq_fail: int = 0) -> Rig:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    fake_redis, store, dlq = FakeRedis(redis_fail), FakeStore(), FakeDlq(dlq_fail)
    engine = FeatureEngine(
        Settings(home=tmp_path),
        "redis://unused",
        WorkerMetrics("test-worker"),
        writer=store,
        redis_client=fake_redis,  # type: ignore[arg-type]
        clock=lambda: NOW,
        sleep=sleep,
    )
    return Rig(engine, fake_redis, store, dlq, sleeps)


# --- the engine -------------------------------------------------------------------


def test_batch_writes_valid_events_and_dead_letters_the_rest(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    batch = batch_of(
        event_json("a", "u1", 30),
        b"{not json",
        event_json("b", "u2", 10),
        event_json("c", "u3", 5, etype="teleport"),
        partition=1,
        first_offset=100,
    )
    rig.handle(batch)

    assert rig.state("u1").last_event_ts == NOW - 30
    assert rig.state("u2").last_event_ts == NOW - 10
    assert state_key("u3") not in rig.redis.data
    assert sorted(rig.store.pushed[0]["user_id"]) == ["u1", "u2"]
    letters = {key: record for key, record in rig.dlq.sent}
    assert letters[b"k1"]["reason"] == "malformed_json"
    assert letters[b"k3"]["reason"] == "unknown_event_type"
    assert (letters[b"k1"]["partition"], letters[b"k1"]["offset"]) == (1, 101)
    assert letters[b"k1"]["raw"] == "{not json"

    samples = rig.samples()
    dlq = "segscore_worker_dlq_records_total"
    assert sample_sum(samples, dlq, reason="malformed_json") == 1
    assert sample_sum(samples, dlq, reason="unknown_event_type") == 1
    assert sample_sum(samples, "segscore_worker_events_total", outcome="applied") == 2
    assert sample_sum(samples, "segscore_worker_batches_total") == 1
    assert sample_sum(samples, "segscore_worker_online_rows_total") == 2
    # Freshness: event time -> write (30 s and 10 s), Kafka timestamp -> write (1 s).
    fresh = "segscore_worker_event_to_online_seconds"
    assert sample_sum(samples, f"{fresh}_count") == 2
    assert sample_sum(samples, f"{fresh}_sum") == pytest.approx(40.0)
    kafka = "segscore_worker_kafka_timestamp_to_online_seconds"
    assert sample_sum(samples, f"{kafka}_sum") == pytest.approx(2.0)
    last = "segscore_worker_last_batch_max_freshness_seconds"
    assert sample_sum(samples, last, clock="event") == pytest.approx(30.0)
    # Messages are counted when the agent acknowledges, not before.
    assert sample_sum(samples, "segscore_worker_messages_total") == 0


def test_redis_outage_is_retried_with_capped_backoff_until_written(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, redis_fail=12)
    rig.handle(batch_of(event_json("a", "u1", 30)))

    assert rig.state("u1").last_event_ts == NOW - 30
    assert len(rig.sleeps) == 12
    assert all(0 < s <= MAX_BACKOFF_SECONDS for s in rig.sleeps)
    assert max(rig.sleeps) > 4 * min(rig.sleeps)  # it backs off
    retries = sample_sum(
        rig.samples(),
        "segscore_worker_retries_total",
        stage="write",
        error="ConnectionError",
    )
    assert retries == 12
    assert rig.dlq.sent == []


def test_a_cancelled_batch_is_not_reported_as_done(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, redis_fail=10**9)

    async def run() -> None:
        task = asyncio.create_task(
            rig.engine.handle(batch_of(event_json("a", "u1", 30)), rig.dlq)
        )
        while len(rig.sleeps) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert rig.store.pushed == [] and rig.redis.data == {}
    assert sample_sum(rig.samples(), "segscore_worker_batches_total") == 0


def test_a_poison_event_is_isolated_and_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = worker_engine.apply_batch

    def fragile(events, states, lateness, offsets=None):
        if any(e.event_id == "poison" for e in events):
            raise ZeroDivisionError("bucket math")
        return real(events, states, lateness, offsets)

    monkeypatch.setattr(worker_engine, "apply_batch", fragile)
    rig = make_rig(tmp_path)
    values = [event_json(f"e{i}", f"u{i}", 60 - i) for i in range(6)]
    values[3] = event_json("poison", "u3", 40)
    rig.handle(batch_of(*values))

    for i in (0, 1, 2, 4, 5):
        assert rig.state(f"u{i}").last_event_ts == NOW - (60 - i)
    assert state_key("u3") not in rig.redis.data
    [(key, letter)] = rig.dlq.sent
    assert key == b"k3"
    assert letter["reason"] == "processing_error"
    assert "ZeroDivisionError" in letter["detail"]
    assert letter["offset"] == 3
    dlq = "segscore_worker_dlq_records_total"
    assert sample_sum(rig.samples(), dlq, reason="processing_error") == 1


def test_a_parser_crash_costs_only_the_offending_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = worker_engine.parse_batch

    def fragile(values, **kwargs):
        if b"boom" in values:
            raise RecursionError("validator bug")
        return real(values, **kwargs)

    monkeypatch.setattr(worker_engine, "parse_batch", fragile)
    rig = make_rig(tmp_path)
    rig.handle(batch_of(event_json("a", "u1", 30), b"boom", event_json("b", "u2", 9)))

    assert rig.state("u1").last_event_ts and rig.state("u2").last_event_ts
    [(key, letter)] = rig.dlq.sent
    assert (key, letter["reason"], letter["raw"]) == (b"k1", "processing_error", "boom")


def test_late_events_go_to_the_dlq_with_their_origin(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    lateness = rig.engine.settings.allowed_lateness_seconds
    rig.handle(
        batch_of(
            event_json("new", "u1", 10),
            event_json("old", "u1", 10 + lateness + 60),
            first_offset=7,
        )
    )
    [(key, letter)] = rig.dlq.sent
    assert (key, letter["reason"], letter["offset"]) == (b"k1", "late", 8)
    samples = rig.samples()
    assert sample_sum(samples, "segscore_worker_events_total", outcome="late") == 1
    # Only the applied event counts for freshness.
    assert sample_sum(samples, "segscore_worker_event_to_online_seconds_count") == 1


def test_dlq_delivery_failure_is_retried_and_counted_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, dlq_fail=1)
    rig.handle(batch_of(b"[1, 2]", event_json("a", "u1", 30)))

    assert [r["reason"] for _, r in rig.dlq.sent] == ["malformed_json"]
    samples = rig.samples()
    assert sample_sum(samples, "segscore_worker_retries_total", stage="dlq") == 1
    assert sample_sum(samples, "segscore_worker_dlq_records_total") == 1


def test_acknowledged_batches_count_messages_and_offsets(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.engine.acknowledged(batch_of(b"x", b"y", partition=1, first_offset=41))
    rig.engine.acknowledged(batch_of(b"z", partition=0, first_offset=9))
    assert rig.engine.next_offsets == {("events", 1): 43, ("events", 0): 10}
    assert sample_sum(rig.samples(), "segscore_worker_messages_total") == 3


# --- exposition -------------------------------------------------------------------


def test_every_series_carries_the_worker_label() -> None:
    metrics = WorkerMetrics("w-7")
    metrics.record_rejections(["oversized", "oversized", "future_ts"])
    metrics.set_lag({("events", 0): 5, ("events", 1): 0})
    text = metrics.exposition().decode()
    assert 'segscore_worker_dlq_records_total{reason="oversized",worker="w-7"} 2.0' in (
        text
    )
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines and all('worker="w-7"' in ln for ln in lines)
    samples = parse_exposition(text)
    assert sample_sum(samples, "segscore_worker_consumer_lag") == 5
    assert sorted(label_values(samples, "segscore_worker_consumer_lag", "partition"))
    assert sample_sum(samples, "segscore_worker_assigned_partitions") == 2
    # A revoked partition disappears from the lag series.
    metrics.set_lag({("events", 1): 3})
    samples = parse_exposition(metrics.exposition().decode())
    lag = "segscore_worker_consumer_lag"
    assert list(label_values(samples, lag, "partition")) == ["1"]


def test_textfile_is_written_under_home_and_removed(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, worker_id="w-1")
    path = textfile_path(settings, "w-1")
    assert path == tmp_path / "metrics" / "w-1.prom"
    metrics = WorkerMetrics("w-1")
    metrics.batches.inc(3)
    metrics.write_textfile(path)
    samples = parse_exposition(path.read_text())
    assert sample_sum(samples, "segscore_worker_batches_total") == 3
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    remove_textfile(path)
    remove_textfile(path)  # quiet when already gone
    assert not path.exists()


def test_http_endpoint_serves_the_same_exposition() -> None:
    metrics = WorkerMetrics("w-http")
    metrics.messages.inc(11)
    port = metrics.serve_http(0)
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    samples = parse_exposition(response.text)
    assert sample_sum(samples, "segscore_worker_messages_total") == 11


# --- the Faust agent: acknowledgement -----------------------------------------------


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``streams.app`` imported against a stack that is never contacted."""
    monkeypatch.setenv("SEGSCORE_HOME", str(tmp_path))
    monkeypatch.setenv("SEGSCORE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SEGSCORE_KAFKA_BROKER", "127.0.0.1:1")
    monkeypatch.setenv("SEGSCORE_WORKER_ID", "unit")
    sys.modules.pop("streams.app", None)
    module = importlib.import_module("streams.app")
    yield module
    sys.modules.pop("streams.app", None)


class FakeStream:
    def __init__(self, batches: list[list[FakeEvent]]) -> None:
        self.batches = batches
        self.acked: list[FakeEvent] = []

    async def noack_take(self, max_: int, within: float):
        for batch in self.batches:
            yield batch

    async def ack(self, event: FakeEvent) -> bool:
        self.acked.append(event)
        return True


def test_agent_acks_a_batch_only_after_it_is_written(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = batch_of(b"1", b"2"), batch_of(b"3", first_offset=2)
    stream = FakeStream([first, second])
    acked_when_called: list[int] = []

    async def handle(batch, dlq) -> None:
        acked_when_called.append(len(stream.acked))

    monkeypatch.setattr(app_module.engine, "handle", handle)
    asyncio.run(app_module.build_features.fun(stream))
    assert acked_when_called == [0, 2]
    assert stream.acked == first + second
    assert app_module.engine.next_offsets == {("events", 0): 3}


def test_agent_never_acks_a_batch_cut_short_by_shutdown(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = FakeStream([batch_of(b"1", b"2")])

    async def handle(batch, dlq) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(app_module.engine, "handle", handle)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(app_module.build_features.fun(stream))
    assert stream.acked == []


def test_agent_exits_without_acking_on_an_unexpected_error(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = FakeStream([batch_of(b"1")])
    exits: list[int] = []

    async def handle(batch, dlq) -> None:
        raise RuntimeError("a bug")

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(app_module.engine, "handle", handle)
    monkeypatch.setattr(app_module.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        asyncio.run(app_module.build_features.fun(stream))
    assert exits == [app_module.EXIT_UNEXPECTED]
    assert stream.acked == []
