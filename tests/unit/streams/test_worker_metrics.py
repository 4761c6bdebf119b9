"""The worker's batch handling, state cache and metrics, without real services.

The engine runs against the in-memory fakes of Redis and the DLQ topic in
:mod:`tests.support.worker_fakes`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from infra.settings import Settings
from streams import failures, worker_engine
from streams.metrics import (
    WorkerMetrics,
    label_values,
    parse_exposition,
    remove_textfile,
    sample_sum,
    textfile_path,
)
from streams.store_reset import StoreReset
from streams.worker_engine import MAX_BACKOFF_SECONDS
from tests.support.worker_fakes import NOW, batch_of, event_json, make_rig

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
    assert not rig.stored("u3")
    assert len(rig.redis.data) == 2
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
    # Messages are counted when the batch is committed, not before.
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
    assert rig.redis.data == {}
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
    assert not rig.stored("u3")
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
    real = failures.parse_batch

    def fragile(values, **kwargs):
        if b"boom" in values:
            raise RecursionError("validator bug")
        return real(values, **kwargs)

    monkeypatch.setattr(failures, "parse_batch", fragile)
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


def test_freshness_counts_known_times_once_and_keeps_the_worst() -> None:
    metrics = WorkerMetrics("w-8")
    # Unknown (None, 0) skipped; a time after the write counts as age 0.
    metrics.record_write(NOW, [NOW - 0.02, NOW + 5, NOW - 120.0], [None, 0.0], 3)
    samples = parse_exposition(metrics.exposition().decode())
    name = "segscore_worker_event_to_online_seconds"
    assert sample_sum(samples, f"{name}_count") == 3
    assert sample_sum(samples, f"{name}_sum") == pytest.approx(120.02)
    assert sample_sum(samples, f"{name}_bucket", le="0.05") == 2
    assert sample_sum(samples, f"{name}_bucket", le="60.0") == 2
    assert sample_sum(samples, f"{name}_bucket", le="300.0") == 3
    kafka = "segscore_worker_kafka_timestamp_to_online_seconds_count"
    assert sample_sum(samples, kafka) == 0
    last = "segscore_worker_last_batch_max_freshness_seconds"
    assert sample_sum(samples, last, clock="event") == pytest.approx(120.0)
    assert set(label_values(samples, last, "clock")) == {"event"}


def test_positions_are_exposed_per_partition_without_the_broker() -> None:
    metrics = WorkerMetrics("w-9")
    metrics.set_positions({("events", 0): 120, ("events", 1): 7})
    samples = parse_exposition(metrics.exposition().decode())
    name = "segscore_worker_next_offset"
    assert sample_sum(samples, name, partition="0") == 120
    assert sample_sum(samples, name) == 127
    metrics.set_positions({("events", 1): 9})  # partition 0 revoked
    samples = parse_exposition(metrics.exposition().decode())
    assert sorted(label_values(samples, name, "partition")) == ["1"]


# --- the state cache ---------------------------------------------------------------


def test_owned_users_are_read_from_redis_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.handle(batch_of(event_json("a", "u1", 30), first_offset=0))
    rig.handle(batch_of(event_json("b", "u1", 20), first_offset=1))
    assert rig.redis.reads == 1
    assert rig.state("u1").last_event_ts == NOW - 20
    assert rig.state("u1").offsets == {"events:0": 1}


def test_a_failed_write_is_retried_from_the_stored_state(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.handle(batch_of(event_json("a", "u1", 30), first_offset=0))
    # The write of the next batch fails once after the state was changed in memory:
    # the retry must start again from what Redis holds, not count the event twice.
    rig.redis.fail = 1
    rig.handle(batch_of(event_json("b", "u1", 20), first_offset=1))
    state = rig.state("u1")
    assert sum(bucket[0] for bucket in state.minutes.values()) == 2.0
    assert rig.redis.reads == 2


def test_revoked_partitions_are_reread(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.handle(batch_of(event_json("a", "u1", 30), partition=0))
    rig.handle(batch_of(event_json("b", "u2", 30), partition=1))
    rig.engine.partitions_revoked([("events", 0)])
    # Meanwhile another worker wrote u1: this worker must see that write.
    other = make_rig(tmp_path)
    other.redis = rig.redis
    other.engine._redis = rig.redis  # type: ignore[assignment]
    other.handle(batch_of(event_json("c", "u1", 10), first_offset=5))
    rig.handle(batch_of(event_json("d", "u1", 5), first_offset=6))
    rig.handle(batch_of(event_json("e", "u2", 5), partition=1, first_offset=1))
    assert rig.state("u1").last_event_ts == NOW - 5
    assert sum(b[0] for b in rig.state("u1").minutes.values()) == 3.0
    assert rig.redis.reads == 1 + 1 + 1 + 1  # u1, u2, other's u1, u1 again; not u2


# --- a store that lost acknowledged writes -----------------------------------------


def test_a_restarted_store_is_noticed_before_states_are_read(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.handle(batch_of(event_json("a", "u1", 30), first_offset=0))
    # The store restarts (e.g. from an AOF missing its last second of writes).
    rig.redis.run_id = "b" * 40
    # Cached users only: nothing is read, nothing can be folded into a stale state.
    rig.handle(batch_of(event_json("b", "u1", 20), first_offset=1))
    # A user to read: the reset is raised before any state is read or written.
    writes = dict(rig.redis.data)
    with pytest.raises(StoreReset):
        rig.handle(batch_of(event_json("c", "u2", 10), first_offset=2))
    assert rig.redis.data == writes
    rig.engine.store_reset()
    assert len(rig.engine.cache) == 0
    # From then on the new store is the reference: no second reset.
    rig.handle(batch_of(event_json("c", "u2", 10), first_offset=2))
    assert rig.state("u2").last_event_ts == NOW - 10
