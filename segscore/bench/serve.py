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
3. batch explain: 100 random users per request, explain on, sequential: p50/p99.
4. batch throughput: 100 users per request, explain off, a few connections for
   ``duration`` seconds: user scores per second.

Any non-200 answer fails the run. ``--profile`` records the service's worker
processes with py-spy across the phases and prints where their time goes. This
module runs the phases and reports them; the stack is
:mod:`segscore.bench.serve_stack`, the client process
:mod:`segscore.bench.serve_load`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from segscore.bench.harness import (
    BenchError,
    machine_facts,
    percentiles_ms,
    profile_report,
    sigterm_as_interrupt,
    start_profiler,
    stop_profiler,
    wait_for_reply,
)
from segscore.bench.serve_load import run_client
from segscore.bench.serve_stack import (
    check_same_features,
    feast_features,
    scoring_stack,
    serve_bench_environment,
    service_workers,
)

# The service's targets, printed next to the numbers.
TARGETS: dict[str, tuple[str, float]] = {
    "single_p50_ms": ("<=", 2.5),
    "single_p99_ms": ("<=", 5.0),
    "ratio_p99_vs_feast": ("<=", 1.0),
    "concurrent_explained_per_s": (">=", 800.0),
    "batch100_explained_p99_ms": ("<=", 60.0),
    "batch100_unexplained_scores_per_s": (">=", 20_000.0),
}


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
    batch_requests: int = 200
    batch_concurrency: int = 8
    serve_workers: int = 2
    warmup_requests: int = 200
    profile: Path | None = None
    keep_home: bool = False


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
        **machine_facts(),
    }
    console.print(f"bench home {home}")
    profiler = client = None
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

            plan = {
                "port": stack.port,
                "feast_port": stack.feast_port,
                "seed": config.seed,
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
            result["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
            ctx = mp.get_context("spawn")
            outbox = ctx.Queue()
            client = ctx.Process(target=run_client, args=(plan, outbox), daemon=True)
            client.start()
            budget = 300 + 2 * config.duration + config.single_requests * 0.05
            with console.status("measuring (client process running every phase)"):
                reply = wait_for_reply(
                    outbox,
                    client,
                    budget,
                    died="the client process died",
                    late=f"the client did not finish within {budget:.0f}s",
                )
            client.join(timeout=10)
            result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            if not reply["ok"]:
                raise BenchError(f"client failed: {reply['error']}")
            result.update(summarize(reply["result"], config))
            if profiler is not None:
                stop_profiler(profiler)
                profiler = None
                result.update(
                    profile_report(console, config.profile, "service worker", top=20)
                )
            for name, proc in (
                ("scoring service", stack.server),
                ("feast", stack.feast),
            ):
                if proc is not None and proc.poll() is not None:
                    raise BenchError(f"{name} died during the run")
            return result
    except BenchError:
        console.print(f"logs kept in {home / 'logs'}")
        raise
    finally:
        if client is not None and client.is_alive():
            client.terminate()
            client.join(timeout=5)
        if profiler is not None:
            stop_profiler(profiler)


def summarize(raw: dict[str, Any], config: ServeBenchConfig) -> dict[str, Any]:
    """The flat numbers of the client's raw latencies and counts."""
    out: dict[str, Any] = {}
    out["single_requests"] = len(raw["single"])
    out["single_p50_ms"], out["single_p99_ms"] = percentiles_ms(raw["single"])
    out["feast_serve_p50_ms"], out["feast_serve_p99_ms"] = percentiles_ms(raw["feast"])
    out["ratio_p99_vs_feast"] = round(
        out["single_p99_ms"] / out["feast_serve_p99_ms"], 3
    )
    concurrent = raw["concurrent"]
    if concurrent["failures"]:
        raise BenchError(
            f"concurrent phase: non-200 answers {concurrent['failures'][:5]}"
        )
    out["concurrent_requests"] = len(concurrent["latencies"])
    out["concurrent_explained_per_s"] = round(
        len(concurrent["latencies"]) / concurrent["seconds"], 1
    )
    out["concurrent_p50_ms"], out["concurrent_p99_ms"] = percentiles_ms(
        concurrent["latencies"]
    )
    out["batch100_explained_p50_ms"], out["batch100_explained_p99_ms"] = percentiles_ms(
        raw["batch_explained"]
    )
    unexplained = raw["batch_unexplained"]
    if unexplained["failures"]:
        raise BenchError(f"batch phase: non-200 answers {unexplained['failures'][:5]}")
    out["batch100_unexplained_requests"] = len(unexplained["latencies"])
    out["batch100_unexplained_scores_per_s"] = round(
        len(unexplained["latencies"]) * config.batch_size / unexplained["seconds"], 1
    )
    out["batch100_unexplained_p50_ms"], out["batch100_unexplained_p99_ms"] = (
        percentiles_ms(unexplained["latencies"])
    )
    out["meets_targets"] = all(
        _meets(out[key], op, bound) for key, (op, bound) in TARGETS.items()
    )
    return out


def _meets(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The result as a table, with each target and whether it is met."""
    table = Table(title="segscore bench serve")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    table.add_column("target")
    for key, value in result.items():
        if key == "profile_top_self":
            continue
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            mark = "[green]ok[/]" if _meets(value, op, bound) else "[red]missed[/]"
            target = f"{op} {bound:g} {mark}"
        table.add_row(key, str(value), target)
    console.print(table)
