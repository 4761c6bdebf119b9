"""``segscore bench activation``: segment changes and triggers, from cause to Kafka.

Everything runs in a fresh temporary ``SEGSCORE_HOME``: its own redis-server and
tansu broker, a champion model pair trained on a small simulation (so live
segments run), a rules file with the four shipped rules whose cart timer is
``cart_after`` seconds (:func:`~segscore.bench.activation_traffic.rules_text`),
and real worker subprocesses (as many as ``segscore worker`` runs on the machine
unless ``workers`` says; they split the topic's partitions) with live segments and
triggers on. Three phases:

Backlog with activations on
    N events of U users are produced before the worker starts; throughput is
    measured as ``segscore bench stream`` does, from the worker's first state
    write that Redis shows to the last event of every partition applied (read
    from the states, never from the broker's end offsets): ``events_per_s``.

Live
    The worker caught up (and the backlog's timers fired), a paced producer
    offers ``rate`` events/s for ``duration`` s with event time = send time;
    a share is crafted to cause known records
    (:mod:`segscore.bench.activation_traffic`). A reader process reads the
    ``segment-changes`` and ``triggers`` topics. For every record caused by a
    live event: trigger and segment-change latency = read time - the causing
    event's send time; for a timer, lateness = read time - its due time
    (``at_ts``). Timers due less than a second before the last send (or after
    it) are counted apart (``timers_due_after_traffic``): their partitions'
    clocks then move by the idle rule, not by events. Every crafted cause
    must get its record: ``missing_activations`` names those that did not.

Peer backlog (``peer``)
    The same backlog size, fresh users on a topic of its own, read by as many
    other workers with live segments and triggers off:
    ``events_per_s_without_activation``.

Repeats
    The stack is started and the pair trained once; the three phases then run
    ``repeats`` times (default 3), each repeat with backlog, crafted and peer
    users of its own and workers started for it. Every number is reported as
    the median of its repeats with each repeat's value, the spread and the
    1-minute load average of each repeat
    (:func:`segscore.bench.repeats.summarize_numbers`); the verdicts read the
    medians. Counts of what went wrong (``missing_activations``,
    ``duplicate_records``) and of what was expected are totals over the
    repeats: a median would hide the one repeat that missed something. Each
    repeat's reader reads the output topics from the beginning, earlier
    repeats' records included (``records_before_live``); only records caused by
    its own live events are timed. ``--quick`` is one repeat of a 20,000-event
    backlog and a 10 s live phase, for CI.

Everything started is stopped at the end, also on errors and Ctrl-C. The
traffic is in :mod:`segscore.bench.activation_traffic`, the backlog phases in
:mod:`segscore.bench.activation_backlog`, the report in
:mod:`segscore.bench.activation_report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from core.store.state_store import StateLayout
from segscore.bench.activation_backlog import (
    apply_backlog,
    check_states,
    make_backlog,
    produce,
    wait_timers_fired,
)
from segscore.bench.activation_report import flat, live_stats, verdicts
from segscore.bench.activation_traffic import (
    Matcher,
    activation_reader,
    paced_send,
    plan_live,
    rules_text,
)
from segscore.bench.harness import (
    BenchError,
    CpuMeter,
    bench_environment,
    log_tail,
    machine_facts,
    profile_report,
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
from segscore.bench.stream_progress import BacklogTracker
from segscore.bench.workers import BenchWorkers

PEER_TOPIC = "events-bench-peer"
PEER_GROUP = "segscore-bench-peer"
READER_FETCH_WAIT_MS = 10
IDLE_SECONDS = 2.0
# Counts of what went wrong, summed over the repeats rather than their median.
TOTALS = (
    "expected_activations",
    "expected_activations_seen",
    "missing_activations",
    "duplicate_records",
)
# Variables of the caller's shell that would change what the worker runs.
CLEARED = (
    "BENTOML_HOME",
    "SEGSCORE_REDIS_URL",
    "SEGSCORE_KAFKA_BROKER",
    "SEGSCORE_SEGMENTER_VERSION",
    "SEGSCORE_PROPENSITY_VERSION",
    "SEGSCORE_LIVE_SEGMENTS",
    "SEGSCORE_TRIGGERS",
    "SEGSCORE_RULES_PATH",
    "SEGSCORE_EVENTS_TOPIC",
    "SEGSCORE_CONSUMER_GROUP",
    "SEGSCORE_SEGMENT_CHANGES_TOPIC",
    "SEGSCORE_TRIGGERS_TOPIC",
    "SEGSCORE_TIMER_IDLE_SECONDS",
)


@dataclass(frozen=True)
class ActivationConfig:
    """What to run."""

    rate: int = 5_000
    duration: float = 30.0
    events: int = 200_000
    users: int = 10_000
    cart_after: float = 10.0
    train_users: int = 300
    train_days: float = 21.0
    peer: bool = True
    seed: int = 7
    batch_max_events: int | None = None
    batch_max_seconds: float | None = None
    # In one consumer group; None: what ``segscore worker`` runs on this machine
    # (infra.processes.worker_process_count). The verdict on events_per_s is per
    # worker.
    workers: int | None = None
    repeats: int = DEFAULT_REPEATS
    profile: Path | None = None  # py-spy the worker over the live phase
    keep_home: bool = False


# What ``--quick`` changes: one repeat, a small backlog, a short live phase.
QUICK: dict[str, Any] = {"repeats": 1, "events": 20_000, "duration": 10.0}


def make_config(quick: bool = False, **given: Any) -> ActivationConfig:
    """A config from the options given (``None`` = not given) and ``--quick``.

    See :func:`segscore.bench.repeats.chosen_options` (``quick`` fills in
    :data:`QUICK`).
    """
    chosen = chosen_options(given, quick, QUICK)
    return ActivationConfig(**chosen)


def run_activation_bench(config: ActivationConfig, console: Console) -> dict[str, Any]:
    """Run every phase on a private stack; returns the flat result."""
    with (
        sigterm_as_interrupt(),
        bench_environment(
            config.keep_home,
            "segscore-bench-activation-",
            cleared=CLEARED,
            restored=(
                "SEGSCORE_BATCH_MAX_EVENTS",
                "SEGSCORE_BATCH_MAX_SECONDS",
                "SEGSCORE_TOPIC_PARTITIONS",
                "BENTOML_DO_NOT_TRACK",
            ),
        ) as home,
    ):
        os.environ["BENTOML_HOME"] = str(home / "bentoml")
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        if config.batch_max_events is not None:
            os.environ["SEGSCORE_BATCH_MAX_EVENTS"] = str(config.batch_max_events)
        if config.batch_max_seconds is not None:
            os.environ["SEGSCORE_BATCH_MAX_SECONDS"] = str(config.batch_max_seconds)
        from infra.processes import worker_process_count
        from infra.settings import get_settings

        if config.workers is None:
            config = replace(config, workers=worker_process_count(get_settings()))
        if config.workers > get_settings().topic_partitions:
            # A partition for every worker; the extra ones would idle otherwise.
            os.environ["SEGSCORE_TOPIC_PARTITIONS"] = str(config.workers)
        return _run(config, console, home)


def _run(config: ActivationConfig, console: Console, home: Path) -> dict[str, Any]:
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra import local_stack
    from infra.settings import get_settings
    from infra.topics import ensure_topics

    settings = get_settings()
    users = max(1, min(config.users, config.events))
    rules = home / "bench_rules.yaml"
    rules.write_text(rules_text(config.cart_after))
    result: dict[str, Any] = {
        "offered_rate": config.rate,
        "duration_s": config.duration,
        "events": config.events,
        "users": users,
        "cart_after_s": config.cart_after,
        "worker_batch_max_events": settings.batch_max_events,
        "worker_batch_max_seconds": settings.batch_max_seconds,
        "timer_idle_seconds": settings.timer_idle_seconds,
        "topic_partitions": settings.topic_partitions,
        "workers": config.workers,
        "reader_fetch_max_wait_ms": READER_FETCH_WAIT_MS,
        **machine_facts(),
    }
    console.print(f"bench home {home}")
    try:
        stack = local_stack.up(settings)
        ensure_topics(stack.kafka_broker, settings)
        peer_settings = settings.model_copy(update={"events_topic": PEER_TOPIC})
        ensure_topics(stack.kafka_broker, peer_settings)
        store = feature_store(settings, stack.redis_url)
        apply_repo(store)
        result.update(_train(config, settings, console))
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
            worker_env={"SEGSCORE_RULES_PATH": str(rules)},
        )
        runs = []
        for repeat in range(config.repeats):
            if config.repeats > 1:
                console.print(f"repeat {repeat + 1} of {config.repeats}")
            runs.append(flat(_repeat(rig, repeat)))
        result.update(summarize_numbers(runs, totals=TOTALS))
        result["missing_examples"] = "; ".join(
            run["missing_examples"] for run in runs if run["missing_examples"]
        )
        result.update(verdicts(result))
        return flat(result)
    except BenchError:
        for path in sorted((home / "logs").glob("bench-*worker*.log")):
            console.print(f"{path.stem} log tail:\n{log_tail(path, 15)}")
        console.print(f"logs kept in {home / 'logs'}")
        raise
    finally:
        with contextlib.suppress(Exception):
            local_stack.down(settings)


@dataclass
class _Rig:
    """What every repeat runs against: the stack, its settings and its clients."""

    config: ActivationConfig
    console: Console
    home: Path
    settings: Any
    stack: Any
    client: redis.Redis
    layout: StateLayout
    users: int
    stack_pids: dict[str, int]
    worker_env: dict[str, str]


def _repeat(rig: _Rig, repeat: int) -> dict[str, Any]:
    """One repeat of the three phases, with users and workers of its own.

    Its backlog's users, its crafted live users and its peer's users are fresh
    (tagged with the repeat), so nothing of an earlier repeat looks done already;
    its workers start before its backlog is read and stop at its end.
    """
    config, console, settings = rig.config, rig.console, rig.settings
    stack, client, layout, stack_pids = (
        rig.stack,
        rig.client,
        rig.layout,
        rig.stack_pids,
    )
    tag = "" if repeat == 0 else f"r{repeat}"
    suffix = "" if repeat == 0 else f"-r{repeat + 1}"
    result: dict[str, Any] = {}
    workers: BenchWorkers | None = None
    reader: Any = None
    profiler: subprocess.Popen | None = None
    try:
        # -- backlog, activations on ----------------------------------------
        end = time.time() - 60
        prefix = f"b{tag}"
        events = make_backlog(
            config.events, rig.users, end, config.seed + repeat, prefix
        )
        partitions = produce(console, stack.kafka_broker, settings.events_topic, events)
        workers = BenchWorkers(
            settings, f"bench-worker{suffix}", config.workers, rig.worker_env
        )
        meter = CpuMeter({**workers.pids(), **stack_pids})
        timed = apply_backlog(
            console, workers, BacklogTracker(client, layout, events, partitions),
            len(events), meter, "worker reading the backlog (segments and triggers on)",
        )  # fmt: skip
        result.update({f"backlog_{k}": v for k, v in timed.items()})
        result["events_per_s"] = timed["events_per_s"]
        result["events_per_s_per_worker"] = round(
            timed["events_per_s"] / config.workers, 1
        )
        check_states(client, layout, events)

        # -- live -----------------------------------------------------------
        with console.status("waiting for the backlog's timers to fire"):
            wait_timers_fired(client, end + config.cart_after + 1, workers)
        ctx = mp.get_context("spawn")
        inbox, outbox = ctx.Queue(), ctx.Queue()
        reader = ctx.Process(
            target=activation_reader,
            args=(
                stack.kafka_broker,
                [settings.segment_changes_topic, settings.triggers_topic],
                settings.topic_partitions,
                READER_FETCH_WAIT_MS,
                inbox,
                outbox,
            ),
            daemon=True,
        )
        reader.start()
        plan = plan_live(
            config.rate,
            config.duration,
            [f"{prefix}{i:07d}" for i in range(rig.users)],
            config.cart_after,
            config.seed + 100 + repeat,
            tag,
        )
        matcher = Matcher(plan.expected, settings.segment_changes_topic)
        with console.status("the reader catching up with the backlog's records"):
            _reply(outbox, reader, 120, "the reader to start", "ready")
            _collect(outbox, reader, matcher, until="quiet", timeout=120)
        backlog_records = len(matcher.records)
        # The cost of standing still: the worker's and the reader's idle polls
        # (the broker answers every one), the baseline under the live numbers.
        meter = CpuMeter({**workers.pids(), "reader": reader.pid, **stack_pids})
        meter.begin()
        time.sleep(IDLE_SECONDS)
        result["idle_cpu"] = meter.end()
        if config.profile is not None and repeat == 0:
            profiler = start_profiler(
                workers.procs[0].pid, config.profile, rig.home / "logs" / "py-spy.log"
            )
        # The producer is this process: it shares the two cores with the rest.
        meter = CpuMeter(
            {
                **workers.pids(),
                "reader": reader.pid,
                "producer": os.getpid(),
                **stack_pids,
            }
        )
        meter.begin()
        with console.status(
            f"producing {config.rate} events/s for {config.duration:g}s"
        ):
            sent = asyncio.run(
                paced_send(stack.kafka_broker, settings.events_topic, plan, config.rate)
            )
        result["live_cpu"] = meter.end()
        with console.status("waiting for every expected record"):
            deadline = time.monotonic() + 20 + config.cart_after
            while matcher.missing() and time.monotonic() < deadline:
                workers.check()
                _collect(outbox, reader, matcher, until=None, timeout=0.5)
            time.sleep(0.5)  # late records of background causes, then stop
        inbox.put(None)
        _collect(outbox, reader, matcher, until="done", timeout=30)
        reader.join(timeout=10)
        if profiler is not None and config.profile is not None:
            stop_profiler(profiler)
            profiler = None
            result.update(profile_report(console, config.profile, "worker"))
        workers.check()
        result["achieved_rate"] = round(sent.rate, 1)
        result["scenarios"] = plan.scenarios
        result["records_before_live"] = backlog_records
        result.update(live_stats(matcher, sent, settings.segment_changes_topic))
        workers.stop()
        workers = None

        # -- peer: the same backlog, activations off -------------------------
        if config.peer:
            start = time.time() - 60
            events = make_backlog(
                config.events, rig.users, start, config.seed + repeat, f"p{tag}"
            )
            partitions = produce(console, stack.kafka_broker, PEER_TOPIC, events)
            workers = BenchWorkers(
                settings,
                f"bench-peer-worker{suffix}",
                config.workers,
                {
                    "SEGSCORE_EVENTS_TOPIC": PEER_TOPIC,
                    "SEGSCORE_CONSUMER_GROUP": PEER_GROUP,
                    "SEGSCORE_LIVE_SEGMENTS": "false",
                    "SEGSCORE_TRIGGERS": "false",
                },
            )
            meter = CpuMeter({**workers.pids(), **stack_pids})
            peer = apply_backlog(
                console, workers,
                BacklogTracker(client, layout, events, partitions), len(events), meter,
                "worker reading the same backlog (segments and triggers off)",
            )  # fmt: skip
            result.update({f"peer_backlog_{k}": v for k, v in peer.items()})
            result["events_per_s_without_activation"] = peer["events_per_s"]
            result["activation_throughput_share"] = round(
                timed["events_per_s"] / peer["events_per_s"], 3
            )
            check_states(client, layout, events)
        result["load_avg_1m"] = load_average()
        return result
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        if reader is not None and reader.is_alive():
            reader.terminate()
            reader.join(timeout=5)
        if workers is not None:
            workers.stop()


def _train(config: ActivationConfig, settings: Any, console: Console) -> dict[str, Any]:
    """A champion pair from a small simulation: live segments need one to run."""
    from core.event_files import write_events
    from segscore.simulator import simulate
    from training.workflow import run_training

    started = time.monotonic()
    finish = time.time() - 120
    with console.status(
        f"simulating {config.train_days:g} days of {config.train_users} shoppers"
    ):
        sim = simulate(
            config.train_users,
            finish - config.train_days * 86_400,
            finish,
            seed=config.seed,
        )
        path = settings.data_dir / "events.parquet"
        write_events(sim.events, path)
    # force: the pair is promoted whatever the baseline gate says; the bench
    # needs champions, not good ones.
    summary = run_training(
        settings, path, seed_online=False, console=console, force=True
    )
    return {
        "train_events": len(sim.events),
        "segmenter": summary["segmenter"],
        "propensity": summary["propensity"],
        "train_s": round(time.monotonic() - started, 1),
    }


def _reply(box: Any, proc: Any, timeout: float, what: str, key: str) -> None:
    reply = wait_for_reply(
        box,
        proc,
        timeout,
        died=f"the reader process died waiting for {what}",
        late=f"timed out waiting for {what}",
    )
    if key not in reply:
        raise BenchError(f"the reader answered {sorted(reply)} waiting for {what}")


def _collect(
    box: Any, proc: Any, matcher: Matcher, until: str | None, timeout: float
) -> None:
    """Take the reader's reports into ``matcher``: until a ``quiet``/``done``
    report (error after ``timeout``), or (``until=None``) for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if until is None:
                return
            raise BenchError(f"the reader did not report {until} in {timeout:.0f}s")
        try:
            reply = box.get(timeout=min(left, 0.25))
        except queue.Empty:
            if not proc.is_alive() and until is not None:
                raise BenchError("the reader process died") from None
            continue
        if "records" in reply:
            matcher.add(reply["records"])
        if until is not None and until in reply:
            return
