"""Robustness runs of the scoring API (not part of the CI suite; see docs/serving.md).

Both start their own private stack in a temporary home, like ``segscore bench
serve`` (:func:`segscore.bench.serve_stack.scoring_stack`: Redis, simulated
shoppers, the training run, the BentoML service), and stop it at the end.

``schemathesis``
    Property-based requests generated from the service's own OpenAPI document
    (``/docs.json``), checked for server errors. Schemathesis is installed on
    first use into ``build/schemathesis-venv`` (its own environment: it pins
    hypothesis and friends, which the project does not need). Passes when
    schemathesis finds no failure AND the service counted no 5xx answer.

``soak``
    A fixed request rate for a fixed time (default 10 minutes at 200 requests/s:
    a mix of single-user explained scores, 20-user batches and unknown users),
    from a separate process with keep-alive connections. Every 10 s it records
    the RSS of each service worker; passes when no request failed and memory is
    flat (the last third's median RSS within ``--rss-growth`` of the first
    third's, after a warm-up).

Usage::

    .venv/bin/python scripts/robustness.py schemathesis [--max-examples 200]
    .venv/bin/python scripts/robustness.py soak [--minutes 10] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from segscore.bench.harness import rss_mb, write_json_report  # noqa: E402
from segscore.bench.serve_stack import (  # noqa: E402
    LiveStack,
    scoring_stack,
    serve_bench_environment,
    service_workers,
)
from segscore.http_client import (  # noqa: E402
    SCORE_PATH,
    async_request,
    build_request,
    open_async,
    server_error_count,
)

SCHEMATHESIS_VENV = ROOT / "build" / "schemathesis-venv"
SCHEMATHESIS_SPEC = "schemathesis==4.*"

console = Console()


def _schemathesis_binary() -> Path:
    """schemathesis in its own venv, installed from PyPI on first use."""
    binary = SCHEMATHESIS_VENV / "bin" / "schemathesis"
    if binary.exists():
        return binary
    console.print(f"installing {SCHEMATHESIS_SPEC} into {SCHEMATHESIS_VENV}")
    subprocess.run([sys.executable, "-m", "venv", str(SCHEMATHESIS_VENV)], check=True)
    subprocess.run(
        [str(SCHEMATHESIS_VENV / "bin" / "pip"), "install", "-q", SCHEMATHESIS_SPEC],
        check=True,
    )
    return binary


def run_schemathesis(stack: LiveStack, max_examples: int, workers: str) -> int:
    """Run schemathesis against the live service; 0 when nothing failed."""
    binary = _schemathesis_binary()
    cmd = [
        str(binary), "run", f"{stack.url}/docs.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(max_examples),
        "--workers", workers,
        "--phases", "examples,coverage,fuzzing",
        # Any reply within the service's own timeout is a reply; slowness is the
        # benchmark's business, not this run's.
        "--suppress-health-check", "too_slow,data_too_large",
    ]  # fmt: skip
    console.print(" ".join(cmd))
    # Run from build/: schemathesis keeps its example database in the cwd.
    workdir = ROOT / "build"
    workdir.mkdir(exist_ok=True)
    code = subprocess.run(cmd, cwd=workdir).returncode
    errors = server_error_count(stack.url)
    console.print(
        f"schemathesis exit code {code}; 5xx answers counted by the service: "
        f"{errors:.0f}"
    )
    return 0 if code == 0 and errors == 0 else 1


async def _paced(
    port: int, requests: list[bytes], rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``seconds`` over a few keep-alive connections."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    statuses: dict[int, int] = {}
    late = 0

    async def sender() -> None:
        reader, writer = await open_async(port)
        try:
            while (raw := await queue.get()) is not None:
                try:
                    status = await async_request(reader, writer, raw)
                except (OSError, asyncio.IncompleteReadError):
                    status = -1  # connection failure: counted, then reconnect
                    writer.close()
                    reader, writer = await open_async(port)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(sender()) for _ in range(connections)]
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            late += 1
        await queue.put(requests[i % len(requests)])
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return {"statuses": statuses, "late": late, "sent": total}


def _soak_client(
    port: int, users: list[str], rate: float, seconds: float, out: Any
) -> None:
    rng = random.Random(3)
    requests = []
    for i in range(5000):
        if i % 10 == 0:
            ids = rng.sample(users, min(20, len(users)))
            body = {"user_ids": ids, "explain": False}
        elif i % 10 == 1:
            body = {"user_ids": [f"unknown-{i}"], "top_k": 3}
        else:
            body = {"user_ids": [rng.choice(users)], "top_k": 5}
        requests.append(build_request(port, SCORE_PATH, body))
    out.put(asyncio.run(_paced(port, requests, rate, seconds, connections=8)))


def run_soak(
    stack: LiveStack, minutes: float, rate: float, growth: float, report_path: Path
) -> int:
    """Fixed-rate soak with RSS sampling; 0 when no error and memory is flat."""
    import multiprocessing as mp

    seconds = minutes * 60
    pids = service_workers(stack.server.pid)
    ctx = mp.get_context("spawn")
    box = ctx.Queue()
    client = ctx.Process(
        target=_soak_client, args=(stack.port, stack.users, rate, seconds, box)
    )
    client.start()
    samples: list[tuple[float, list[float]]] = []
    started = time.monotonic()
    interval = min(10.0, max(1.0, seconds / 20))
    while client.is_alive() and time.monotonic() - started < seconds + 60:
        samples.append((round(time.monotonic() - started, 1), rss_mb(pids)))
        console.print(f"t={samples[-1][0]:7.1f}s  worker RSS MB {samples[-1][1]}")
        client.join(timeout=interval)
    result = box.get(timeout=30)
    client.join(timeout=10)
    samples.append((round(time.monotonic() - started, 1), rss_mb(pids)))

    totals = [sum(rss) for _, rss in samples]
    third = max(1, len(totals) // 3)
    first, last = sorted(totals[:third]), sorted(totals[-third:])
    first_median, last_median = first[len(first) // 2], last[len(last) // 2]
    relative = (last_median - first_median) / first_median if first_median else 0.0
    errors = sum(n for status, n in result["statuses"].items() if status != 200)
    report = {
        "minutes": minutes,
        "rate": rate,
        "sent": result["sent"],
        "statuses": result["statuses"],
        "errors": errors,
        "late_sends": result["late"],
        "rss_mb_first_third_median": first_median,
        "rss_mb_last_third_median": last_median,
        "rss_growth": round(relative, 4),
        "rss_samples": samples,
    }
    console.print_json(data={k: v for k, v in report.items() if k != "rss_samples"})
    write_json_report(report_path, report)
    console.print(f"report with every RSS sample: {report_path}")
    flat = relative <= growth
    if errors or not flat:
        console.print(
            f"[red]soak failed[/]: {errors} errors, RSS growth {relative:.1%} "
            f"(allowed {growth:.0%})"
        )
        return 1
    console.print(f"[green]soak passed[/]: 0 errors, RSS growth {relative:.1%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the stack, run the chosen check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="run", required=True)
    fuzz = sub.add_parser("schemathesis", help="OpenAPI-driven fuzzing, 0 5xx")
    fuzz.add_argument("--max-examples", type=int, default=200)
    fuzz.add_argument("--workers", default="2")
    soak = sub.add_parser("soak", help="fixed rate, 0 errors, flat memory")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--rate", type=float, default=200.0)
    soak.add_argument("--rss-growth", type=float, default=0.05)
    soak.add_argument(
        "--report", type=Path, default=ROOT / "build" / "soak-report.json"
    )
    for p in (fuzz, soak):
        p.add_argument("--users", type=int, default=300)
        p.add_argument("--days", type=float, default=24.0)
        p.add_argument("--keep-home", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    with (
        serve_bench_environment(args.keep_home) as home,
        scoring_stack(
            home,
            console,
            users=args.users,
            days=args.days,
            serve_workers=1,
            with_feast=False,
        ) as stack,
    ):
        if args.run == "schemathesis":
            return run_schemathesis(stack, args.max_examples, args.workers)
        return run_soak(stack, args.minutes, args.rate, args.rss_growth, args.report)


if __name__ == "__main__":
    sys.exit(main())
