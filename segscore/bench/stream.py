"""``segscore bench stream``: broker -> Faust worker -> Redis/Feast, on real components.

Everything runs in a fresh temporary ``SEGSCORE_HOME``: its own redis-server and tansu
broker (:func:`infra.local_stack.up`), the Feast repo applied, and real worker
subprocesses (:func:`infra.processes.start_worker`) in one consumer group: as many as
``segscore worker`` runs on the machine (``--workers`` to choose; the default is one
per core, at most one per partition, :func:`infra.processes.worker_process_count`).
A worker process is single-threaded by Python's interpreter lock: one took 0.6-0.8
of a core and 8,000-11,000 events/s here, so a second core is used by a second
process, as a deployment scales out. ``events_per_s_per_worker`` and the CPU of
each worker are reported. Three measurements:

Throughput (backlog)
    N valid events (uniform arrival over the last hour, round-robin over U users) are
    produced *before* the worker starts, so the worker reads a backlog; the broker
    tells which partition each event went to. Progress is observed through the
    per-user state keys in Redis: per partition, every ``CHECKPOINT_EVERY``-th event
    (and the last one) is a checkpoint, and a checkpoint is applied once its user's
    ``last_event_ts`` has reached the checkpoint's event time (event times strictly
    increase, and a partition is applied in order, batch by batch). Each poll (every
    50 ms) reads at most ``POLL_WINDOW`` keys per partition, so the measurement costs
    the worker and Redis next to nothing. ``events_per_s`` counts the events applied
    after the first observed write, divided by the time from that write to the moment
    the last event of every partition is applied. Afterwards every user's state is
    checked against the last event produced for it.

Bare consumer (same backlog, same run)
    Once the worker has applied the backlog, a bare aiokafka consumer (same fetch
    settings and batch size, no group) reads the same events from the beginning and
    only ``orjson.loads`` each one: ``raw_consumer_events_per_s``, timed like the
    worker from its first fetch. ``worker_share_of_raw`` = ``events_per_s`` / that:
    on a shared machine absolute rates swing, the share much less.

Nothing here reads the broker's end offsets (high watermarks): the bundled tansu
reports them behind records it has acknowledged, so "caught up" or "done" decided
from them would be wrong. The worker's progress is read from the states it wrote
to Redis; the bare consumer stops at the record counts the producer was
acknowledged for.

``worker_start_to_first_write_s`` runs from just before the worker process is
spawned to the first poll that sees one of its state writes in Redis.

Freshness (fixed offered rate)
    With the worker caught up, a paced librdkafka producer sends ``rate`` events/s
    for ``duration`` seconds of the users whose backlog the worker just read (in
    every repeat; see :func:`_users_prefix`), each with event time = its send time.
    About ``SAMPLES_PER_SECOND`` of them per second (distinct users within any
    second) are handed to a separate poller *process* that reads them back through
    Feast (``get_online_features(["user_stream_features:state"])``) until the user's
    state shows ``last_event_ts`` >= the event's time. Freshness = the end of that
    successful read minus the send time, so it is an upper bound that includes one
    Feast read and up to one poll period (both reported). Each read asks for a page
    of the ``POLL_PAGE_USERS`` oldest pending samples, and the next page only when
    all of that page was seen, so a lagging worker does not also lose CPU to the
    poller (reading every pending sample through Feast took a lagging run's poller a
    whole core, and the lag then fed on itself). Samples still unseen 30 s after the
    last send count with the time they waited (``freshness_unresolved`` says how
    many; the percentiles are then lower bounds). ``freshness_trend_ms_per_s``
    (slope of freshness over send time) tells a worker that keeps up (~0) from one
    falling behind the offered rate (> 0: the percentiles then only grow with the
    duration).

Repeats
    The stack is started once; both measurements then run ``repeats`` times
    (default 3), each repeat with a backlog of fresh users read by a freshly
    started worker (stopped at the end of its repeat) and its own paced phase
    and poller. Every number is reported as the median of its repeats with each
    repeat's value, the spread and the 1-minute load average of each repeat
    (:func:`segscore.bench.repeats.summarize_numbers`). Every repeat's bare
    consumer reads the first repeat's backlog from the start of the topic: the
    same kind of events, counted from the producer's acknowledgements. ``--quick``
    is one repeat of a 20,000-event backlog and a 5 s paced phase, for CI.

Everything started is stopped at the end, also on errors and Ctrl-C. This module
runs the measurements and reports them; the events and what produces and reads
them are in :mod:`segscore.bench.stream_events`, the readers of the worker's
progress in :mod:`segscore.bench.stream_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rich.console import Console

from core.store.state_store import StateLayout
from infra.processes import worker_process_count
from segscore.bench.harness import (
    BenchError,
    CpuMeter,
    bench_environment,
    log_tail,
    machine_facts,
    percentiles_ms,
    profile_report,
    report_rows,
    report_table,
    sigterm_as_interrupt,
    start_profiler,
    stop_profiler,
    wait_for_reply,
)
from segscore.bench.repeats import (
    DEFAULT_REPEATS,
    chosen_options,
    load_average,
    summarize_numbers,
)
from segscore.bench.stream_events import (
    backlog_events,
    paced_produce,
    produce_backlog_async,
    raw_consume_async,
)
from segscore.bench.stream_progress import (
    BacklogTracker,
    freshness_poller,
    verify_states,
)
from segscore.bench.workers import BenchWorkers

BACKLOG_POLL_SECONDS = 0.05
FRESHNESS_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class BenchConfig:
    """What to run."""

    events: int = 100_000
    rate: int = 5_000
    users: int = 10_000
    duration: float = 15.0
    seed: int = 7
    batch_max_events: int | None = None
    batch_max_seconds: float | None = None
    repeats: int = DEFAULT_REPEATS
    # None: as many as ``segscore worker`` runs on this machine.
    workers: int | None = None
    profile: Path | None = None
    keep_home: bool = False


# What ``--quick`` changes: one repeat of a small backlog and a short paced phase.
QUICK: dict[str, Any] = {"repeats": 1, "events": 20_000, "duration": 5.0}


def make_config(quick: bool = False, **given: Any) -> BenchConfig:
    """A config from the options given (``None`` = not given) and ``--quick``.

    See :func:`segscore.bench.repeats.chosen_options` (``quick`` fills in
    :data:`QUICK`).
    """
    chosen = chosen_options(given, quick, QUICK)
    return BenchConfig(**chosen)


def run_bench(config: BenchConfig, console: Console) -> dict[str, Any]:
    """Run both measurements on a private stack (see :func:`flat` for JSON)."""
    with (
        sigterm_as_interrupt(),
        bench_environment(
            config.keep_home,
            "segscore-bench-",
            cleared=("SEGSCORE_REDIS_URL", "SEGSCORE_KAFKA_BROKER"),
            restored=("SEGSCORE_BATCH_MAX_EVENTS", "SEGSCORE_BATCH_MAX_SECONDS"),
        ) as home,
    ):
        return _run(config, console, home)


@dataclass
class _Rig:
    """What every repeat runs against: the stack, its settings and its clients."""

    config: BenchConfig
    console: Console
    home: Path
    settings: Any
    stack: Any
    client: redis.Redis
    layout: StateLayout
    users: int
    stack_pids: dict[str, int]
    workers: int


def _run(config: BenchConfig, console: Console, home: Path) -> dict[str, Any]:
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra import local_stack
    from infra.settings import get_settings
    from infra.topics import ensure_topics

    extra_env: dict[str, str] = {}
    if config.batch_max_events is not None:
        extra_env["SEGSCORE_BATCH_MAX_EVENTS"] = str(config.batch_max_events)
    if config.batch_max_seconds is not None:
        extra_env["SEGSCORE_BATCH_MAX_SECONDS"] = str(config.batch_max_seconds)
    os.environ.update(extra_env)
    settings = get_settings()
    users = max(1, min(config.users, config.events))
    workers = config.workers or worker_process_count(settings)
    result: dict[str, Any] = {
        "workers": workers,
        "events": config.events,
        "users": users,
        "offered_rate": config.rate,
        "duration_s": config.duration,
        "worker_batch_max_events": settings.batch_max_events,
        "worker_batch_max_seconds": settings.batch_max_seconds,
        "topic_partitions": settings.topic_partitions,
        **machine_facts(),
    }
    console.print(f"bench home {home}")
    try:
        stack = local_stack.up(settings)
        ensure_topics(stack.kafka_broker, settings)
        store = feature_store(settings, stack.redis_url)
        apply_repo(store)
        rig = _Rig(
            config=config,
            console=console,
            home=home,
            settings=settings,
            stack=stack,
            client=redis.Redis.from_url(stack.redis_url, socket_timeout=5.0),
            layout=StateLayout.of(store),
            users=users,
            stack_pids={s.name: s.pid for s in stack.started},
            workers=workers,
        )
        runs: list[dict[str, Any]] = []
        first: Counter[int] | None = None
        for repeat in range(config.repeats):
            if config.repeats > 1:
                console.print(f"repeat {repeat + 1} of {config.repeats}")
            run, partitions = _repeat(rig, repeat, first)
            first = first if first is not None else partitions
            runs.append(flat(run))
        result.update(summarize_numbers(runs))
        if config.profile is not None:
            result.update(profile_report(console, config.profile, "worker"))
        return result
    except BenchError:
        console.print(f"logs kept in {home / 'logs'}")
        raise
    finally:
        with contextlib.suppress(Exception):
            local_stack.down(settings)


def _repeat(
    rig: _Rig, repeat: int, first: Counter[int] | None
) -> tuple[dict[str, Any], Counter[int]]:
    """One repeat: a backlog of fresh users read by a fresh worker, then freshness.

    Returns the repeat's result and its backlog's records per partition. The
    first repeat's backlog is what every repeat's bare consumer reads (``first``):
    it reads from the start of the topic, and later backlogs are the same kind of
    events behind it.
    """
    config, console, settings = rig.config, rig.console, rig.settings
    name = "bench-worker" if repeat == 0 else f"bench-worker-r{repeat + 1}"
    result: dict[str, Any] = {}
    workers: BenchWorkers | None = None
    profiler = None
    try:
        with console.status(f"producing a backlog of {config.events} events"):
            # Fresh users each repeat: a backlog of users the store already has
            # newer states of would look applied before the worker read it.
            prefix = _users_prefix(repeat)
            events = backlog_events(
                config.events,
                rig.users,
                time.time() - 60,
                config.seed + repeat,
                prefix,
            )
            t_produce = time.monotonic()
            partitions = asyncio.run(
                produce_backlog_async(
                    rig.stack.kafka_broker, settings.events_topic, events
                )
            )
            result["backlog_produce_s"] = round(time.monotonic() - t_produce, 2)
        tracker = BacklogTracker(rig.client, rig.layout, events, partitions)

        # From before the worker process exists to the first of its state writes
        # that Redis shows: start-up, imports, group join and the first batch.
        started = time.monotonic()
        workers = BenchWorkers(settings, name, rig.workers, {})
        meter = CpuMeter({**workers.pids(), **rig.stack_pids})
        timeout = 120 + config.events / 500
        t_first = applied_first = None
        t_before = started  # the last poll that saw nothing applied
        timeline: list[tuple[float, int]] = []
        with console.status("worker reading the backlog"):
            while not tracker.complete:
                workers.check()
                if time.monotonic() - started > timeout:
                    raise BenchError(
                        f"backlog not applied after {timeout:.0f}s "
                        f"({sum(tracker.applied)}/{config.events})"
                    )
                polled = time.monotonic()
                applied = tracker.poll()
                now = time.monotonic()
                if not applied:
                    t_before = polled
                if applied and t_first is None:
                    t_first, applied_first = now, applied
                    meter.begin()
                    if config.profile is not None and repeat == 0:
                        profiler = start_profiler(
                            workers.procs[0].pid,
                            config.profile,
                            rig.home / "logs" / "py-spy.log",
                        )
                if applied and (not timeline or timeline[-1][1] != applied):
                    timeline.append((now, applied))
                if not tracker.complete:
                    time.sleep(BACKLOG_POLL_SECONDS)
        t_done = time.monotonic()
        assert t_first is not None and applied_first is not None
        result["backlog_cpu"] = meter.end()
        if profiler is not None:
            stop_profiler(profiler)
            profiler = None
        result["worker_start_to_first_write_s"] = round(t_first - started, 2)
        lower_bound = applied_first >= config.events
        if lower_bound:
            # All applied between two polls: all we know is an upper bound of time.
            seconds, counted = t_done - t_before, config.events
        else:
            seconds, counted = t_done - t_first, config.events - applied_first
        seconds = max(seconds, 1e-9)
        result["backlog_apply_s"] = round(seconds, 3)
        result["events_per_s"] = round(counted / seconds, 1)
        result["events_per_s_per_worker"] = round(counted / seconds / rig.workers, 1)
        result["events_per_s_lower_bound"] = lower_bound
        result["events_per_s_steady"] = _steady_rate(timeline, config.events)
        wrong = verify_states(rig.client, rig.layout, events)
        result["states_wrong"] = wrong
        if wrong:
            raise BenchError(f"{wrong} users' states do not end at their last event")
        console.print(
            f"backlog: {config.events} events in {seconds:.2f}s "
            f"-> {result['events_per_s']:.0f} events/s"
        )

        with console.status("a bare consumer reading the same backlog"):
            raw = asyncio.run(
                raw_consume_async(
                    rig.stack.kafka_broker,
                    settings.events_topic,
                    first if first is not None else Counter(partitions),
                    settings.batch_max_events,
                    settings.consumer_fetch_max_wait_ms,
                    timeout,
                )
            )
        result["raw_consumer_events_per_s"] = round(raw["events_per_s"], 1)
        result["worker_share_of_raw"] = round(
            result["events_per_s"] / raw["events_per_s"], 3
        )
        console.print(
            f"bare consumer (fetch + orjson.loads): "
            f"{raw['events_per_s']:.0f} events/s; "
            f"the worker did {result['worker_share_of_raw']:.0%} of that"
        )
        result.update(_freshness(rig, repeat, workers))
        result["load_avg_1m"] = load_average()
        return result, Counter(partitions)
    except BenchError:
        if workers is not None:
            for log in workers.logs:
                console.print(f"{log.name} tail:\n{log_tail(log, 15)}")
        raise
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        if workers is not None:
            workers.stop()


def _users_prefix(repeat: int) -> str:
    """The user ids of a repeat: its backlog's and its paced phase's.

    The paced phase sends events of the users the repeat's fresh worker has just
    read the backlog of, in every repeat alike: the users of an earlier repeat
    would be states that worker loads from Redis first (a restart's cold start,
    which ``worker_start_to_first_write_s`` and the backlog already time).
    """
    return "b" if repeat == 0 else f"r{repeat}u"


def _freshness(rig: _Rig, repeat: int, workers: BenchWorkers) -> dict[str, Any]:
    """The paced phase with a poller process reading sampled events back."""
    config, settings = rig.config, rig.settings
    result: dict[str, Any] = {}
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    poller = ctx.Process(
        target=freshness_poller,
        args=(
            str(rig.home),
            rig.stack.redis_url,
            inbox,
            outbox,
            FRESHNESS_POLL_SECONDS,
            30.0,
        ),
        daemon=True,
    )
    poller.start()
    try:
        _from_poller(outbox, poller, 120, "the freshness poller to start")
        meter = CpuMeter({**workers.pids(), **rig.stack_pids})
        meter.begin()
        with rig.console.status(
            f"producing {config.rate} events/s for {config.duration:g}s"
        ):
            produced = asyncio.run(
                paced_produce(
                    rig.stack.kafka_broker,
                    settings.events_topic,
                    config.rate,
                    config.duration,
                    rig.users,
                    config.seed + 100 + repeat,
                    inbox,
                    prefix=_users_prefix(repeat),
                )
            )
        result["freshness_cpu"] = meter.end()
        inbox.put(None)
        with rig.console.status("waiting for the last sampled events"):
            fresh = _from_poller(outbox, poller, 90, "freshness results")
        poller.join(timeout=10)
    finally:
        if poller.is_alive():
            poller.terminate()
            poller.join(timeout=5)
    workers.check()
    result["achieved_rate"] = round(produced["sent"] / produced["seconds"], 1)
    result["freshness_unresolved"] = len(fresh["unresolved"])
    result["freshness_read_ms"] = round(fresh["read_ms_mean"], 2)
    result["freshness_poll_cycle_ms"] = round(fresh["cycle_ms_mean"], 2)
    if not fresh["latencies"]:
        raise BenchError("no sampled event became visible through Feast")
    # Unresolved samples count with their wait so far: percentiles stay honest
    # (lower bounds) when the worker could not keep up.
    result.update(freshness_stats(fresh["latencies"] + fresh["unresolved"]))
    return result


def freshness_stats(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Percentiles of (sent at, seconds to visible) samples, and their trend.

    The trend is the least-squares slope of freshness over send time: near 0 when
    the worker keeps up with the offered rate, about (1 - capacity / rate) * 1000 ms
    per second when it does not.
    """
    sent = np.array([p[0] for p in pairs], dtype=float)
    seconds = [p[1] for p in pairs]
    ms = np.array(seconds, dtype=float) * 1000
    p50, p90, p99 = percentiles_ms(seconds, (50, 90, 99), digits=1)
    trend = float(np.polyfit(sent - sent.min(), ms, 1)[0]) if len(ms) > 2 else 0.0
    return {
        "freshness_samples": len(ms),
        "freshness_p50_ms": p50,
        "freshness_p90_ms": p90,
        "freshness_p99_ms": p99,
        "freshness_max_ms": round(float(ms.max()), 1),
        "freshness_trend_ms_per_s": round(trend, 1),
    }


def _from_poller(box: Any, proc: Any, timeout: float, what: str) -> dict[str, Any]:
    return wait_for_reply(
        box,
        proc,
        timeout,
        died=f"the poller process died waiting for {what}",
        late=f"timed out waiting for {what}",
    )


def _steady_rate(timeline: list[tuple[float, int]], total: int) -> float | None:
    """Events/s between 10 % and 90 % of the backlog (no start-up or tail)."""
    lo = next((p for p in timeline if p[1] >= 0.1 * total), None)
    hi = next((p for p in timeline if p[1] >= 0.9 * total), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    return round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1)


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The result as a table: medians with spread and repeats."""
    rows = [row for row in report_rows(flat(result)) if row[0] != "profile_top_self"]
    console.print(report_table("segscore bench stream", rows))


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """The result with nested CPU shares spread into top-level keys."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for name, share in value.items():
                out[f"{key}_{name}"] = share
        else:
            out[key] = value
    return out
