"""Fencing (:mod:`streams.fencing`) on a real redis-server, tansu and worker processes.

A worker frozen past its session timeout loses its partitions without a revoke.
When it wakes with a batch in hand, its writes must be refused: the new owner's
states stay as they are, nothing is committed by it, and it rejoins the group.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis
from redis._parsers import _RESP2Parser

from core.store import guarded_write
from core.store.feast_config import feature_store
from core.store.guarded_write import CHUNK_COMMANDS, WriteFenced, WriteGuard
from core.store.state_store import StateLayout, load_states, save_states
from core.user_state import UserState
from streams.fencing import fence_generation, fence_key
from streams.metrics import label_values, sample_sum
from streams.worker_engine import is_transient
from tests.support.processes import eventually
from tests.support.stream_stack import Lane, Rig, assert_matches_batch, simulated

pytestmark = pytest.mark.timeout(300)


def _user_hashes(lane: Lane) -> dict[bytes, dict[bytes, bytes]]:
    """Every user's hash in the lane's Redis database (fences left out)."""
    client = redis.Redis.from_url(lane.redis_url)
    return {
        key: client.hgetall(key)
        for key in client.scan_iter(count=1000, _type="HASH")
        if not key.startswith(b"segscore:fence:")  # these change on a rejoin
    }


def _quiet_hashes(lane: Lane) -> dict[bytes, dict[bytes, bytes]]:
    """The user hashes once b is idle: the same in two looks a second apart.

    Not at once: b's idle clock fires the backlog's cart timers, and the fired
    records' outbox fields are emptied by its next tick.
    """
    before = _user_hashes(lane)
    for _ in range(30):
        time.sleep(1)
        now = _user_hashes(lane)
        if now == before:
            return now
        before = now
    raise AssertionError("b kept writing user hashes for 30 s")


def _rejoined(lane: Lane, worker: str) -> bool:
    """Whether ``worker`` was assigned partitions after it was fenced (its log:
    the lag gauge of its metrics file still names what it owned before)."""
    log = (lane.settings.home / "logs" / f"{worker}.log").read_text()
    fenced = log.find("fenced: another worker owns")
    return fenced >= 0 and "] assigned [(" in log[fenced:]


def _fenced(lane: Lane, worker: str) -> float:
    return sample_sum(lane.metrics(worker), "segscore_worker_fenced_batches_total")


def _owned(lane: Lane, worker: str) -> set[str]:
    samples = lane.metrics(worker)
    return set(label_values(samples, "segscore_worker_consumer_lag", "partition"))


def test_guarded_writes_check_and_raise_fences_atomically(rig: Rig) -> None:
    client = redis.Redis(port=rig.redis_port, db=9)
    client.flushdb()
    layout = StateLayout(project="fence-unit")
    state = UserState(last_event_ts=1_800_000_000.0, offsets={"t:0": 3})
    fences = (b"f:0", b"f:1")
    client.hset(b"f:1", b"generation", 4)

    # At or above every fence: written, and the lower fence raised with it.
    save_states(
        client, layout, {"a": state}, guard=WriteGuard(fences, 4),
        first=[(b"SET", b"first", b"1")], last=[(b"SET", b"last", b"1")],
    )  # fmt: skip
    assert load_states(client, layout, ["a"])["a"] == state
    assert [fence_generation(client, f) for f in fences] == [4, 4]
    assert client.mget(b"first", b"last") == [b"1", b"1"]

    # Below one fence: nothing at all is written, first and last included.
    client.delete(b"first", b"last")
    newer = UserState(last_event_ts=1_800_000_100.0, offsets={"t:0": 9})
    with pytest.raises(WriteFenced) as refused:
        save_states(
            client, layout, {"a": newer, "b": newer}, guard=WriteGuard(fences, 3),
            first=[(b"SET", b"first", b"1")], last=[(b"SET", b"last", b"1")],
        )  # fmt: skip
    assert (refused.value.fence, refused.value.generation) == (4, 3)
    assert load_states(client, layout, ["a"])["a"] == state
    assert not client.exists(layout.key("b"), b"first", b"last")
    assert [fence_generation(client, f) for f in fences] == [4, 4]

    # A command's error keeps its class, so poison is told from outages as in a
    # pipeline: WRONGTYPE is poison, not an outage.
    client.set(layout.key("c"), b"not a hash")
    with pytest.raises(redis.ResponseError) as wrong:
        save_states(client, layout, {"c": state}, guard=WriteGuard(fences, 4))
    assert "WRONGTYPE" in str(wrong.value) and not is_transient(wrong.value)
    # A command refused when queued aborts its whole transaction.
    with pytest.raises(redis.ResponseError):
        save_states(
            client, layout, {"e": state}, guard=WriteGuard(fences, 4),
            last=[(b"HSET", b"odd")],
        )  # fmt: skip
    assert not client.exists(layout.key("e"))
    # The connections the errors came on were dropped, not handed back mid-reply.
    save_states(client, layout, {"d": state}, guard=WriteGuard(fences, 5))
    assert [fence_generation(client, f) for f in fences] == [5, 5]


def test_a_fence_raised_between_the_read_and_the_write_aborts_the_chunk(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis(port=rig.redis_port, db=10)
    client.flushdb()
    layout = StateLayout(project="fence-race")
    fence = b"f:race"
    client.hset(fence, b"generation", 4)
    rival = redis.Redis(port=rig.redis_port, db=10)
    watch = guarded_write._watch_fences

    def raise_fence_after_the_read(connection: Any, keys: Any) -> list[Any]:
        # The new owner raises the fence after the write read it, before EXEC.
        found = watch(connection, keys)
        rival.hset(fence, b"generation", 5)
        return found

    monkeypatch.setattr(guarded_write, "_watch_fences", raise_fence_after_the_read)
    state = UserState(last_event_ts=1_800_000_000.0, offsets={"t:0": 3})
    with pytest.raises(WriteFenced) as refused:
        save_states(client, layout, {"a": state}, guard=WriteGuard((fence,), 4))
    assert (refused.value.fence, refused.value.generation) == (5, 4)
    assert not client.exists(layout.key("a"))


def test_a_fence_raised_during_a_long_write_stops_it_at_a_chunk(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk's fence read goes with the transaction before it: a fence raised
    after that read aborts the next chunk, which is then refused."""
    client = redis.Redis(port=rig.redis_port, db=12)
    client.flushdb()
    layout = StateLayout(project="fence-race-chunks")
    fence = b"f:race2"
    rival = redis.Redis(port=rig.redis_port, db=12)
    read = guarded_write._read_replies
    calls = []

    def raise_fence_after_the_first_chunk(connection: Any, count: int) -> list:
        replies = read(connection, count)
        calls.append(count)
        if len(calls) == 2:  # the fence read, then the first chunk's transaction
            rival.hset(fence, b"generation", 5)
        return replies

    monkeypatch.setattr(
        guarded_write, "_read_replies", raise_fence_after_the_first_chunk
    )
    n = CHUNK_COMMANDS + 10  # an HSET a user (no TTL): two chunks
    states = {
        f"u{i:05d}": UserState(last_event_ts=1_800_000_000.0 + i, offsets={"t:0": i})
        for i in range(n)
    }
    with pytest.raises(WriteFenced) as refused:
        save_states(client, layout, states, guard=WriteGuard((fence,), 4))
    assert (refused.value.fence, refused.value.generation) == (5, 4)
    written = [u for u in states if client.exists(layout.key(u))]
    assert written == list(states)[:CHUNK_COMMANDS]  # the first chunk, whole


