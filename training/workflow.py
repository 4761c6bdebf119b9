"""``segscore train``: the training run as the CLI and the demo start it.

Reads an event file, registers the feature repo, runs :func:`training.pipeline.train`,
writes the HTML report (``$SEGSCORE_HOME/reports/train-<UTC time>.html``) and seeds
the online store from the same backfill, so that the worker continues from the
trained history rather than from zero.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from core.event_files import read_events
from core.model_manager import ModelRefused, load_models, wanted_tags
from core.scoring import ONLINE_FEATURES, place
from core.store import online_seed
from core.store.feast_config import feature_store
from core.user_state import UserState
from feature_repo.apply import apply_repo
from infra.local_stack import current_redis_url
from infra.settings import Settings
from training.backfill_chunks import BACKFILL_COLUMNS
from training.pipeline import train
from training.promotion import baseline_gate
from training.report import write_report

log = logging.getLogger(__name__)
# States placed per call when seeding: bounds the input matrices (~0.3 s each).
SEED_PLACE_CHUNK = 20_000


def run_training(
    settings: Settings,
    events_path: Path,
    *,
    seed_online: bool,
    console: Console,
    force: bool = False,
) -> dict[str, Any]:
    """Train and register both models from ``events_path``; returns a summary.

    ``force`` promotes the propensity model whatever the baseline gate and the
    champion say.
    """
    with warnings.catch_warnings():
        if not log.isEnabledFor(logging.INFO):
            # Library notices (ibis/DuckDB deprecations, Feast calling on-demand
            # views experimental) say nothing to a user of the CLI; -v shows them.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="On demand feature view")
        return _run_training(settings, events_path, seed_online, console, force)


def _run_training(
    settings: Settings,
    events_path: Path,
    seed_online: bool,
    console: Console,
    force: bool = False,
) -> dict[str, Any]:
    # The online store only: training never talks to the broker.
    redis_url = current_redis_url(settings)
    store = feature_store(settings, redis_url)
    apply_repo(store)
    with console.status(f"reading {events_path}"):
        # Only what training reads, text as Arrow strings: training's results
        # are the same as from the whole file read as objects.
        events = read_events(events_path, BACKFILL_COLUMNS, arrow_strings=True)
    personas_path = events_path.with_suffix(".personas.json")
    personas = json.loads(personas_path.read_text()) if personas_path.exists() else None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"backfill of {len(events):,} events", total=None)

        def report_progress(stage: str, done: int, total: int) -> None:
            if stage == "backfill":
                progress.update(task, completed=done, total=total or None)
            else:
                progress.update(task, description=stage, completed=0, total=None)

        result = train(
            settings,
            store,
            events,
            personas,
            on_progress=report_progress,
            backfill_workers=settings.backfill_workers,
            force=force,
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with console.status("writing the training report"):
        report = write_report(result, settings.home / "reports" / f"train-{stamp}.html")
    summary: dict[str, Any] = {
        "segmenter": result.segmenter.tag,
        "propensity": result.propensity.tag,
        "segments": [s.name for s in result.segmenter.segments],
        "segmenter_metrics": result.segmenter.metrics,
        "propensity_auc": result.propensity.metrics.get("roc_auc"),
        "propensity_metrics": result.propensity.metrics,
        "promotion": {d.model: d.reason for d in result.decisions},
        "propensity_gate": baseline_gate(result.propensity.metrics).summary,
        "promoted": [d.challenger for d in result.decisions if d.promoted],
        "timings_s": result.timings,
        "report": str(report),
    }
    if seed_online:
        client = redis.Redis.from_url(redis_url)
        summary["seed_placed_users"] = _place_in_segments(settings, result.states)
        with console.status("seeding the online store from the backfill"):
            seeded = online_seed.seed_online(
                store, client, result.states, as_of=time.time()
            )
        summary["seeded_users"] = len(seeded.written)
        # Users the worker has moved past the backfill's last event keep their state.
        summary["seed_kept_newer_users"] = len(seeded.kept_newer)
        if seeded.kept_unreadable:
            summary["seed_kept_unreadable_users"] = len(seeded.kept_unreadable)
    return summary


def _place_in_segments(settings: Settings, states: Mapping[str, UserState]) -> int:
    """Give the seeded states the serving segmenter's segment (as the worker would).

    The worker's first live change for a user then starts from the segment the
    serving models put them in, not from nobody. With no servable pair (a
    challenger that was not promoted over a missing champion), nobody is placed.
    """
    try:
        # LightGBM is loaded here anyway; its predictor is faster on big chunks.
        models = load_models(
            settings, wanted_tags(settings), ONLINE_FEATURES, lean=False
        )
    except ModelRefused as exc:
        log.warning("seed: no live segments, models not servable: %s", exc)
        return 0
    users = [u for u, s in states.items() if s.last_event_ts is not None]
    for start in range(0, len(users), SEED_PLACE_CHUNK):
        part = [states[u] for u in users[start : start + SEED_PLACE_CHUNK]]
        placed = place(part, [s.last_event_ts or 0.0 for s in part], models)
        for state, segment in zip(part, placed.segments, strict=True):
            state.segment = segment
    return len(users)
