"""The consume loop of :mod:`streams.consumer`: commit after write, against a fake.

The engine under it is the one of :mod:`tests.support.worker_fakes`, its ``handle``
replaced where a test needs a batch to fail or to take time.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from infra.settings import Settings
from streams.consumer import EventConsumer
from streams.store_reset import StoreReset
from tests.support.worker_fakes import (
    FakeConsumer,
    Record,
    batch_of,
    event_json,
    make_rig,
    records_of,
)

# --- commit after write ------------------------------------------------------------


def make_loop(
    tmp_path: Path, commit_interval: float = 0.0, durability_lag: float = 0.0
) -> tuple[EventConsumer, FakeConsumer, list[int]]:
    rig = make_rig(tmp_path)
    settings = Settings(
        home=tmp_path,
        commit_interval_seconds=commit_interval,
        commit_durability_lag_seconds=durability_lag,
    )
    loop = EventConsumer(settings, "unused:1", rig.engine, rig.dlq)
    consumer = FakeConsumer()
    commits_when_handled: list[int] = []

    async def handle(batch, dlq, parsed=None) -> None:
        commits_when_handled.append(len(consumer.commits))

    loop.engine.handle = handle  # type: ignore[method-assign]
    return loop, consumer, commits_when_handled


def test_a_batch_is_committed_only_after_it_is_written(tmp_path: Path) -> None:
    loop, consumer, seen = make_loop(tmp_path)
    first = batch_of(b"1", b"2") + batch_of(b"3", partition=1, first_offset=7)
    second = batch_of(b"4", first_offset=2)

    async def run() -> None:
        await loop._process(consumer, records_of(first))  # type: ignore[arg-type]
        await loop._process(consumer, records_of(second))  # type: ignore[arg-type]

    asyncio.run(run())
    assert seen == [0, 1]
    assert consumer.commits == [
        {("events", 0): 2, ("events", 1): 8},
        {("events", 0): 3},
    ]
    assert loop.engine.next_offsets == {("events", 0): 3, ("events", 1): 8}


def test_a_batch_cut_short_by_shutdown_is_never_committed(tmp_path: Path) -> None:
    loop, consumer, _ = make_loop(tmp_path)

    async def handle(batch, dlq, parsed=None) -> None:
        raise asyncio.CancelledError

    loop.engine.handle = handle  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(loop._process(consumer, records_of(batch_of(b"1"))))  # type: ignore[arg-type]
    assert consumer.commits == []


def test_commits_are_spaced_but_never_ahead_of_writes(tmp_path: Path) -> None:
    loop, consumer, _ = make_loop(tmp_path, commit_interval=3600.0)

    async def run() -> None:
        loop._last_commit = float("-inf")  # the first batch commits, later ones wait
        for offset in range(3):
            batch = batch_of(b"x", first_offset=offset)
            await loop._process(consumer, records_of(batch))  # type: ignore[arg-type]
        await loop._final_commit(consumer)  # type: ignore[arg-type]

    asyncio.run(run())
    assert consumer.commits == [{("events", 0): 1}, {("events", 0): 3}]


def test_a_revocation_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    loop, consumer, _ = make_loop(tmp_path, commit_interval=3600.0)
    loop.consumer = consumer  # type: ignore[assignment]
    order: list[str] = []

    async def handle(batch, dlq, parsed=None) -> None:
        order.append("handle")
        await asyncio.sleep(0.05)

    def revoked(partitions) -> None:
        order.append(f"revoke after {len(consumer.commits)} commit(s)")

    loop.engine.handle = handle  # type: ignore[method-assign]
    loop.engine.partitions_revoked = revoked  # type: ignore[method-assign]

    async def run() -> None:
        batch = loop._process(consumer, records_of(batch_of(b"1")))  # type: ignore[arg-type]
        task = asyncio.create_task(batch)
        await asyncio.sleep(0.01)
        await loop.partitions_revoked(set())
        await task

    asyncio.run(run())
    assert order == ["handle", "revoke after 1 commit(s)"]


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


def test_worker_exits_without_committing_on_an_unexpected_error(
    app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    exits: list[int] = []

    async def run(started=None) -> None:
        raise RuntimeError("a bug")

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(app_module.consumer, "run", run)
    monkeypatch.setattr(app_module.os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        asyncio.run(app_module.consume_events())
    assert exits == [app_module.EXIT_UNEXPECTED]


def test_group_timeouts_are_short_only_for_the_bundled_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.consumer import BUNDLED_BROKER_SESSION_TIMEOUT_MS, group_timeouts

    monkeypatch.delenv("SEGSCORE_CONSUMER_SESSION_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("SEGSCORE_CONSUMER_HEARTBEAT_INTERVAL_MS", raising=False)
    defaults = Settings()
    kafka = group_timeouts(defaults, bundled_broker=False)
    assert kafka.session_ms == defaults.consumer_session_timeout_ms
    tansu = group_timeouts(defaults, bundled_broker=True)
    assert tansu.session_ms == BUNDLED_BROKER_SESSION_TIMEOUT_MS
    assert tansu.heartbeat_ms <= tansu.session_ms // 3
    # A configured session timeout always wins.
    monkeypatch.setenv("SEGSCORE_CONSUMER_SESSION_TIMEOUT_MS", "9000")
    assert group_timeouts(Settings(), bundled_broker=True).session_ms == 9000


# --- a store that lost acknowledged writes -----------------------------------------


def test_offsets_wait_until_their_writes_are_durable(tmp_path: Path) -> None:
    loop, consumer, _ = make_loop(tmp_path, durability_lag=3600.0)

    async def run() -> None:
        for offset in range(2):
            batch = batch_of(b"x", first_offset=offset)
            await loop._process(consumer, records_of(batch))  # type: ignore[arg-type]
        assert consumer.commits == []
        await loop._final_commit(consumer)  # type: ignore[arg-type]

    asyncio.run(run())
    # Leaving the group, every written batch is committed (after a store check).
    assert consumer.commits == [{("events", 0): 2}]


def test_a_store_reset_rewinds_to_the_committed_offsets(tmp_path: Path) -> None:
    loop, consumer, _ = make_loop(tmp_path, durability_lag=3600.0)
    consumer.broker_committed = {("events", 0): 5}
    loop.consumer = consumer  # type: ignore[assignment]
    resets: list[int] = []
    loop.engine.store_reset = lambda: resets.append(1)  # type: ignore[method-assign]

    async def handle(batch, dlq, parsed=None) -> None:
        if batch[0].offset >= 7:
            raise StoreReset("run_id changed")

    loop.engine.handle = handle  # type: ignore[method-assign]

    async def run() -> None:
        for offset in (5, 6, 7):
            batch = batch_of(b"x", first_offset=offset)
            await loop._process(consumer, records_of(batch))  # type: ignore[arg-type]

    asyncio.run(run())
    assert resets == [1]
    assert consumer.commits == []
    # Partition 0 replays from its committed offset, partition 1 from the start.
    assert consumer.seeks == {("events", 0): 5, ("events", 1): 0}
    assert loop.engine.next_offsets[("events", 0)] == 5
    assert not loop._uncommitted


# --- the next batch is fetched while one is written ----------------------------------


class ScriptedConsumer(FakeConsumer):
    """A consumer whose fetches hand out ``script`` in turn, then stop the worker."""

    def __init__(self, script: list[list[Record]], log: list[str]) -> None:
        super().__init__({("events", 0): 5})
        self.script, self.log = script, log
        self.buffered: list[list[Record]] = []  # handed out without waiting

    def subscribe(self, topics: list[str], listener: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        if timeout_ms == 0:  # what is already fetched
            return records_of(self.buffered.pop(0)) if self.buffered else {}
        if not self.script:
            raise asyncio.CancelledError  # as a worker told to stop
        batch = self.script.pop(0)
        self.log.append(f"fetched {batch[0].offset}")
        await asyncio.sleep(0)
        return records_of(batch)


def test_the_next_batch_is_fetched_during_a_write_and_dropped_after_a_rewind(
    tmp_path: Path,
) -> None:
    """While a batch is written the next is fetched and parsed; if the write
    rewinds the partitions (a store reset), that batch is not written: it is
    fetched again after the batches before it. A batch cut short by shutdown is
    not committed."""
    loop, _, _ = make_loop(tmp_path, durability_lag=3600.0)
    log: list[str] = []
    first, second = batch_of(b"a", first_offset=5), batch_of(b"b", first_offset=6)
    consumer = ScriptedConsumer([first, second, first, second], log)
    loop._create = lambda: consumer  # type: ignore[method-assign]
    loop.engine.store_reset = lambda: log.append("reset")  # type: ignore[method-assign]
    resets = iter([True])

    async def handle(batch, dlq, parsed=None) -> None:
        offset = batch[0].offset
        assert parsed is not None and len(parsed.events) + len(parsed.rejections) == 1
        log.append(f"writing {offset}")
        await asyncio.sleep(0.01)  # the write thread's time
        log.append(f"wrote {offset}")
        if offset == 5 and next(resets, False):
            raise StoreReset("run_id changed")

    loop.engine.handle = handle  # type: ignore[method-assign]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(loop.run())
    assert log == [
        "fetched 5",
        "writing 5",
        "fetched 6",  # while 5 is written
        "wrote 5",
        "reset",  # rewound to offset 5: the fetched 6 is dropped
        "fetched 5",
        "writing 5",
        "fetched 6",
        "wrote 5",
        "writing 6",  # then the worker stops: cut short
    ]
    assert consumer.seeks[("events", 0)] == 5
    # On the way out, what was written is committed; the cut batch is not.
    assert consumer.commits == [{("events", 0): 6}]


def test_records_fetched_during_a_write_join_the_batch_fetched_early(
    tmp_path: Path,
) -> None:
    """The batch fetched during a write is topped up, once the write is done, with
    what arrived meanwhile (up to the batch limit): one batch, rejections at the
    right records, and its offsets committed."""
    loop, _, _ = make_loop(tmp_path)
    log: list[str] = []
    first = batch_of(b"a", first_offset=5)
    early = batch_of(event_json("e6", "ann", 10), first_offset=6)
    late = batch_of(b"not json", event_json("e8", "bob", 10), first_offset=7)
    after = batch_of(b"z", first_offset=9)
    consumer = ScriptedConsumer([first, early, after], log)
    consumer.buffered = [late]
    loop._create = lambda: consumer  # type: ignore[method-assign]
    written: list[tuple[list[int], list[str], list[int]]] = []

    async def handle(batch, dlq, parsed=None) -> None:
        written.append(
            (
                [r.offset for r in batch],
                [e.event_id for e in parsed.events],
                [batch[i].offset for i, _ in parsed.rejections],
            )
        )
        await asyncio.sleep(0.01)

    loop.engine.handle = handle  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(loop.run())
    first_batch, topped_up = written[0], written[1]
    assert first_batch[0] == [5]
    assert topped_up == ([6, 7, 8], ["e6", "e8"], [7])
    assert consumer.commits[-1] == {("events", 0): 9}  # not 10: cut short
