"""The ``segscore`` command line: one subcommand per stage of the data flow."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from infra import local_stack
from infra.settings import SettingsError, get_settings
from segscore.bench_cli import app as bench_app
from segscore.models_cli import app as models_app
from segscore.rules_cli import app as rules_app

app = typer.Typer(
    help="Real-time segments and purchase propensity, explained.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Settings come from SEGSCORE_* environment variables (see infra/settings.py)."""
    _setup_logging(verbose)
    if not verbose:
        # Library deprecation chatter (pathspec via feast, pandas nanoseconds) is
        # noise to a user of the CLI; -v shows it.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Discarding nonzero nanoseconds")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    try:
        get_settings()
    except SettingsError as exc:
        # One line naming the variables; a traceback would bury it.
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def up() -> None:
    """Start Redis and the Kafka-protocol broker where missing; create topics."""
    from core.store.feast_config import write_feature_store_yaml
    from infra.topics import ensure_topics

    settings = get_settings()
    stack = local_stack.up(settings)
    ensure_topics(stack.kafka_broker, settings)
    yaml_path = write_feature_store_yaml(
        settings, stack.redis_url, settings.feature_repo / "feature_store.yaml"
    )
    console.print(f"redis  {stack.redis_url}")
    console.print(f"kafka  {stack.kafka_broker}")
    console.print(f"feast  {yaml_path} (cd feature_repo && feast apply)")


@app.command()
def down() -> None:
    """Stop what ``segscore up`` started (nothing else)."""
    stopped = local_stack.down(get_settings())
    for service in stopped:
        console.print(f"stopped {service.name} (pid {service.pid})")
    if not stopped:
        console.print("nothing to stop")


@app.command()
def status() -> None:
    """Show where the stack runs and whether each part answers."""
    state = local_stack.status(get_settings())
    if not state:
        console.print("stack not running (segscore up)")
        raise typer.Exit(1)
    for name, info in state.items():
        mark = "[green]up[/]" if info["up"] else "[red]down[/]"
        console.print(f"{name:6} {info['address']}  {mark}")


