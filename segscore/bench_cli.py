"""``segscore bench``: the stream, serve, training and quality benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Benchmarks on real components.", no_args_is_help=True)
console = Console()

# Options every benchmark takes alike.
JsonOut = Annotated[
    Path | None, typer.Option("--json", help="Write the result as JSON here.")
]
KeepHome = Annotated[
    bool, typer.Option(help="Keep the temporary home (logs) afterwards.")
]
# The worker's batch limits, which the stream and activation benches can override.
BatchMaxEvents = Annotated[
    int | None, typer.Option(help="Override the worker's batch size limit.")
]
BatchMaxSeconds = Annotated[
    float | None, typer.Option(help="Override the worker's batch time limit.")
]


def _report_bench(
    console: Console,
    run: Callable[[], dict[str, Any]],
    show: Callable[[Console, dict[str, Any]], None],
    json_out: Path | None,
) -> None:
    """Run a service benchmark, print it, and write its flat JSON when asked.

    A failed setup or an interrupt ends the command with one line, not a
    traceback; the benchmark has already stopped what it started.
    """
    from segscore.bench.harness import BenchError, write_json_report

    try:
        result = run()
    except BenchError as exc:
        console.print(f"[red]bench failed:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted; stopped everything the bench started")
        raise typer.Exit(130) from None
    show(console, result)
    if json_out is not None:
        write_json_report(json_out, result)
        console.print(f"wrote {json_out}")


@app.command("stream")
def bench_stream(
    events: Annotated[
        int | None, typer.Option(help="Backlog size. [100000; quick 20000]", min=1)
    ] = None,
    rate: Annotated[
        int, typer.Option(help="Offered events/s for freshness.", min=1)
    ] = 5_000,
    users: Annotated[int, typer.Option(help="Distinct users.", min=1)] = 10_000,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of paced producing. [15; quick 5]", min=0.5),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, help="Repeats of both measurements; medians. [3]"),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="One repeat, a small backlog, a short phase (CI).")
    ] = False,
    json_out: JsonOut = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="py-spy the worker over the first backlog (collapsed stacks)."
        ),
    ] = None,
    batch_max_events: BatchMaxEvents = None,
    batch_max_seconds: BatchMaxSeconds = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes in the consumer group. [what `segscore "
            "worker` runs here: SEGSCORE_WORKER_PROCESSES, else one per core, "
            "at most one per partition]",
            min=1,
        ),
    ] = None,
    seed: Annotated[int, typer.Option()] = 7,
    keep_home: KeepHome = False,
) -> None:
    """Broker -> Faust worker -> Redis: backlog throughput and freshness at a rate.

    Starts its own stack in a temporary home, repeats both measurements
    (`--repeats`; medians, spread and load average reported) and stops it all.
    """
    from segscore.bench.stream import flat, make_config, print_result, run_bench

    config = make_config(
        quick,
        events=events,
        rate=rate,
        users=users,
        duration=duration,
        repeats=repeats,
        seed=seed,
        batch_max_events=batch_max_events,
        batch_max_seconds=batch_max_seconds,
        workers=workers,
        profile=profile,
        keep_home=keep_home,
    )
    _report_bench(
        console, lambda: flat(run_bench(config, console)), print_result, json_out
    )


@app.command("training")
def bench_training(
    events: Annotated[
        int | None, typer.Option(min=1000, help="Rows to import. [1000000; quick 5000]")
    ] = None,
    users: Annotated[
        int | None, typer.Option(min=10, help="Distinct users. [100000; quick 500]")
    ] = None,
    days: Annotated[
        int | None, typer.Option(min=10, help="Days of history. [30; quick 12]")
    ] = None,
    seed: Annotated[int, typer.Option()] = 7,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, help="Repeats of import -> sets (+ fit); medians. [3]"),
    ] = None,
    fit: Annotated[
        bool, typer.Option(help="Also fit both models on the sets (fit_seconds).")
    ] = True,
    quick: Annotated[
        bool, typer.Option(help="One repeat on a small log (CI).")
    ] = False,
    json_out: JsonOut = None,
    keep_home: KeepHome = False,
) -> None:
    """Import -> backfill -> training sets on a generated log: time and peak memory.

    Each repeat runs in a fresh process; the numbers are medians of the repeats
    (`--repeats`) with spread and load average. The fit of both models on the
    sets is timed apart (`fit_seconds`), outside the targets.
    """
    from segscore.bench.harness import report_rows, report_table, write_json_report
    from segscore.bench.training import make_config, run_training_bench

    config = make_config(
        quick,
        events=events,
        users=users,
        days=days,
        seed=seed,
        repeats=repeats,
        fit=fit,
        keep_home=keep_home,
    )
    with console.status(
        f"import -> backfill -> training sets{' -> fit' if config.fit else ''} "
        f"on {config.events:,} events, {config.repeats} repeat(s)"
    ):
        result = run_training_bench(config)
    if json_out is not None:
        # First: a long measurement is not lost to a problem in printing it.
        write_json_report(json_out, result)
    targets = {"seconds": "target_seconds", "peak_rss_mb": "target_rss_mb"}
    rows = []
    for key, value, spread in report_rows(result):
        target = ""
        if key in targets:
            bound = result[targets[key]]
            mark = "[green]ok[/]" if result[key] <= bound else "[red]missed[/]"
            target = f"<= {bound:g} {mark}"
        rows.append((key, value, spread, target))
    console.print(report_table("segscore bench training", rows, extra="target"))
    if not result["meets_targets"]:
        console.print(
            f"[yellow]targets (medians): <= {result['target_seconds']:.0f} s and <= "
            f"{result['target_rss_mb']:.0f} MB; see the stage timings above[/]"
        )
    if json_out is not None:
        console.print(f"wrote {json_out}")


@app.command("quality")
def bench_quality(
    sets: Annotated[
        str,
        typer.Option(
            help="Comma-separated, of: simulator, bgnbd_world, cdnow, completejourney."
        ),
    ] = "simulator,bgnbd_world,cdnow,completejourney",
    sim_users: Annotated[int, typer.Option(min=20, help="Simulated shoppers.")] = 600,
    sim_days: Annotated[int, typer.Option(min=14, help="Simulated days.")] = 28,
    bgnbd_customers: Annotated[
        int, typer.Option(min=100, help="Customers drawn from BG/NBD.")
    ] = 20_000,
    bgnbd_days: Annotated[int, typer.Option(min=60, help="Days of the BG/NBD log.")] = (
        365
    ),
    real_max_customers: Annotated[
        int | None,
        typer.Option(min=100, help="Sample real sets to this many customers."),
    ] = None,
    horizon_days: Annotated[
        int | None, typer.Option(min=1, help="Label horizon (default: the setting).")
    ] = None,
    seed: Annotated[int, typer.Option()] = 12,
    json_out: JsonOut = None,
) -> None:
    """Propensity and segment quality on simulated, BG/NBD-drawn and real logs."""
    from segscore.bench.quality import print_result, run_quality
    from segscore.bench.quality_sets import QualitySizes

    sizes = QualitySizes(
        sim_users=sim_users,
        sim_days=sim_days,
        bgnbd_customers=bgnbd_customers,
        bgnbd_days=bgnbd_days,
        real_max_customers=real_max_customers,
        seed=seed,
    )
    chosen = [s.strip() for s in sets.split(",") if s.strip()]

    def run() -> dict[str, Any]:
        with console.status("bench quality") as status:
            return run_quality(
                chosen,
                sizes,
                horizon_days,
                on_set=lambda name: status.update(f"import and train: {name}"),
            )

    _report_bench(console, run, print_result, json_out)


@app.command("serve")
def bench_serve(
    users: Annotated[int, typer.Option(min=50, help="Simulated shoppers.")] = 1000,
    days: Annotated[float, typer.Option(min=1, help="Days of history.")] = 28.0,
    single_requests: Annotated[
        int | None,
        typer.Option(
            min=10, help="Sequential single-user requests (each). [2000; quick 300]"
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent clients.")] = 16,
    duration: Annotated[
        float | None,
        typer.Option(min=0.5, help="Seconds per closed-loop phase. [10; quick 2]"),
    ] = None,
    batch_requests: Annotated[
        int | None,
        typer.Option(
            min=10, help="Distinct batches the batch phases cycle through. [200]"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    batch_concurrency: Annotated[
        int, typer.Option(min=1, help="Connections in the batch phases.")
    ] = 8,
    workers: Annotated[int, typer.Option(min=1, help="BentoML worker processes.")] = 2,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, help="Repeats of the phases; medians reported. [3]"),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="One repeat of short phases (CI).")
    ] = False,
    seed: Annotated[int, typer.Option()] = 7,
    json_out: JsonOut = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="py-spy a service worker over the run (collapsed stacks)."),
    ] = None,
    keep_home: KeepHome = False,
) -> None:
    """Scoring API over loopback HTTP, side by side with `feast serve`.

    Starts its own Redis, simulates and trains, seeds the online store, starts the
    BentoML service and Feast's feature server, runs the load phases `--repeats`
    times against them (medians, spread and load average reported, with the
    service's memory), and stops them all at the end.
    """
    from segscore.bench.serve import make_config, print_result, run_serve_bench

    config = make_config(
        quick,
        users=users,
        days=days,
        seed=seed,
        single_requests=single_requests,
        concurrency=concurrency,
        duration=duration,
        batch_size=batch_size,
        batch_requests=batch_requests,
        batch_concurrency=batch_concurrency,
        serve_workers=workers,
        repeats=repeats,
        profile=profile,
        keep_home=keep_home,
    )
    _report_bench(
        console, lambda: run_serve_bench(config, console), print_result, json_out
    )


@app.command("activation")
def bench_activation(
    rate: Annotated[
        int, typer.Option(help="Offered events/s in the live phase.", min=1)
    ] = 5_000,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of paced producing. [30; quick 10]", min=1.0),
    ] = None,
    events: Annotated[
        int | None, typer.Option(help="Backlog size. [200000; quick 20000]", min=1)
    ] = None,
    users: Annotated[int, typer.Option(help="Distinct backlog users.", min=1)] = 10_000,
    cart_after: Annotated[
        float, typer.Option(help="The cart-abandonment timer, in seconds.", min=0.5)
    ] = 10.0,
    train_users: Annotated[
        int, typer.Option(help="Simulated shoppers for the model pair.", min=50)
    ] = 300,
    peer: Annotated[
        bool, typer.Option(help="Also time the backlog with activations off.")
    ] = True,
    json_out: JsonOut = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="py-spy the worker over the live phase (collapsed stacks)."),
    ] = None,
    batch_max_events: BatchMaxEvents = None,
    batch_max_seconds: BatchMaxSeconds = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Workers in the consumer group (they split the partitions; "
            "at most the topic's partition count do work). [what `segscore "
            "worker` runs here]",
            min=1,
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, help="Repeats of the three phases; medians. [3]"),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="One repeat, a small backlog, a short phase (CI).")
    ] = False,
    seed: Annotated[int, typer.Option()] = 7,
    keep_home: KeepHome = False,
) -> None:
    """Live segments and triggers: cause-to-Kafka latency, timer lateness, backlog.

    Starts its own stack, trains a model pair, repeats the phases (`--repeats`;
    medians, spread and load average reported) and stops everything at the end.
    """
    from segscore.bench.activation import make_config, run_activation_bench
    from segscore.bench.activation_report import print_result

    config = make_config(
        quick,
        rate=rate,
        duration=duration,
        events=events,
        users=users,
        cart_after=cart_after,
        train_users=train_users,
        peer=peer,
        seed=seed,
        batch_max_events=batch_max_events,
        batch_max_seconds=batch_max_seconds,
        workers=workers,
        repeats=repeats,
        profile=profile,
        keep_home=keep_home,
    )
    _report_bench(
        console, lambda: run_activation_bench(config, console), print_result, json_out
    )
