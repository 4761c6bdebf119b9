"""The events of ``segscore bench stream``: fabricated fast, produced, read back bare.

The backlog is produced before the worker starts, and the broker tells which
partition each event went to (the progress tracker follows partitions). The paced
producer offers a fixed rate with event time = send time and hands a sample of
what it sent to the freshness poller. The bare consumer reads the backlog with the
worker's fetch settings and none of its work: the ceiling the worker is measured
against.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from core.events import Event, EventType, parse_event
from segscore.bench.harness import BenchError
from segscore.simulator import CATEGORIES

# Sampled events a second handed to the freshness poller.
SAMPLES_PER_SECOND = 200

# Roughly the mix the simulator's personas produce.
EVENT_MIX: dict[EventType, float] = {
    EventType.PAGE_VIEW: 0.22,
    EventType.PRODUCT_VIEW: 0.38,
    EventType.SEARCH: 0.14,
    EventType.ADD_TO_CART: 0.12,
    EventType.REMOVE_FROM_CART: 0.04,
    EventType.CHECKOUT: 0.04,
    EventType.PURCHASE: 0.06,
}
_TYPES = list(EVENT_MIX)
_TYPE_P = np.array(list(EVENT_MIX.values())) / sum(EVENT_MIX.values())
_WITH_PRODUCT = {
    EventType.PRODUCT_VIEW,
    EventType.ADD_TO_CART,
    EventType.REMOVE_FROM_CART,
    EventType.PURCHASE,
}


class EventFactory:
    """Valid events, fast: vectorised draws, ``Event.model_construct``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._serial = 0

    def batch(self, user_ids: Sequence[str], times: Sequence[float]) -> list[Event]:
        """One event per (user, time), types drawn from :data:`EVENT_MIX`."""
        n = len(user_ids)
        rng = self.rng
        types = rng.choice(len(_TYPES), size=n, p=_TYPE_P).tolist()
        products = rng.integers(0, 5000, size=n).tolist()
        categories = rng.integers(0, len(CATEGORIES), size=n).tolist()
        prices = np.round(rng.gamma(2.0, 25.0, size=n), 2).tolist()
        quantities = rng.integers(1, 3, size=n).tolist()
        ids = rng.bytes(16 * n).hex()
        events = []
        for i in range(n):
            etype = _TYPES[types[i]]
            extra: dict[str, Any] = {}
            if etype in _WITH_PRODUCT:
                extra = {
                    "product_id": f"p{products[i]:05d}",
                    "category": CATEGORIES[categories[i]],
                    "price": prices[i],
                }
            if etype is EventType.PURCHASE:
                extra["quantity"] = quantities[i]
                extra["revenue"] = round(prices[i] * quantities[i], 2)
            events.append(
                Event.model_construct(
                    event_id=ids[32 * i : 32 * i + 32],
                    user_id=user_ids[i],
                    event_type=etype,
                    ts=round(times[i], 3),
                    session_id=f"s{self._serial + i:x}",
                    device="mobile",
                    channel="web",
                    country="DE",
                    **extra,
                )
            )
        self._serial += n
        return events


def bench_user(index: int) -> str:
    """The benchmark's user id for an index."""
    return f"b{index:07d}"


def backlog_events(
    n: int, users: int, end: float, seed: int, prefix: str = "b"
) -> list[Event]:
    """``n`` events of ``users`` users, strictly increasing times ending at ``end``.

    Arrivals are uniform over an hour (longer if needed for 1 ms spacing); users take
    turns in a shuffled order, so each gets about ``n / users`` events. Users are
    ``<prefix>NNNNNNN``; the default prefix makes them :func:`bench_user`'s.
    """
    span = max(3600.0, n / 200.0)
    times = np.round(np.linspace(end - span, end, n), 3).tolist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(n) % users).tolist()
    events = EventFactory(seed + 1).batch([f"{prefix}{i:07d}" for i in order], times)
    for event in events[:: max(1, n // 100)]:
        checked = parse_event(event.to_json())
        if not isinstance(checked, Event):
            raise BenchError(f"fabricated an invalid event: {checked}")
    return events


async def produce_backlog_async(
    broker: str, topic: str, events: Sequence[Event]
) -> list[int]:
    """Produce ``events`` in order; returns the partition each one landed in."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=broker, linger_ms=5, acks="all", max_batch_size=262_144
    )
    await producer.start()
    partitions: list[int] = []
    try:
        for start in range(0, len(events), 5000):
            futures = [
                await producer.send(topic, key=e.user_id.encode(), value=e.to_json())
                for e in events[start : start + 5000]
            ]
            partitions.extend(md.partition for md in await asyncio.gather(*futures))
    finally:
        await producer.stop()
    return partitions


async def raw_consume_async(
    broker: str,
    topic: str,
    expected: Counter[int],
    max_records: int,
    fetch_max_wait_ms: int,
    timeout: float,
) -> dict[str, float]:
    """A bare aiokafka consumer over the backlog: fetch and ``orjson.loads`` only.

    The ceiling our worker is measured against: the same broker, partitions,
    batch size and fetch settings as the worker's consumer, none of its work. It
    reads each partition from the beginning (assigned, no group) until it has
    ``expected[partition]`` records, a count taken from the producer's
    acknowledgements: the bundled broker's end offsets lag behind those, so they
    cannot tell when it is done. Timed like the worker, from the first fetch that
    returned records to the last record, so start-up is excluded.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in expected])
        await consumer.seek_to_beginning()
        seen: Counter[int] = Counter()
        total = sum(expected.values())
        loads = orjson.loads
        t_first = first_count = None
        t_start = time.monotonic()
        deadline = t_start + timeout
        while sum(seen.values()) < total:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"raw consumer read {sum(seen.values())}/{total} in {timeout:.0f}s"
                )
            records = await consumer.getmany(timeout_ms=100, max_records=max_records)
            for tp, part in records.items():
                for record in part:
                    loads(record.value)
                seen[tp.partition] += len(part)
            if records and t_first is None:
                t_first, first_count = time.monotonic(), sum(seen.values())
        t_done = time.monotonic()
    finally:
        await consumer.stop()
    assert t_first is not None and first_count is not None
    counted, seconds = total - first_count, t_done - t_first
    if counted <= 0 or seconds <= 0:
        # All in the first fetch (a tiny backlog): count it, start-up included.
        counted, seconds = total, t_done - t_start
    return {"events_per_s": counted / max(seconds, 1e-9), "seconds": seconds}


