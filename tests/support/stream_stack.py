"""A private stream stack for the worker's reliability tests, and their batch check.

:class:`Rig` is a redis-server with an append-only file fsynced on every write (so
it can be crashed and restarted on the same port without losing what it
acknowledged -- the shared test stack runs Redis with persistence off) and a tansu
broker. A :class:`Lane` is one test's slice of it: its own topics, consumer group
and Redis database, and the real ``faust -A streams.app worker`` processes it
starts. :func:`assert_matches_batch` is the check every such test ends with: the
worker's state and online features equal a batch recomputation of the same events
with :func:`training.backfill.backfill`.

Tansu behaviour worked around here: an OffsetFetch for all partitions of a group
(``topics=null``, what ``AIOKafkaAdminClient.list_consumer_group_offsets(group)``
sends) gets a response aiokafka cannot decode; naming the partitions works.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from core.event_files import events_frame
from core.events import Event
from core.feature_catalog import STATE_FEATURE
from core.feature_math import stream_features
from core.names import STREAM_VIEW
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, load_states
from core.user_state import UserState
from feature_repo.apply import apply_repo
from infra import local_stack, processes
from infra.settings import PROJECT_ROOT, Settings
from infra.topics import ensure_topics
from segscore.producer import produce_events
from segscore.simulator import simulate
from streams.metrics import Samples, parse_exposition, sample_sum
from tests.support.processes import eventually
from training.backfill import backfill

TOLERANCE = 1e-9


# --- the private stack ---------------------------------------------------------


@dataclass
class Rig:
    """Redis (persistent) + tansu for one test module, and the workers on them."""

    home: Path
    broker: str
    tansu_pid: int
    redis_port: int
    redis: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> None:
        """Start redis-server and apply the feature repo with it as online store."""
        self.start_redis()
        base = Settings(home=self.home, redis_url=self._redis_url(0))
        apply_repo(feature_store(base, base.redis_url or ""))

    def stop(self) -> None:
        """Stop the workers, the current tansu (thawed first) and redis-server."""
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
            processes.stop(proc)
        # A test may leave tansu frozen (SIGSTOP) or killed.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.tansu_pid, signal.SIGCONT)
        local_stack.stop_pid(self.tansu_pid)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)

    def stop_workers(self) -> None:
        """Stop the workers a test started, frozen ones included, and forget them."""
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            processes.stop(proc)
        self.workers.clear()

    def _redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def start_redis(self) -> None:
        """(Re)start redis-server on the fixed port; it reloads its AOF."""
        workdir = self.home / "redis-aof"
        workdir.mkdir(parents=True, exist_ok=True)
        log = (self.home / "logs" / "redis-aof.log").open("ab")
        cmd = [
            local_stack.redis_server_binary(),
            "--port", str(self.redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.redis = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = self._redis_url(0)
        eventually(lambda: local_stack.redis_reachable(url), 15, "redis to start")

    def crash_redis(self) -> None:
        """SIGKILL redis-server: what it acknowledged is in the fsynced AOF."""
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait(10)

    def copy_aof(self, to: Path) -> None:
        """Copy the append-only file(s) as they are now (what a later crash keeps)."""
        aof = self.home / "redis-aof"
        shutil.rmtree(to, ignore_errors=True)
        to.mkdir(parents=True)
        for path in aof.glob("appendonly*"):  # a file (Redis 6) or a dir (Redis 7)
            if path.is_dir():
                shutil.copytree(path, to / path.name)
            else:
                shutil.copy2(path, to / path.name)

    def restore_aof(self, copy: Path) -> None:
        """Put an earlier copy back (Redis must be stopped)."""
        aof = self.home / "redis-aof"
        for path in aof.glob("appendonly*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in copy.iterdir():
            if path.is_dir():
                shutil.copytree(path, aof / path.name)
            else:
                shutil.copy2(path, aof / path.name)

    def lane(self, name: str, db: int, **overrides: object) -> Lane:
        """An isolated slice of the stack: topics, consumer group, Redis database."""
        settings = Settings(
            home=self.home,
            redis_url=self._redis_url(db),
            kafka_broker=self.broker,
            events_topic=f"{name}.events",
            dlq_topic=f"{name}.dlq",
            consumer_group=f"{name}-features",
            worker_metrics_interval_seconds=0.5,
            **overrides,
        )
        ensure_topics(self.broker, settings)
        return Lane(self, settings)


@dataclass
class Lane:
    """One test's topics, consumer group and Redis database on a :class:`Rig`."""

    rig: Rig
    settings: Settings

    @property
    def redis_url(self) -> str:
        """The lane's Redis database."""
        assert self.settings.redis_url
        return self.settings.redis_url

    @property
    def topic(self) -> str:
        """The lane's events topic."""
        return self.settings.events_topic

    def start_worker(
        self,
        worker: str,
        metrics_port: int = 0,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """A real worker on this lane, writing its metrics file every 0.5 s."""
        env = self.worker_env(worker, metrics_port, extra_env)
        proc = processes.start_worker(self.settings, name=worker, extra_env=env)
        self.rig.workers.append(proc)
        return proc

    def start_worker_group(self, worker: str, count: int) -> subprocess.Popen:
        """``segscore worker -n count`` on this lane: processes ``<worker>-1``..."""
        cmd = [sys.executable, "-m", "segscore.cli", "worker", "-n", str(count)]
        env = processes.process_env(self.settings, self.worker_env(worker))
        log = self.settings.home / "logs" / f"{worker}.log"
        proc = processes.spawn_logged(cmd, log, env, PROJECT_ROOT)
        self.rig.workers.append(proc)
        return proc

    def worker_env(
        self,
        worker: str,
        metrics_port: int = 0,
        extra_env: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment of a worker of this lane called ``worker``."""
        s = self.settings
        return {
            "SEGSCORE_REDIS_URL": self.redis_url,
            "SEGSCORE_KAFKA_BROKER": self.rig.broker,
            "SEGSCORE_EVENTS_TOPIC": s.events_topic,
            "SEGSCORE_DLQ_TOPIC": s.dlq_topic,
            "SEGSCORE_CONSUMER_GROUP": s.consumer_group,
            "SEGSCORE_BATCH_MAX_EVENTS": str(s.batch_max_events),
            "SEGSCORE_WORKER_ID": worker,
            "SEGSCORE_WORKER_METRICS_INTERVAL_SECONDS": "0.5",
            "SEGSCORE_WORKER_METRICS_PORT": str(metrics_port),
            **(extra_env or {}),
        }

    def metrics(self, worker: str) -> Samples:
        """The samples of ``worker``'s metrics file (none before its first write)."""
        path = self.settings.home / "metrics" / f"{worker}.prom"
        try:
            return parse_exposition(path.read_text())
        except FileNotFoundError:
            return {}

    def messages(self, worker: str) -> float:
        """How many messages ``worker`` has handled and acknowledged."""
        return sample_sum(self.metrics(worker), "segscore_worker_messages_total")

    def produce(self, events: list[Event]) -> None:
        """Send ``events`` to the lane's topic, keyed by user."""
        produce_events(self.rig.broker, self.settings.events_topic, events)

    def committed(self) -> int:
        """Sum of the group's committed offsets on the events topic."""
        return asyncio.run(
            committed_offsets(
                self.rig.broker,
                self.settings.consumer_group,
                self.topic,
                self.settings.topic_partitions,
            )
        )

    def wait_committed(
        self, total: int, timeout: float, workers: list[subprocess.Popen]
    ) -> None:
        """Until the group has committed every offset (all workers alive)."""

        def done() -> bool:
            for proc in workers:
                assert proc.poll() is None, f"worker exited: {log_tail(self.rig)}"
            return self.committed() >= total

        eventually(done, timeout, f"{total} offsets committed on {self.topic}")


async def committed_offsets(
    broker: str, group: str, topic: str, partitions: int
) -> int:
    """Sum of ``group``'s committed offsets on ``topic`` (none counts as 0)."""
    # Name the partitions: tansu answers an OffsetFetch for "all partitions of
    # the group" (topics=null) with a response aiokafka cannot decode.
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=5000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
    finally:
        await admin.close()
    return sum(max(o.offset, 0) for o in offsets.values())


def log_tail(rig: Rig, lines: int = 40) -> str:
    """The last ``lines`` of every log in the rig's home, for failure messages."""
    out = []
    for path in sorted((rig.home / "logs").glob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


# --- events and the batch recomputation -----------------------------------------


def simulated(n_users: int, n_events: int, seed: int) -> list[Event]:
    """The first ``n_events`` (by time) of simulated shoppers, ending a minute ago."""
    end = time.time() - 120
    days = max(2, math.ceil(n_events / (n_users * 4.0)))
    sim = simulate(n_users, end - days * 86_400, end, seed=seed)
    assert len(sim.events) >= n_events, "simulate more days"
    return sim.events[:n_events]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOLERANCE


def assert_matches_batch(lane: Lane, events: list[Event], sample: int = 40) -> None:
    """Redis states and Feast online rows equal a batch recomputation of ``events``.

    - every user: stream_features(state in Redis, T) == stream_features(backfill, T)
      for one fixed T (the newest event time), floats within 1e-9;
    - no other users have state;
    - a sample of users: the state Feast reads gives the same features at T.
    """
    expected = backfill(
        events_frame(events), [], lane.settings.allowed_lateness_seconds
    ).states
    client = redis.Redis.from_url(lane.redis_url)
    store = feature_store(lane.settings, lane.redis_url)
    layout = StateLayout.of(store)
    as_of = max(e.ts for e in events)
    actual = load_states(client, layout, expected)
    wrong = []
    for uid, state in expected.items():
        want = stream_features(state, as_of)
        got = stream_features(actual[uid], as_of)
        if not all(_same(got[k], want[k]) for k in want):
            wrong.append((uid, got, want))
    assert not wrong, f"{len(wrong)} users differ, e.g. {wrong[:2]}"
    keys = list(client.scan_iter(count=1000, _type="HASH"))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hexists(key, layout.state_field)
    assert sum(pipe.execute()) == len(expected)

    users = sorted(expected)[:: max(1, len(expected) // sample)]
    blobs = store.get_online_features(
        features=[f"{STREAM_VIEW}:{STATE_FEATURE}"],
        entity_rows=[{"user_id": u} for u in users],
    ).to_dict()[STATE_FEATURE]
    for uid, blob in zip(users, blobs, strict=True):
        want = stream_features(expected[uid], as_of)
        got = stream_features(UserState.from_bytes(blob), as_of)
        assert all(_same(got[c], want[c]) for c in want), (uid, got, want)
