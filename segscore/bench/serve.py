"""``segscore bench serve``: the scoring API over loopback HTTP, beside ``feast serve``.

Everything runs in a fresh temporary ``SEGSCORE_HOME``: a private redis-server,
``segscore simulate``'s shoppers, the training run of ``segscore train`` (backfill,
both models, online seeding), then two servers on loopback:

- the BentoML scoring service (:func:`infra.processes.start_server`), and
- Feast's own feature server, ``feast -c DIR serve`` over a feature_store.yaml for
  the same Redis and registry, asked for the same features of the same users: the
  on-demand view ``user_live_features`` (every stream feature derived from the
  state blob at read time, as /score derives them) plus the history features the
  models use. That is the work /score does before its models run, done by the
  stock server.

The load comes from a separate client *process* (so its CPU time is not the
server's GIL time) speaking raw HTTP/1.1 over keep-alive sockets with pre-built
requests, which costs a few tens of microseconds per request. Phases:

1. single: one random known user per request, explain on, top_k 5, sequential;
   interleaved request by request with the same request to ``feast serve``, so
   both see the same machine load. p50/p99 of both, and the ratio of the p99s.
2. concurrent: 16 connections, each sending the next single-user explained
   request as soon as the previous answer arrives, for ``duration`` seconds:
   explained scores per second.
3. batch explain: 100 random users per request, explain on, ``batch_concurrency``
   (8) connections in a closed loop for ``duration`` seconds: p50/p99.
4. batch throughput: 100 users per request, explain off, the same connections
   for ``duration`` seconds: user scores per second.

Memory: while the phases run, a thread samples the whole BentoML process tree
(the ``bentoml serve`` arbiter and its workers) every 0.25 s; ``serve_rss_mb``
is the peak of the summed RSS (shared pages counted in each process: the
conservative number), beside the peak summed PSS (read once a second: it walks
the workers' page tables) and the largest process.

Repeats: the phases (one client process each time, against the same running
stack, nothing retrained or restarted) run ``repeats`` times (default 3). Every
number is reported as the median of its repeats, with each repeat's value, the
spread and the 1-minute load average of each repeat
(:func:`segscore.bench.repeats.summarize_runs`); targets are checked on the
medians. ``ratio_p99_vs_feast`` is the median of each repeat's ratio, whose two
p99s come from the same interleaved moments. ``--quick`` is one repeat of short
phases, for CI.

Any non-200 answer fails the run. ``--profile`` records the service's worker
processes with py-spy across the phases and prints where their time goes. This
module runs the phases and reports them; the stack is
:mod:`segscore.bench.serve_stack`, the client process
:mod:`segscore.bench.serve_load`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from segscore.bench.harness import (
    BenchError,
    TreeMemory,
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
    summarize_runs,
)
from segscore.bench.serve_load import run_client
from segscore.bench.serve_stack import (
    LiveStack,
    check_same_features,
    feast_features,
    scoring_stack,
    serve_bench_environment,
    service_workers,
)

# The service's targets (issue 14), printed next to the medians.
TARGETS: dict[str, tuple[str, float]] = {
    "single_p50_ms": ("<=", 2.5),
    "single_p99_ms": ("<=", 5.0),
    "ratio_p99_vs_feast": ("<=", 0.6),
    "concurrent_explained_per_s": (">=", 1500.0),
    "batch100_explained_p99_ms": ("<=", 40.0),
    "batch100_unexplained_scores_per_s": (">=", 20_000.0),
    "serve_rss_mb": ("<=", 700.0),
}

# Every number one repeat measures; each is reported as the median of the repeats.
REPEATED = (
    "single_p50_ms",
    "single_p99_ms",
    "feast_serve_p50_ms",
    "feast_serve_p99_ms",
    "ratio_p99_vs_feast",
    "concurrent_requests",
    "concurrent_explained_per_s",
    "concurrent_p50_ms",
    "concurrent_p99_ms",
    "batch100_explained_requests",
    "batch100_explained_scores_per_s",
    "batch100_explained_p50_ms",
    "batch100_explained_p99_ms",
    "batch100_unexplained_requests",
    "batch100_unexplained_scores_per_s",
    "batch100_unexplained_p50_ms",
    "batch100_unexplained_p99_ms",
    "serve_rss_mb",
    "serve_pss_mb",
    "serve_rss_mb_largest_process",
)

# Seconds between two samples of the service's memory: often enough to see a
# peak that lasts a phase, rarely enough that reading smaps costs nothing.
MEMORY_SAMPLE_SECONDS = 0.25


@dataclass(frozen=True)
class ServeBenchConfig:
    """What to run."""

    users: int = 1000
    days: float = 28.0
    seed: int = 7
    single_requests: int = 2000
    concurrency: int = 16
    duration: float = 10.0
    batch_size: int = 100
    batch_requests: int = 200  # distinct batches the batch phases cycle through
    batch_concurrency: int = 8
    serve_workers: int = 2
    warmup_requests: int = 200
    repeats: int = DEFAULT_REPEATS
    profile: Path | None = None
    keep_home: bool = False


# What ``--quick`` changes: one repeat of short phases (CI), unless told otherwise.
QUICK: dict[str, Any] = {
    "repeats": 1,
    "single_requests": 300,
    "duration": 2.0,
    "batch_requests": 50,
}


def make_config(quick: bool = False, **given: Any) -> ServeBenchConfig:
    """A config from the options given (``None`` = not given) and ``--quick``.

    See :func:`segscore.bench.repeats.chosen_options` (``quick`` fills in
    :data:`QUICK`). The warm-up is at most the single requests.
    """
    chosen = chosen_options(given, quick, QUICK)
    config = ServeBenchConfig(**chosen)
    if "warmup_requests" not in chosen:
        warmup = min(config.warmup_requests, config.single_requests)
        config = dataclasses.replace(config, warmup_requests=warmup)
    return config


def run_serve_bench(config: ServeBenchConfig, console: Console) -> dict[str, Any]:
    """Run every phase on a private stack; returns the flat result."""
    with sigterm_as_interrupt(), serve_bench_environment(config.keep_home) as home:
        return _run(config, console, home)


def _run(config: ServeBenchConfig, console: Console, home: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "users": config.users,
        "days": config.days,
        "serve_workers": config.serve_workers,
        "concurrency": config.concurrency,
        "batch_size": config.batch_size,
        "batch_concurrency": config.batch_concurrency,
        "duration_s": config.duration,
        **machine_facts(),
    }
    console.print(f"bench home {home}")
    profiler = None
    try:
        with scoring_stack(
            home,
            console,
            users=config.users,
            days=config.days,
            seed=config.seed,
            serve_workers=config.serve_workers,
        ) as stack:
            result["propensity_auc"] = stack.propensity_auc
            result["trees"], result["leaves"] = stack.trees, stack.leaves
            features = feast_features()
            check_same_features(stack.port, stack.feast_port, stack.users[0], features)
            result["feast_features"] = len(features)

            if config.profile is not None:
                workers = service_workers(stack.server.pid)
                if not workers:
                    raise BenchError("no BentoML worker process found to profile")
                # The first worker stands for all: they run the same code.
                profiler = start_profiler(
                    workers[0], config.profile, home / "logs" / "py-spy.log"
                )

            runs = []
            for repeat in range(config.repeats):
                with console.status(
                    f"measuring, repeat {repeat + 1} of {config.repeats} "
                    "(client process running every phase)"
                ):
                    runs.append(_repeat(config, stack, features, repeat))
                _check_alive(stack)
            result.update(summarize_runs(runs, REPEATED))
            result["serve_processes"] = max(run["serve_processes"] for run in runs)
            result["single_requests"] = config.single_requests
            result["meets_targets"] = all(
                _meets(result[key], op, bound) for key, (op, bound) in TARGETS.items()
            )
            if profiler is not None and config.profile is not None:
                stop_profiler(profiler)
                profiler = None
                result.update(
                    profile_report(console, config.profile, "service worker", top=20)
                )
            return result
    except BenchError:
        console.print(f"logs kept in {home / 'logs'}")
        raise
    finally:
        if profiler is not None:
            stop_profiler(profiler)


def _repeat(
    config: ServeBenchConfig, stack: LiveStack, features: list[str], repeat: int
) -> dict[str, Any]:
    """One repeat of every phase: a fresh client process, memory sampled meanwhile."""
    plan = {
        "port": stack.port,
        "feast_port": stack.feast_port,
        # Each repeat draws other users, so no repeat replays another's requests.
        "seed": config.seed + 1000 * repeat,
        "users": stack.users,
        "feast_features": features,
        "single_requests": config.single_requests,
        "warmup": config.warmup_requests,
        "concurrency": config.concurrency,
        "duration": config.duration,
        "batch_size": config.batch_size,
        "batch_requests": config.batch_requests,
        "batch_concurrency": config.batch_concurrency,
    }
    ctx = mp.get_context("spawn")
    outbox = ctx.Queue()
    client = ctx.Process(target=run_client, args=(plan, outbox), daemon=True)
    budget = 300 + 3 * config.duration + config.single_requests * 0.05
    try:
        with TreeMemory(
            stack.server.pid, every_seconds=MEMORY_SAMPLE_SECONDS, pss=True
        ) as memory:
            client.start()
            reply = wait_for_reply(
                outbox,
                client,
                budget,
                died="the client process died",
                late=f"the client did not finish within {budget:.0f}s",
            )
        client.join(timeout=10)
    finally:
        if client.is_alive():
            client.terminate()
            client.join(timeout=5)
    if not reply["ok"]:
        raise BenchError(f"client failed: {reply['error']}")
    run = summarize(reply["result"], config)
    run.update(
        serve_rss_mb=round(memory.peak_mb, 1),
        serve_pss_mb=round(memory.peak_pss_mb, 1),
        serve_rss_mb_largest_process=round(memory.peak_process_mb, 1),
        serve_processes=memory.processes,
        load_avg_1m=load_average(),
    )
    return run


def _check_alive(stack: LiveStack) -> None:
    for name, proc in (("scoring service", stack.server), ("feast", stack.feast)):
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{name} died during the run")


def _closed_loop_stats(
    raw: dict[str, Any], phase: str, key: str, scores_per_request: int
) -> dict[str, Any]:
    """Count, scores/s and p50/p99 of one closed-loop phase; non-200s fail it."""
    if raw["failures"]:
        raise BenchError(f"{phase} phase: non-200 answers {raw['failures'][:5]}")
    latencies = raw["latencies"]
    if not latencies:
        raise BenchError(f"{phase} phase: no request completed")
    p50, p99 = percentiles_ms(latencies)
    return {
        f"{key}_requests": len(latencies),
        f"{key}_scores_per_s": round(
            len(latencies) * scores_per_request / raw["seconds"], 1
        ),
        f"{key}_p50_ms": p50,
        f"{key}_p99_ms": p99,
    }


def summarize(raw: dict[str, Any], config: ServeBenchConfig) -> dict[str, Any]:
    """The flat numbers of one repeat from the client's raw latencies and counts."""
    out: dict[str, Any] = {}
    out["single_p50_ms"], out["single_p99_ms"] = percentiles_ms(raw["single"])
    out["feast_serve_p50_ms"], out["feast_serve_p99_ms"] = percentiles_ms(raw["feast"])
    out["ratio_p99_vs_feast"] = round(
        out["single_p99_ms"] / out["feast_serve_p99_ms"], 3
    )
    concurrent = _closed_loop_stats(raw["concurrent"], "concurrent", "concurrent", 1)
    out["concurrent_requests"] = concurrent["concurrent_requests"]
    out["concurrent_explained_per_s"] = concurrent["concurrent_scores_per_s"]
    out["concurrent_p50_ms"] = concurrent["concurrent_p50_ms"]
    out["concurrent_p99_ms"] = concurrent["concurrent_p99_ms"]
    for phase, key in (
        ("batch_explained", "batch100_explained"),
        ("batch_unexplained", "batch100_unexplained"),
    ):
        out.update(_closed_loop_stats(raw[phase], phase, key, config.batch_size))
    return out


def _meets(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The result as a table: medians with spread and repeats, and each target."""
    rows = []
    for key, value, spread in report_rows(result):
        if key == "profile_top_self":
            continue
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            met = _meets(result[key], op, bound)
            mark = "[green]ok[/]" if met else "[red]missed[/]"
            target = f"{op} {bound:g} {mark}"
        rows.append((key, value, spread, target))
    console.print(report_table("segscore bench serve", rows, extra="target"))