@app.command()
def simulate(
    users: Annotated[int, typer.Option(help="How many shoppers.")] = 1000,
    days: Annotated[float, typer.Option(help="Days of history, ending now.")] = 28,
    seed: Annotated[int, typer.Option(help="Same seed, same events.")] = 7,
    out: Annotated[
        Path | None, typer.Option(help="Parquet/JSONL file (default: data dir).")
    ] = None,
    to_kafka: Annotated[
        bool, typer.Option(help="Produce to the events topic.")
    ] = False,
) -> None:
    """Generate shopping sessions for behavioural personas."""
    from core.event_files import write_events
    from segscore.simulator import simulate as run

    settings = get_settings()
    end = time.time()
    sim = run(users, end - days * 86_400, end, seed=seed)
    if to_kafka:
        from segscore.producer import produce_events

        broker = local_stack.current_broker(settings)
        sent = produce_events(broker, settings.events_topic, sim.events)
        console.print(f"produced {sent} events to {settings.events_topic}")
        return
    path = out or settings.data_dir / "events.parquet"
    write_events(sim.events, path)
    personas = path.with_suffix(".personas.json")
    personas.write_text(json.dumps(sim.personas))
    console.print(f"wrote {len(sim.events)} events of {users} users to {path}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="CSV, Parquet or JSON-lines log.")],
    layout: Annotated[
        str, typer.Option(help="auto|native|ecommerce|transactions|mapping.")
    ] = "auto",
    mapping: Annotated[
        Path | None, typer.Option(help="YAML/JSON mapping file for other layouts.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Events file (default: data dir).")
    ] = None,
    max_bad_rows_shown: Annotated[
        int, typer.Option(help="Bad rows to print (all go to the report).", min=0)
    ] = 20,
    delimiter: Annotated[
        str | None,
        typer.Option(
            help="CSV delimiter: one character, tab, semicolon, pipe or whitespace "
            "(runs of spaces/tabs); default: the mapping's, else sniffed."
        ),
    ] = None,
) -> None:
    """Import an event log into the contract's event file (see docs/importing.md)."""
    from rich.table import Table

    from core.events import iso
    from training.event_import import ImportFailed, import_events

    settings = get_settings()
    target = out or settings.data_dir / "events.parquet"
    try:
        with console.status(f"importing {path}") as status:
            result = import_events(
                path,
                target,
                layout=layout,
                mapping_path=mapping,
                max_future_seconds=settings.max_future_seconds,
                max_bytes=settings.max_event_bytes,
                on_phase=lambda text: status.update(text),
                min_ts=settings.min_event_time.timestamp(),
                delimiter=delimiter,
            )
    except ImportFailed as exc:
        console.print(f"[red]import failed:[/] {exc}")
        raise typer.Exit(1) from None
    summary = result.summary
    shown = result.bad.head(max_bad_rows_shown)
    for row in shown.itertuples(index=False):
        console.print(
            f"line {row.line}: {row.reason} ({row.detail})",
            markup=False,
            highlight=False,
        )
    if len(result.bad) > len(shown):
        console.print(
            f"... and {len(result.bad) - len(shown)} more, see {summary.report}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    table = Table(
        title=f"import {path.name} ({summary.layout} layout)", show_header=False
    )
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("rows read", f"{summary.rows_read:,}")
    table.add_row("accepted", f"{summary.accepted:,}")
    table.add_row("rejected", f"{summary.rejected:,}")
    for reason, count in summary.reasons.items():
        table.add_row(f"  {reason}", f"{count:,}")
    for event_name, count in list(summary.unknown_event_types.items())[:10]:
        table.add_row(f"    unknown {event_name!r}", f"{count:,}")
    if summary.skipped:
        table.add_row("skipped by mapping", f"{summary.skipped:,}")
    if summary.blank_lines:
        table.add_row("blank lines", f"{summary.blank_lines:,}")
    if summary.delimiter:
        table.add_row("delimiter", summary.delimiter)
    table.add_row("users", f"{summary.users:,}")
    if summary.ts_min is not None and summary.ts_max is not None:
        table.add_row("from", iso(summary.ts_min))
        table.add_row("to", iso(summary.ts_max))
    table.add_row(
        "seconds", f"{summary.seconds:.2f} ({summary.rows_per_s:,.0f} rows/s)"
    )
    table.add_row("events file", summary.output)
    if summary.report:
        table.add_row("bad-row report", summary.report)
    console.print(table)
    if summary.accepted == 0:
        console.print("[red]nothing could be imported[/]")
        raise typer.Exit(1)


@app.command()
def apply() -> None:
    """Register the feature repo (same as ``feast apply`` in feature_repo/)."""
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo

    settings = get_settings()
    apply_repo(feature_store(settings, local_stack.current_redis_url(settings)))
    console.print("feature repo applied")


@app.command()
def train(
    events: Annotated[
        Path | None, typer.Option(help="Event file (default: data dir).")
    ] = None,
    seed_online: Annotated[
        bool, typer.Option(help="Also seed the online store from the backfill.")
    ] = True,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote the propensity model even if it fails a baseline on the "
            "holdout or loses to the champion.",
        ),
    ] = False,
) -> None:
    """Backfill, build point-in-time training sets, train and register both models."""
    from training.workflow import run_training

    settings = get_settings()
    path = events or settings.data_dir / "events.parquet"
    summary = run_training(
        settings, path, seed_online=seed_online, console=console, force=force
    )
    console.print_json(data=summary)


