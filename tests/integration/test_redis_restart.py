"""The local Redis keeps the online store across restarts (append-only file).

Own home and stack (not the session one): this test stops and kills its Redis.
States are written by the real worker from events on the real broker; after a
restart every user's hash must be back byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.events import Event
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout
from feature_repo.apply import apply_repo
from infra import local_stack, processes
from infra.settings import Settings, get_settings
from infra.topics import ensure_topics
from segscore.bench.stream_events import backlog_events, produce_backlog_async
from segscore.bench.stream_progress import verify_states
from tests.support.processes import eventually

# appendfsync everysec: a write is on disk about a second after it was made.
FSYNC_GRACE_SECONDS = 2.5

Dump = dict[bytes, dict[bytes, bytes]]


@pytest.fixture
def own_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A private home with its own Redis and broker, stopped afterwards."""
    monkeypatch.setenv("SEGSCORE_HOME", str(tmp_path))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.delenv("SEGSCORE_REDIS_URL", raising=False)
    monkeypatch.delenv("SEGSCORE_KAFKA_BROKER", raising=False)
    settings = get_settings()
    try:
        stack = local_stack.up(settings)
        ensure_topics(stack.kafka_broker, settings)
        apply_repo(feature_store(settings, stack.redis_url))
        yield settings
    finally:
        local_stack.down(settings)


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(local_stack.current(settings).redis_url)


def _dump(client: redis.Redis) -> Dump:
    """Every user's hash in the store, field by field (not the worker's fences)."""
    keys = client.scan_iter(count=1000, _type="HASH")
    return {k: client.hgetall(k) for k in keys if not k.startswith(b"segscore:fence:")}


def _apply_through_worker(
    settings: Settings, layout: StateLayout, events: list[Event]
) -> None:
    """Produce ``events``, run a worker until every user's state has its last one."""
    stack = local_stack.current(settings)
    asyncio.run(
        produce_backlog_async(stack.kafka_broker, settings.events_topic, events)
    )
    worker = processes.start_worker(settings, name="restart-worker")
    try:
        client = _client(settings)
        eventually(
            lambda: (
                worker.poll() is None and verify_states(client, layout, events) == 0
            ),
            90,
            "the worker to apply every event",
        )
    finally:
        processes.stop(worker)


def _redis_service(settings: Settings) -> local_stack.Service:
    stack = local_stack.current(settings)
    return next(s for s in stack.started if s.name == "redis")


def _kill(pid: int) -> None:
    """SIGKILL and reap (the test process may be its parent)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not local_stack.pid_alive(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"redis {pid} survived SIGKILL")


def test_states_survive_redis_crash_and_clean_restart(own_stack: Settings) -> None:
    settings = own_stack
    store = feature_store(settings, local_stack.current(settings).redis_url)
    layout = StateLayout.of(store)
    # Each backlog spans an hour; the second starts after the first ends, so
    # none of its events is late for a user the first one already has.
    now = time.time()
    first = backlog_events(400, 40, now - 4000, seed=11)
    _apply_through_worker(settings, layout, first)
    before_crash = _dump(_client(settings))
    assert len(before_crash) == 40
    assert (local_stack.redis_dir(settings.home) / "appendonly.aof").exists()

    # A crash after the writes had time to reach the disk: nothing is lost, and
    # Redis comes back on its old address.
    time.sleep(FSYNC_GRACE_SECONDS)
    crashed = _redis_service(settings)
    _kill(crashed.pid)
    assert not local_stack.redis_reachable(crashed.address)
    restarted = local_stack.up(settings)
    assert restarted.redis_url == crashed.address
    assert _redis_service(settings).pid != crashed.pid
    assert _dump(_client(settings)) == before_crash

    # More events (old users and new ones) on the restarted Redis, then a clean
    # `down` + `up` at once: the shutdown itself must flush the file.
    second = backlog_events(300, 60, now - 30, seed=12)
    _apply_through_worker(settings, layout, second)
    before_down = _dump(_client(settings))
    assert len(before_down) == 60
    assert before_down != before_crash
    stopped = local_stack.down(settings)
    assert not any(local_stack.pid_alive(s.pid) for s in stopped)
    local_stack.up(settings)
    assert _dump(_client(settings)) == before_down
    assert verify_states(_client(settings), layout, first + second) == 0