async def send_paced(
    broker: str,
    topic: str,
    payloads: list[dict[str, Any]],
    rate: int,
    on_sent: Callable[[int, dict[str, Any], float], None],
) -> tuple[float, float]:
    """Send wire-form ``payloads`` at ``rate`` events/s, keyed by user, each with
    ``ts`` = its send time; ``on_sent(index, payload, send time)`` after each.

    The producer is librdkafka's (confluent-kafka), as a shop's own services or
    collectors would use, with ``acks=all``, librdkafka's default 5 ms linger and
    Kafka's default partitioner. It shares the two cores with what is measured:
    aiokafka, the first producer here, took about a third of a core at 5,000
    events/s (a future and a Python batch per record), CPU the worker then lacked;
    librdkafka takes a fraction of it. A 1 ms linger made ~5x the produce
    requests, and the broker took 0.39-0.43 of the cores instead of 0.17-0.23.

    Returns:
        The wall time of the first send and of the last.

    Raises:
        BenchError: The broker refused or failed to take a record.
    """
    from confluent_kafka import KafkaException, Producer

    total = len(payloads)
    # murmur2: Kafka's default partitioner (Java's, aiokafka's), the one the worker
    # expects; librdkafka's own default would put users elsewhere, and the worker
    # would re-route every record (streams.routing).
    producer = Producer(
        {
            "bootstrap.servers": broker,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    sent = 0
    t0 = last = time.time()
    try:
        while sent < total:
            due = min(total, int((time.time() - t0) * rate) + 1) - sent
            for _ in range(due):
                payload = payloads[sent]
                now = time.time()
                payload["ts"] = round(now * 1000)
                value = orjson.dumps(payload)
                key = payload["user_id"].encode()
                while True:
                    try:
                        producer.produce(topic, value, key, on_delivery=delivered)
                        break
                    except BufferError:  # its queue is full: let it drain
                        producer.poll(0.01)
                on_sent(sent, payload, now)
                sent += 1
            last = time.time()
            producer.poll(0)  # delivery callbacks
            # Paces the loop (librdkafka sends from its own threads).
            await asyncio.sleep(0.002)
        left = await asyncio.to_thread(producer.flush, 60)
    except KafkaException as exc:
        raise BenchError(f"producing to {topic} failed: {exc}") from exc
    if left or failures:
        problem = failures[0] if failures else f"{left} record(s) still queued"
        raise BenchError(f"producing to {topic} failed: {problem}")
    return t0, last


async def paced_produce(
    broker: str,
    topic: str,
    rate: int,
    duration: float,
    users: int,
    seed: int,
    samples: Any,
    samples_per_second: int = SAMPLES_PER_SECOND,
    prefix: str = "b",
) -> dict[str, float]:
    """Send ``rate`` events/s for ``duration`` s of users ``<prefix>NNNNNNN``
    (:func:`bench_user`'s by default); hand sampled ones to the poller."""
    total = max(1, int(rate * duration))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, users, size=total).tolist()
    uids = [f"{prefix}{i:07d}" for i in ids]
    # Built ahead (valid events as wire dicts); only ts is set at send time.
    payloads = [
        orjson.loads(e.to_json())
        for e in EventFactory(seed + 1).batch(uids, [0.0] * total)
    ]
    stride = max(1, round(rate / samples_per_second))
    recent: dict[str, float] = {}
    want_sample = False

    def sample(index: int, payload: dict[str, Any], now: float) -> None:
        nonlocal want_sample
        uid = payload["user_id"]
        want_sample = want_sample or index % stride == 0
        if want_sample and recent.get(uid, 0.0) < now - 1.0:
            samples.put((uid, payload["ts"] / 1000, now))
            recent[uid] = now
            want_sample = False

    t0, last = await send_paced(broker, topic, payloads, rate, sample)
    return {"sent": total, "seconds": max(last - t0, 1e-9)}
