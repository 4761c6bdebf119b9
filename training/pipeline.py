"""The training pipeline: events -> backfill -> offline store -> Feast -> models.

One call does what ``segscore train`` promises: replay the events with the stream
worker's feature code, write the snapshots where the Feast offline store reads
them, build point-in-time training sets through the models' feature services, fit
the segmenter and the propensity model, and store and promote both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bentoml.exceptions import NotFound
from feast import FeatureStore
from sklearn.metrics import adjusted_rand_score

from core import registry
from core.events import iso
from core.names import (
    HISTORY_VIEW,
    PROPENSITY_SERVICE,
    SEGMENTATION_SERVICE,
    STREAM_VIEW,
    offline_paths,
)
from core.registry import PropensityBundle, SegmenterBundle
from core.user_state import UserState
from infra.settings import Settings
from training.backfill import (
    BackfillResult,
    backfill,
    evaluation_cutoffs,
    snapshot_instants,
    snapshot_plan,
    write_offline,
)
from training.labels import labelled_snapshots, snapshot_labels
from training.promotion import (
    Decision,
    baseline_gate,
    judge_propensity,
    judge_segmenter,
)
from training.propensity import fit_propensity
from training.segmenter import fit_segmenter
from training.training_set import (
    latest_population,
    matrix,
    model_features,
    training_frame,
)

log = logging.getLogger(__name__)

# Feature views whose offline source the backfill writes.
_OFFLINE_VIEWS = (STREAM_VIEW, HISTORY_VIEW)


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes:
        segmenter: The fitted segmenter (``tag`` set once stored).
        propensity: The fitted propensity model (``tag`` set once stored).
        states: Each user's feature state after the last event, for seeding the
            online path.
        backfill: The snapshot tables written to the offline store.
        snapshots: Every instant with a snapshot row (grid and activity), epoch seconds.
        window: First and last event time, epoch seconds.
        segmentation_frame: The users' latest features the segmenter was fit on.
        decisions: The champion/challenger verdicts (empty without promotion).
        timings: Seconds spent per stage.
    """

    segmenter: SegmenterBundle
    propensity: PropensityBundle
    states: Mapping[str, UserState]
    backfill: BackfillResult
    snapshots: list[float]
    window: tuple[float, float]
    segmentation_frame: pd.DataFrame | None = None
    decisions: list[Decision] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def data_fingerprint(events: pd.DataFrame) -> str:
    """Identifies the training events whatever their order: count and row-hash sum.

    Two runs on the same log (in any order) get the same fingerprint; one event
    more, less or changed gives another.
    """
    columns = [c for c in ("event_id", "user_id", "event_type", "ts") if c in events]
    hashes = pd.util.hash_pandas_object(events[columns], index=False).to_numpy()
    total = int(hashes.sum(dtype=np.uint64))  # wraps modulo 2**64: order-free
    return f"{len(events)}-{total:016x}"


def check_offline_sources(store: FeatureStore, settings: Settings) -> None:
    """Fail fast when the registered sources are not the files the backfill writes.

    ``feature_repo`` resolves its paths from the settings at import time; a repo
    applied under another ``SEGSCORE_HOME`` would silently train on stale files.
    """
    expected = {p.resolve() for p in offline_paths(settings.data_dir)}
    for name in _OFFLINE_VIEWS:
        source = store.get_feature_view(name).batch_source
        path = Path(getattr(source, "path", "")).resolve()
        if path not in expected:
            raise RuntimeError(
                f"feature view {name!r} reads {path}, but the backfill writes "
                f"{sorted(str(p) for p in expected)}; re-apply the feature repo "
                "with the same SEGSCORE_HOME"
            )


def _previous_segmenter(settings: Settings) -> SegmenterBundle | None:
    if not registry.has_champion(registry.SEGMENTER, settings):
        return None
    try:
        return registry.load_segmenter(settings)
    except (NotFound, OSError, KeyError, ValueError):
        return None


def _champion_propensity(settings: Settings) -> PropensityBundle | None:
    if not registry.has_champion(registry.PROPENSITY, settings):
        return None
    try:
        return registry.load_propensity(settings)
    except (NotFound, OSError, KeyError, ValueError):
        return None


