"""Fenced writes (:mod:`streams.fencing`): refused for good, never retried or poison.

The consume loop and the engine on the fakes of :mod:`tests.support.worker_fakes`;
the Lua side runs on a real redis-server in
``tests/integration/test_stream_fencing.py``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.store.guarded_write import WriteFenced, WriteGuard
from infra.settings import Settings
from streams import worker_engine
from streams.consumer import EventConsumer
from streams.fencing import Fencing, group_generation
from streams.metrics import sample_sum
from tests.support.worker_fakes import (
    FakeConsumer,
    batch_of,
    event_json,
    make_rig,
    records_of,
)

REFUSAL = WriteFenced(b"segscore:fence:g:events:0", 7, 6)


class RejoiningConsumer(FakeConsumer):
    """The fake consumer with its coordinator's generation and rejoin; its commits
    leave the broker's committed offsets as they were."""

    def __init__(self, committed: dict[Any, int]) -> None:
        super().__init__(committed)
        self.broker_committed = committed
        self.rejoins = 0
        self._coordinator = SimpleNamespace(generation=6, request_rejoin=self._rejoin)

    def _rejoin(self) -> None:
        self.rejoins += 1

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))


def test_a_fenced_batch_is_not_committed_and_the_worker_rejoins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(tmp_path)
    settings = Settings(home=tmp_path, commit_interval_seconds=0.0,
                        commit_durability_lag_seconds=3600.0)  # fmt: skip
    loop = EventConsumer(settings, "unused:1", rig.engine, rig.dlq)
    consumer = RejoiningConsumer({("events", 0): 5})
    loop.consumer = consumer  # type: ignore[assignment]
    engine = rig.engine
    engine.cache.put({"u1": object()}, {"u1": b"k"}, {"u1": ("events", 0)})  # type: ignore[dict-item]

    async def handle(batch, dlq, parsed=None) -> None:
        if batch[0].offset >= 7:
            raise REFUSAL

    engine.handle = handle  # type: ignore[method-assign]

    async def run() -> None:
        # 5 and 6 are written (not committed yet: durability lag), 7 and 8 refused.
        for offset in (5, 6, 7, 8):
            batch = batch_of(b"x", first_offset=offset)
            await loop._process(consumer, records_of(batch))  # type: ignore[arg-type]
        await loop._final_commit(consumer)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="segscore.worker"):
        asyncio.run(run())
    # Nothing committed: the offsets written before belong to the new owner too.
    assert consumer.commits == []
    assert not loop._uncommitted
    assert consumer.seeks == {("events", 0): 5, ("events", 1): 0}
    assert len(engine.cache) == 0
    assert consumer.rejoins == 2
    assert engine.counts["fenced"] == 2
    samples = rig.samples()
    assert sample_sum(samples, "segscore_worker_fenced_batches_total") == 2
    warnings = [r for r in caplog.records if "fenced" in r.getMessage()]
    assert len(warnings) == 1  # once per generation, not per refused batch
    assert engine.counts["store_resets"] == 0  # not taken for a store reset


def test_a_fenced_write_is_neither_retried_nor_poison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(tmp_path)
    guards: list[WriteGuard | None] = []

    def refuse(*args: Any, guard: WriteGuard | None = None, **kwargs: Any) -> None:
        guards.append(guard)
        raise REFUSAL

    monkeypatch.setattr(worker_engine, "save_states", refuse)
    rig.engine.fencing.assigned([("events", 0), ("events", 1)], 6)
    with pytest.raises(WriteFenced):
        rig.handle(batch_of(event_json("e1", "u1", 5.0), event_json("e2", "u2", 4.0)))
    # One attempt, guarded by the fences of every assigned partition.
    assert guards == [rig.engine.fencing.guard()]
    assert guards[0] is not None and guards[0].generation == 6
    assert len(guards[0].fence_keys) == 2
    assert rig.sleeps == []  # not retried
    assert rig.dlq.sent == []  # not poison: the new owner applies these events
    samples = rig.samples()
    assert sample_sum(samples, "segscore_worker_retries_total") == 0
    assert sample_sum(samples, "segscore_worker_dlq_records_total") == 0
    assert len(rig.engine.cache) == 0


def test_writes_are_unguarded_until_an_assignment_with_a_generation() -> None:
    fencing = Fencing("g")
    assert fencing.guard() is None
    fencing.assigned([("t", 1), ("t", 0)], 3)
    assert fencing.guard() == WriteGuard(
        (b"segscore:fence:g:t:0", b"segscore:fence:g:t:1"), 3
    )


def test_the_generation_is_read_from_aiokafkas_coordinator() -> None:
    assert group_generation(SimpleNamespace(_coordinator=SimpleNamespace(generation=4)))
    assert (
        group_generation(SimpleNamespace(_coordinator=SimpleNamespace(generation=0)))
        == 0
    )
    # -1: aiokafka's "no generation" (dropped, rejoining); no group at all.
    assert (
        group_generation(SimpleNamespace(_coordinator=SimpleNamespace(generation=-1)))
        is None
    )
    assert group_generation(SimpleNamespace(_coordinator=None)) is None