@pytest.mark.parametrize("parser", [None, _RESP2Parser], ids=["hiredis", "python"])
def test_a_long_guarded_write_goes_in_chunks_each_whole(
    rig: Rig, parser: type | None
) -> None:
    # Both reply paths: hiredis's reader read directly, and redis-py's own
    # (a client built with another parser, or without hiredis).
    options = {} if parser is None else {"parser_class": parser}
    pool = redis.ConnectionPool(port=rig.redis_port, db=11, **options)
    client = redis.Redis(connection_pool=pool)
    client.flushdb()
    layout = StateLayout(project="fence-chunks")
    n = CHUNK_COMMANDS * 2 + 7  # three transactions
    states = {
        f"u{i}": UserState(last_event_ts=1_800_000_000.0 + i, offsets={"t:0": i})
        for i in range(n)
    }
    save_states(client, layout, states, guard=WriteGuard((b"f:c",), 2))
    assert load_states(client, layout, list(states)) == states
    assert fence_generation(client, b"f:c") == 2
    # An error reply raises as its class, and the pool's connection still works.
    client.set(b"not-a-hash", b"x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        save_states(
            client,
            layout,
            {},
            last=[(b"HSET", b"not-a-hash", b"f", b"v")],
            guard=WriteGuard((b"f:c",), 2),
        )
    assert client.ping()