def train(
    settings: Settings,
    store: FeatureStore,
    events: pd.DataFrame,
    personas: dict[str, str] | None = None,
    *,
    promote: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
    backfill_workers: int = 1,
    force: bool = False,
) -> TrainResult:
    """Backfill, build training sets through Feast, fit, store and promote.

    Args:
        settings: Paths, snapshot spacing, label horizon and lateness.
        store: A Feast store with the repo applied for the same settings.
        events: Validated events (contract columns, ``ts`` in epoch seconds).
        personas: Ground-truth persona per user (simulated data only); adds the
            adjusted Rand index to the segmenter's metrics.
        promote: Promote each new model that beats its champion on the same
            held-out data (see :mod:`training.promotion`); ``False`` only stores.
        on_progress: Called with (stage, done, total) during long stages, and
            with (stage, 0, 0) when a stage without a count starts.
        backfill_workers: Processes for large backfills (see
            :func:`training.backfill.backfill`; 0 means one per core).
        force: Promote the propensity model even when it fails a baseline on
            its holdout or loses to the champion.

    Returns:
        The fitted models (with their store tags), final user states, backfill
        tables and timings.
    """
    if events.empty:
        raise ValueError("events: nothing to train on")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    ts = events["ts"].to_numpy(dtype=np.float64)
    window = (float(ts.min()), float(ts.max()))
    grid, activity_until = snapshot_plan(events, settings)
    snapshots = snapshot_instants(grid, ts, activity_until)
    if not snapshots:
        raise ValueError(
            f"events: {iso(window[0])}..{iso(window[1])} contains no snapshot instant"
        )
    labelled = labelled_snapshots(snapshots, settings.label_horizon_days, window[1])
    if len(labelled) < 2:
        raise ValueError(
            f"events: {iso(window[0])}..{iso(window[1])} is too short: the "
            f"propensity split needs two snapshots with a full "
            f"{settings.label_horizon_days}-day label horizon after them"
        )
    check_offline_sources(store, settings)

    def stage(name: str, done: int = 0, total: int = 0) -> None:
        if on_progress is not None:
            on_progress(name, done, total)

    result = backfill(
        events,
        grid,
        settings.allowed_lateness_seconds,
        on_progress=lambda done, total: stage("backfill", done, total),
        workers=backfill_workers,
        activity_until=activity_until,
    )
    stage("training sets and models")
    lap("backfill")
    write_offline(result, settings)
    lap("write_offline")

    population = latest_population(result.stream)
    latest = population["event_timestamp"].max()
    seg_frame = training_frame(store, population, SEGMENTATION_SERVICE)
    lap("segmentation_set")
    previous_segmenter = _previous_segmenter(settings)
    segmenter = fit_segmenter(seg_frame, previous=previous_segmenter)
    if personas:
        truth = seg_frame["user_id"].map(personas)
        known = truth.notna().to_numpy()
        assigned = segmenter.assign(matrix(seg_frame, tuple(segmenter.features)))
        segmenter.metrics["ari_vs_personas"] = float(
            adjusted_rand_score(truth[known], assigned[known])
        )
    lap("segmenter_fit")

    entities = snapshot_labels(
        events, result.stream, settings.label_horizon_days, data_end=window[1]
    )
    prop_frame = training_frame(store, entities, PROPENSITY_SERVICE)
    lap("propensity_set")
    cutoffs = evaluation_cutoffs(*window, settings.label_horizon_days)
    propensity = fit_propensity(
        prop_frame,
        settings.label_horizon_days,
        cutoffs=[pd.Timestamp(c, unit="s", tz="UTC") for c in cutoffs],
    )
    lap("propensity_fit")

    common: dict[str, Any] = {
        "training_window_start": iso(window[0]),
        "training_window_end": iso(window[1]),
        "code_version": registry.code_version(),
        "n_events": len(events),
        "n_users": len(result.states),
        "n_snapshots": len(snapshots),
        "data_fingerprint": data_fingerprint(events),
    }
    segmenter.tag = registry.save_segmenter(
        segmenter,
        settings,
        {
            **common,
            "feature_service": SEGMENTATION_SERVICE,
            "features": list(model_features(SEGMENTATION_SERVICE)),
            "n_rows": len(seg_frame),
            "snapshot": str(latest),
            "segments": [s.name for s in segmenter.segments],
        },
    )
    propensity.tag = registry.save_propensity(
        propensity,
        settings,
        {
            **common,
            "feature_service": PROPENSITY_SERVICE,
            "features": list(model_features(PROPENSITY_SERVICE)),
            "n_rows": len(prop_frame),
            "label_horizon_days": settings.label_horizon_days,
            "gate": baseline_gate(propensity.metrics).summary,
        },
    )
    decisions: list[Decision] = []
    if promote:
        decisions = [
            judge_segmenter(segmenter, previous_segmenter, seg_frame),
            judge_propensity(propensity, _champion_propensity(settings), force=force),
        ]
        for decision, name in zip(
            decisions, (registry.SEGMENTER, registry.PROPENSITY), strict=True
        ):
            if decision.promoted:
                registry.promote(name, decision.challenger, settings)
            log.info("%s: %s", decision.challenger, decision.reason)
    lap("save")
    log.info(
        "trained %s and %s in %.1fs (%s); promoted: %s",
        segmenter.tag,
        propensity.tag,
        sum(timings.values()),
        timings,
        [d.challenger for d in decisions if d.promoted] or "nothing",
    )
    return TrainResult(
        segmenter=segmenter,
        propensity=propensity,
        states=result.states,
        backfill=result,
        snapshots=snapshots,
        window=window,
        segmentation_frame=seg_frame,
        decisions=decisions,
        timings=timings,
    )
