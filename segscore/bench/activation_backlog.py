"""The backlog phases of ``segscore bench activation``, and watching its workers.

A backlog is produced before its workers start; its throughput is read from the
per-user states they write to Redis (:class:`BacklogTracker`), never from the
broker's end offsets, which the bundled tansu reports behind what it has
acknowledged. Timed as ``segscore bench stream`` times its own: from the first
state write seen to every user's last event applied.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import redis
from rich.console import Console

from core.events import Event
from core.store.state_store import StateLayout
from segscore.bench.harness import BenchError, CpuMeter
from segscore.bench.stream_events import EventFactory, produce_backlog_async
from segscore.bench.stream_progress import BacklogTracker, verify_states
from segscore.bench.workers import BenchWorkers

POLL_SECONDS = 0.05


def make_backlog(n: int, users: int, end: float, seed: int, prefix: str) -> list[Event]:
    """``n`` events of users ``<prefix>NNNNNNN``, strictly increasing times.

    As :func:`segscore.bench.stream_events.backlog_events` (uniform over an hour,
    users taking turns), with a prefix so the peer's users are fresh too.
    """
    span = max(3600.0, n / 200.0)
    times = np.round(np.linspace(end - span, end, n), 3).tolist()
    order = np.random.default_rng(seed).permutation(np.arange(n) % users).tolist()
    return EventFactory(seed + 1).batch([f"{prefix}{i:07d}" for i in order], times)


def produce(
    console: Console, broker: str, topic: str, events: list[Event]
) -> list[int]:
    """Produce ``events`` to ``topic``; the partition each one landed in."""
    with console.status(f"producing a backlog of {len(events)} events to {topic}"):
        return asyncio.run(produce_backlog_async(broker, topic, events))


def apply_backlog(
    console: Console,
    workers: BenchWorkers,
    tracker: BacklogTracker,
    total: int,
    meter: CpuMeter,
    status: str,
) -> dict[str, Any]:
    """Throughput from the first state write seen to the last event applied."""
    started = time.monotonic()
    timeout = 120 + total / 500
    t_first = applied_first = None
    t_before = started  # the last poll that saw nothing applied
    timeline: list[tuple[float, int]] = []
    with console.status(status):
        while not tracker.complete:
            workers.check()
            if time.monotonic() - started > timeout:
                raise BenchError(
                    f"backlog not applied after {timeout:.0f}s "
                    f"({sum(tracker.applied)}/{total})"
                )
            polled = time.monotonic()
            applied = tracker.poll()
            now = time.monotonic()
            if not applied:
                t_before = polled
            elif t_first is None:
                t_first, applied_first = now, applied
                meter.begin()
            if applied and (not timeline or timeline[-1][1] != applied):
                timeline.append((now, applied))
            if not tracker.complete:
                time.sleep(POLL_SECONDS)
    t_done = time.monotonic()
    assert t_first is not None and applied_first is not None
    cpu = meter.end()
    if applied_first >= total:
        # All applied between two polls: only an upper bound of the time is known.
        seconds, counted = t_done - t_before, total
    else:
        seconds, counted = t_done - t_first, total - applied_first
    seconds = max(seconds, 1e-9)
    rate = round(counted / seconds, 1)
    console.print(f"{status}: {total} events in {seconds:.2f}s -> {rate:.0f} events/s")
    return {
        "apply_s": round(seconds, 3),
        "events_per_s": rate,
        "events_per_s_lower_bound": applied_first >= total,
        "events_per_s_steady": steady_rate(timeline, total),
        "start_to_first_write_s": round(t_first - started, 2),
        "cpu": cpu,
    }


def steady_rate(timeline: list[tuple[float, int]], total: int) -> float | None:
    """Events/s between 10 % and 90 % of the backlog (no start-up or tail)."""
    lo = next((p for p in timeline if p[1] >= 0.1 * total), None)
    hi = next((p for p in timeline if p[1] >= 0.9 * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    return round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1)


def check_states(client: redis.Redis, layout: StateLayout, events: list[Event]) -> None:
    """Fail unless every user's state ends at the last event produced for them."""
    wrong = verify_states(client, layout, events)
    if wrong:
        raise BenchError(f"{wrong} users' states do not end at their last event")


def wait_timers_fired(client: redis.Redis, by: float, workers: BenchWorkers) -> None:
    """Until no timer due by ``by`` is indexed: the backlog's carts have fired.

    Left pending, they would all fall due with the first live events and fire
    in one burst inside the measured phase.
    """
    from streams.triggers import TIMERS_PREFIX

    deadline = time.monotonic() + 90
    while True:
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=TIMERS_PREFIX + b"*"):
            pipe.zcount(key, "-inf", by)
        if not any(pipe.execute()):
            return
        workers.check()
        if time.monotonic() > deadline:
            raise BenchError("the backlog's timers did not fire within 90s")
        time.sleep(0.2)
