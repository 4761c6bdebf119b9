"""The child process of ``segscore bench training``: one repeat's pipeline.

Runs in a fresh spawned interpreter so that its peak memory is the pipeline's
own and every repeat starts from the same state (no warm caches, no memory left
over from the previous repeat). It answers twice in its box: once after the
training sets (the measured part), once after fitting both models on them, so
the parent can sample the process tree's memory of each part separately.
"""

from __future__ import annotations

import os
import resource
import time
import warnings
from pathlib import Path
from typing import Any

from core.names import PROPENSITY_SERVICE, SEGMENTATION_SERVICE

# The stages that make up ``seconds`` (the target), in pipeline order.
TIMED_STAGES = (
    "import_s",
    "backfill_s",
    "write_offline_s",
    "segmentation_set_s",
    "propensity_set_s",
)


def stage_peak_mb() -> float | None:
    """Peak RSS since the last call (Linux: read VmHWM, then reset it)."""
    try:
        status = Path("/proc/self/status").read_text()
        kb = next(
            int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM")
        )
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    except (OSError, StopIteration, ValueError):
        return None
    return round(kb / 1024, 1)


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Laps:
    """Stage timings and the process's peak memory per stage."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._clock, 2)
        peak = stage_peak_mb()
        if peak is not None:
            self.stages[name.removesuffix("_s") + "_peak_rss_mb"] = peak
        self._clock = now


def pipeline(home: str, csv: str, fit: bool, box: Any) -> None:
    """Import, backfill, write offline, build both training sets; then fit.

    Puts the sets' result in ``box``, then (with ``fit``) the fit's.
    """
    os.environ["SEGSCORE_HOME"] = home
    # Library chatter (Feast's experimental-feature notice, ibis deprecations)
    # would bury the numbers.
    warnings.filterwarnings("ignore")
    from core.event_files import read_events, release_arrow_memory
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra.settings import get_settings
    from training.backfill import backfill, snapshot_plan, write_offline
    from training.backfill_chunks import BACKFILL_COLUMNS
    from training.event_import import import_events
    from training.labels import LABEL_COLUMNS, snapshot_labels
    from training.training_set import latest_population, training_frame

    settings = get_settings()
    laps = _Laps()
    store = feature_store(settings, "redis://127.0.0.1:1/0")  # never contacted
    apply_repo(store)
    laps.lap("setup_s")
    cpu_before = _cpu_seconds()
    events_path = settings.data_dir / "events.parquet"
    # Only the summary is kept: the accepted events' Arrow table (~140 MB at
    # 1M events) would otherwise stay alive, unused, to the end of the run.
    imported = import_events(Path(csv), events_path).summary
    release_arrow_memory()
    events = read_events(events_path, BACKFILL_COLUMNS, arrow_strings=True)
    laps.lap("import_s")
    ts = events["ts"].to_numpy()
    window = (float(ts.min()), float(ts.max()))
    grid, activity_until = snapshot_plan(events, settings)
    result = backfill(
        events,
        grid,
        settings.allowed_lateness_seconds,
        workers=settings.backfill_workers,
        activity_until=activity_until,
    )
    laps.lap("backfill_s")
    # Only the labels read the events from here on: the ids, sessions and
    # categories (two million distinct strings at 1M events) can go before the
    # offline write, the run's largest moment.
    events = events[list(LABEL_COLUMNS)]
    write_offline(result, settings)
    laps.lap("write_offline_s")
    population = latest_population(result.stream)
    snapshot_rows = len(result.stream)
    snapshot_instants = result.stream["event_timestamp"].nunique()
    rows = result.stream[["user_id", "event_timestamp"]]
    # From here on the offline files are the features; holding the tables too
    # would only add to the peak.
    del result
    segmentation = training_frame(store, population, SEGMENTATION_SERVICE)
    laps.lap("segmentation_set_s")
    entities = snapshot_labels(
        events, rows, settings.label_horizon_days, data_end=window[1]
    )
    del rows
    del events
    propensity = training_frame(store, entities, PROPENSITY_SERVICE)
    laps.lap("propensity_set_s")
    stages = laps.stages
    box.put(
        {
            **stages,
            "cpu_s": round(_cpu_seconds() - cpu_before, 2),
            "imported_events": imported.accepted,
            "rejected_rows": imported.rejected,
            "snapshots": snapshot_instants,
            "grid_instants": len(grid),
            "snapshot_rows": snapshot_rows,
            "segmentation_rows": len(segmentation),
            "propensity_rows": len(propensity),
            # The largest stage peak (resetting VmHWM resets ru_maxrss too);
            # children: the backfill's worker processes (the largest of them).
            "peak_rss_mb": max(
                [
                    round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    *(v for k, v in stages.items() if k.endswith("_peak_rss_mb")),
                ]
            ),
            "peak_rss_children_mb": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            ),
        }
    )
    if fit:
        box.put(fit_models(segmentation, propensity, window, settings))


def fit_models(
    segmentation: Any, propensity: Any, window: tuple[float, float], settings: Any
) -> dict[str, Any]:
    """Fit both models as ``segscore train`` does; their times and peak memory.

    Args:
        segmentation: The segmentation training set.
        propensity: The propensity training set (with ``label``).
        window: First and last event time, epoch seconds.
        settings: The label horizon.

    Returns:
        ``segmenter_fit_s``, ``propensity_fit_s``, their sum ``fit_seconds``,
        ``fit_peak_rss_mb`` (this process) and the segments and holdout AUC
        the fit gave.
    """
    import pandas as pd

    from training.backfill import evaluation_cutoffs
    from training.propensity import fit_propensity
    from training.segmenter import fit_segmenter

    stage_peak_mb()  # the fit's own peak from here
    started = time.perf_counter()
    segmenter = fit_segmenter(segmentation)
    segmenter_s = time.perf_counter() - started
    horizon = settings.label_horizon_days
    cutoffs = evaluation_cutoffs(*window, horizon)
    started = time.perf_counter()
    model = fit_propensity(
        propensity,
        horizon,
        cutoffs=[pd.Timestamp(c, unit="s", tz="UTC") for c in cutoffs],
    )
    propensity_s = time.perf_counter() - started
    auc = model.metrics.get("roc_auc")
    return {
        "fit_seconds": round(segmenter_s + propensity_s, 2),
        "segmenter_fit_s": round(segmenter_s, 2),
        "propensity_fit_s": round(propensity_s, 2),
        "fit_peak_rss_process_mb": stage_peak_mb(),
        "segments": len(segmenter.segments),
        "propensity_auc": None if auc is None else round(float(auc), 4),
    }