def test_a_worker_frozen_past_its_session_cannot_write_over_the_new_owner(
    rig: Rig,
) -> None:
    lane = rig.lane("zombie", db=7, batch_max_events=1000)
    events = simulated(n_users=300, n_events=60_000, seed=21)
    backlog, later = events[:50_000], events[50_000:]
    client = redis.Redis.from_url(lane.redis_url)
    group, topic = lane.settings.consumer_group, lane.topic
    fences = [fence_key(group, topic, p) for p in range(2)]

    lane.produce(backlog)
    before = client.dbsize()
    # One big batch (a whole fetch), frozen while its chunks are being written:
    # a wakes with the rest of that write in hand, the case fencing is for.
    a = lane.start_worker("zombie-a", extra_env={"SEGSCORE_BATCH_MAX_EVENTS": "50000"})
    deadline = time.monotonic() + 120
    while client.dbsize() <= before + len(fences) + 100:  # a's first chunk is in
        assert time.monotonic() < deadline, "a never wrote"
        time.sleep(0.005)
    os.killpg(a.pid, signal.SIGSTOP)
    generation_a = max((fence_generation(client, f) or -1) for f in fences)
    acked_a = lane.messages("zombie-a")
    assert acked_a < len(backlog), "a should freeze mid-backlog"
    try:
        # b's join waits for a's session to run out (2 s), then b owns everything.
        b = lane.start_worker("zombie-b")
        eventually(lambda: _owned(lane, "zombie-b") == {"0", "1"}, 90, "b owns all")
        assert all((fence_generation(client, f) or -1) > generation_a for f in fences)
        lane.wait_committed(len(backlog), 150, [b])
        settled = _quiet_hashes(lane)
        assert_matches_batch(lane, backlog)
    finally:
        os.killpg(a.pid, signal.SIGCONT)

    # a finishes the batch it held on its stale cache: refused, and it rejoins.
    eventually(lambda: _fenced(lane, "zombie-a") >= 1, 60, "a's write refused")
    eventually(lambda: _rejoined(lane, "zombie-a") and _owned(lane, "zombie-b"), 90,
               "a to rejoin and own a partition")  # fmt: skip
    assert a.poll() is None and b.poll() is None
    # Not one user's hash moved: no state went backwards, nothing applied twice.
    assert _user_hashes(lane) == settled
    # a committed nothing of it: the group is at the end, as b left it.
    assert lane.committed() == len(backlog)
    log = (lane.settings.home / "logs" / "zombie-a.log").read_text()
    assert log.count("fenced: another worker owns") == 1
    samples_a = lane.metrics("zombie-a")
    assert sample_sum(samples_a, "segscore_worker_dlq_records_total") == 0
    assert sample_sum(samples_a, "segscore_worker_retries_total") == 0

    # Both go on as a group of two.
    lane.produce(later)
    lane.wait_committed(len(events), 120, [a, b])
    assert lane.messages("zombie-a") > acked_a
    assert_matches_batch(lane, events)


def test_a_fence_left_by_a_broker_that_forgot_the_group_is_lowered(rig: Rig) -> None:
    """The broker lost the group (tansu in memory, restarted): generations restart
    at 0 below the fences Redis kept. The worker's commit is accepted, which proves
    its generation current, so it lowers the fences and works.
    """
    lane = rig.lane("forgot", db=8, batch_max_events=500)
    client = redis.Redis.from_url(lane.redis_url)
    fences = [fence_key(lane.settings.consumer_group, lane.topic, p) for p in (0, 1)]
    for key in fences:
        client.hset(key, b"generation", 1_000)
    events = simulated(n_users=100, n_events=5_000, seed=22)
    lane.produce(events)
    worker = lane.start_worker("forgot-1")
    lane.wait_committed(len(events), 120, [worker])
    assert all((fence_generation(client, key) or -1) < 1_000 for key in fences)
    assert _fenced(lane, "forgot-1") == 0
    assert_matches_batch(lane, events)
    layout = StateLayout.of(feature_store(lane.settings, lane.redis_url))
    assert load_states(client, layout, [events[0].user_id])[events[0].user_id].offsets