@app.command("batch-score")
def batch_score(
    as_of: Annotated[
        str, typer.Option("--as-of", help="Read time, ISO-8601 (no zone = UTC).")
    ],
    out: Annotated[Path, typer.Option(help="Output file, .parquet or .csv.")],
    users: Annotated[
        Path | None,
        typer.Option(help="Ids to score (text, .csv or .parquet with user_id)."),
    ] = None,
    events: Annotated[
        Path | None, typer.Option(help="Event file (default: data dir).")
    ] = None,
) -> None:
    """Score users as of a time from the event log, as /score would have then."""
    from rich.progress import Progress

    from core.model_manager import ModelRefused
    from segscore import batch_score as batch

    try:
        moment = batch.parse_as_of(as_of)
        batch.check_output(out)
    except ValueError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    with Progress(console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total or None)
            progress.update(tasks[stage], completed=done)

        try:
            result = batch.batch_score(
                get_settings(), moment, out, events, users, advance
            )
        except (ModelRefused, FileNotFoundError, ValueError) as exc:
            console.print(
                f"error: {exc}", markup=False, highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None
    console.print_json(
        data={
            "out": str(result.path),
            "as_of": as_of,
            "users": result.users,
            "cold_starts": result.cold_starts,
            "stale": result.stale,
            "events_used": result.events_used,
            "model_versions": result.model_versions,
        }
    )


@app.command()
def worker(
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            "-n",
            min=1,
            help="Worker processes in the consumer group. [SEGSCORE_WORKER_PROCESSES, "
            "else one per core, at most one per partition]",
        ),
    ] = None,
) -> None:
    """Run the Faust stream worker in the foreground (see infra/worker_group.py)."""
    from infra.processes import worker_process_count

    count = processes or worker_process_count(get_settings())
    if count > 1:
        from infra.worker_group import run_group

        raise typer.Exit(run_group(count))
    from streams.app import main as worker_main

    # The worker CLI turns the web server back on unless told otherwise.
    sys.argv = ["faust", "worker", "-l", "warn", "--without-web"]
    worker_main()


@app.command()
def serve(port: Annotated[int, typer.Option()] = 3000) -> None:
    """Run the BentoML scoring service in the foreground."""
    from infra.processes import process_env

    settings = get_settings()
    cmd = [
        sys.executable, "-m", "bentoml", "serve", "serving.service:ScoringService",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    os.execve(sys.executable, cmd, process_env(settings))


@app.command()
def score(
    user_ids: Annotated[list[str], typer.Argument(help="Users to score.")],
    url: Annotated[str, typer.Option()] = "http://127.0.0.1:3000",
    top_k: Annotated[int, typer.Option()] = 5,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Sent as X-API-Key; default: SEGSCORE_API_KEY.", show_default=False
        ),
    ] = None,
) -> None:
    """Score users through the running service (real HTTP)."""
    import httpx
    from rich.markup import escape

    from segscore.http_client import post_score

    key = api_key if api_key is not None else get_settings().api_key
    errors = Console(stderr=True, soft_wrap=True)
    try:
        response = post_score(url, user_ids, top_k=top_k, api_key=key)
    except httpx.HTTPError as exc:
        reason = escape(str(exc))
        errors.print(f"[red]cannot reach the scoring service at {url}:[/] {reason}")
        raise typer.Exit(1) from None
    if response.status_code == 401:
        hint = (
            "the service refused the API key given"
            if key
            else "the service requires an API key: pass --api-key or set "
            "SEGSCORE_API_KEY"
        )
        errors.print(f"[red]401 unauthorized:[/] {hint}")
        raise typer.Exit(1)
    if response.status_code != 200:
        errors.print(f"[red]{response.status_code}[/] {escape(response.text)}")
        raise typer.Exit(1)
    console.print_json(data=response.json())


@app.command()
def demo(
    users: Annotated[int, typer.Option(help="Shoppers in the history.")] = 600,
    days: Annotated[float, typer.Option(help="Days of history.")] = 28,
    home: Annotated[
        Path | None, typer.Option(help="State dir (default: a fresh temp dir).")
    ] = None,
) -> None:
    """From nothing to live scores: stack, history, training, stream, before/after."""
    from segscore.demo import run_demo

    run_demo(users=users, days=days, home=home, console=console)


@app.command()
def catalogue() -> None:
    """Print the feature catalogue as Markdown."""
    from core.feature_catalog import markdown_table

    typer.echo(markdown_table(), nl=False)


app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.add_typer(rules_app, name="rules")


def run() -> None:
    """The ``segscore`` console script: a stack that is not running is one line."""
    try:
        app()
    except local_stack.StackError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run()
