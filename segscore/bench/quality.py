"""``segscore bench quality``: model quality on simulated, BG/NBD-drawn and real logs.

Each set (:mod:`segscore.bench.quality_sets`) is run as a new user would run it:
its file is imported with :func:`training.event_import.import_events` into the
data directory of a fresh temporary ``SEGSCORE_HOME`` and the training pipeline
(:func:`training.pipeline.train`) runs on it, in ONE fresh child process per set,
so that ``peak_rss_mb`` is that run's own (sampled with its backfill workers,
as in ``bench training``). The numbers are the propensity model's holdout metrics
as the pipeline computes them (a temporal split at a fixed cut-off, a label
horizon of ``label_horizon_days``) beside each baseline's.

``bgnbd_world_auc_gap`` is the AUC of BG/NBD with the TRUE generating parameters,
scored on the same holdout rows as our model, minus our model's AUC (the fitted
BG/NBD's gap is ``bgnbd_world_fitted_auc_gap``). ``margin`` of a set is our
ROC-AUC minus the best baseline's; ``real_auc_margin_min`` is the smallest margin
across the real sets that ran; ``real_textbook_margin_min`` the same over the
recency-frequency heuristic and BG/NBD only (logistic regression on our own
features is a rival of the booster, not a textbook baseline).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from segscore.bench.harness import BenchError, run_in_child
from segscore.bench.quality_sets import (
    ALL_SETS,
    REAL_SETS,
    PreparedSet,
    QualitySizes,
    SetSkipped,
    prepare_set,
)

# Propensity baselines as the pipeline names their metrics (training.promotion).
BASELINE_PREFIXES = ("baseline_", "logistic_", "bgnbd_")
# The textbook rivals a CRM team would use without any model of ours: the
# recency-frequency heuristic and BG/NBD (logistic regression reads our features).
TEXTBOOK_PREFIXES = ("baseline_", "bgnbd_")
_METRICS = ("roc_auc", "pr_auc", "brier", "lift_top_decile")


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def summarise_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Our holdout metrics, each baseline's ROC-AUC and the margin over the best.

    Args:
        metrics: The propensity model's holdout metrics from the pipeline.

    Returns:
        ``roc_auc``, ``pr_auc``, ``brier``, ``lift_top_decile``, ``<prefix>roc_auc``
        per baseline present, ``best_baseline_roc_auc`` and ``margin`` (over
        every baseline), ``textbook_margin`` (over the heuristic and BG/NBD only);
        None when a term is missing.
    """
    out: dict[str, Any] = {k: _finite(metrics.get(k)) for k in _METRICS}
    baselines = {}
    for prefix in BASELINE_PREFIXES:
        value = _finite(metrics.get(f"{prefix}roc_auc"))
        out[f"{prefix}roc_auc"] = value
        if value is not None:
            baselines[prefix] = value
    best = max(baselines.values()) if baselines else None
    out["best_baseline_roc_auc"] = best
    ours = out["roc_auc"]
    out["margin"] = None if best is None or ours is None else ours - best
    textbook = [v for k, v in baselines.items() if k in TEXTBOOK_PREFIXES]
    out["textbook_margin"] = (
        None if not textbook or ours is None else ours - max(textbook)
    )
    return out


def margin_interval(
    labels: np.ndarray,
    ours: np.ndarray,
    rivals: Sequence[np.ndarray],
    draws: int = 200,
    seed: int = 0,
) -> tuple[float, float] | None:
    """95 % bootstrap interval of our ROC-AUC minus the best rival's.

    Holdout rows are resampled with replacement and every contender is scored on
    the same resample (a paired bootstrap), so the interval shows how much of a
    margin is the holdout's luck: a few hundred buyers leave several thousandths.

    Args:
        labels: Holdout labels (0/1).
        ours: Our scores on the holdout rows.
        rivals: Each baseline's scores on the same rows.
        draws: Resamples.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``, or None without rivals or without both classes.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if not rivals or len(set(labels.tolist())) < 2:
        return None
    rng = np.random.default_rng(seed)
    margins = []
    for _ in range(draws):
        pick = rng.integers(0, len(labels), len(labels))
        y = labels[pick]
        if y.min() == y.max():
            continue
        best = max(roc_auc_score(y, r[pick]) for r in rivals)
        margins.append(roc_auc_score(y, ours[pick]) - best)
    if not margins:
        return None
    low, high = np.percentile(margins, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def _margin_intervals(evaluation: Any) -> dict[str, Any]:
    """Bootstrap intervals of both margins (see :func:`margin_interval`)."""
    if evaluation is None:
        return {}
    textbook = [evaluation.recency_frequency]
    if evaluation.bgnbd is not None:
        textbook.append(evaluation.bgnbd)
    args = (evaluation.labels, evaluation.model)
    return {
        "margin_ci95": margin_interval(*args, [*textbook, evaluation.logistic]),
        "textbook_margin_ci95": margin_interval(*args, textbook),
    }


def _child(
    home: str, prepared: PreparedSet, horizon_days: int | None, box: Any
) -> None:
    """Child process: import the set into a fresh home and train on it."""
    os.environ["SEGSCORE_HOME"] = home
    if horizon_days is not None:
        os.environ["SEGSCORE_LABEL_HORIZON_DAYS"] = str(horizon_days)
    warnings.filterwarnings("ignore")  # library notices would bury the numbers
    from core.event_files import read_events
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra.settings import get_settings
    from training.event_import import import_events
    from training.pipeline import train
    from training.promotion import baseline_gate

    settings = get_settings()
    store = feature_store(settings, "redis://127.0.0.1:1/0")  # never contacted
    apply_repo(store)
    started = time.perf_counter()
    events_path = settings.data_dir / "events.parquet"
    imported = import_events(prepared.source, events_path)
    events = read_events(events_path)
    result = train(
        settings,
        store,
        events,
        prepared.personas,
        backfill_workers=settings.backfill_workers,
    )
    seconds = time.perf_counter() - started
    metrics = result.propensity.metrics
    reply: dict[str, Any] = {
        "rows": imported.summary.accepted,
        "users": len(result.states),
        "label_horizon_days": settings.label_horizon_days,
        "n_holdout": _finite(metrics.get("n_holdout")),
        **summarise_metrics(metrics),
        **_margin_intervals(result.propensity.evaluation),
        "gate": baseline_gate(metrics).summary,
        "ari_vs_personas": _finite(result.segmenter.metrics.get("ari_vs_personas")),
        "train_seconds": round(seconds, 2),
        "peak_rss_process_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }
    if prepared.bgnbd_config is not None:
        reply["bgnbd_fitted_params"] = {
            k: _finite(metrics.get(f"bgnbd_{k}")) for k in ("r", "alpha", "a", "b")
        }
        reply["true_bgnbd_roc_auc"] = _true_bgnbd_auc(
            result.propensity.evaluation, prepared, settings.label_horizon_days
        )
    box.put(reply)


def _true_bgnbd_auc(
    evaluation: Any, prepared: PreparedSet, horizon: int
) -> float | None:
    """ROC-AUC of BG/NBD with the generating parameters on the model's holdout rows."""
    from sklearn.metrics import roc_auc_score

    from training.bgnbd import BgNbdParams
    from training.propensity import BgNbdBaseline

    config = prepared.bgnbd_config
    if evaluation is None or config is None or len(set(evaluation.labels)) < 2:
        return None
    truth = BgNbdParams(
        r=config.rate_shape,
        alpha=1 / config.rate_scale_days,
        a=config.dropout_a,
        b=config.dropout_b,
    )
    scores = BgNbdBaseline(params=truth, horizon_days=float(horizon)).probability(
        evaluation.frame
    )
    return float(roc_auc_score(evaluation.labels, scores))


def run_set(
    name: str, sizes: QualitySizes, horizon_days: int | None = None
) -> dict[str, Any]:
    """Prepare one set and train on it in a child process.

    Returns:
        The set's numbers (see :func:`_child`), ``peak_rss_mb``, ``note``; or
        ``{"skipped": reason}`` when its package is not installed.
    """
    home = Path(tempfile.mkdtemp(prefix=f"segscore-bench-quality-{name}-"))
    try:
        try:
            prepared = prepare_set(name, home / "source", sizes)
        except SetSkipped as exc:
            return {"skipped": str(exc)}
        reply, tree_peak = run_in_child(
            _child,
            (str(home), prepared, horizon_days),
            died=f"{name}: training child exited with {{exitcode}}",
        )
        reply["peak_rss_mb"] = round(
            max(tree_peak, reply.pop("peak_rss_process_mb")), 1
        )
        reply["note"] = prepared.note
        return reply
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _gap(theirs: float | None, ours: float | None) -> float | None:
    return None if theirs is None or ours is None else round(theirs - ours, 4)


def run_quality(
    sets: Sequence[str] = ALL_SETS,
    sizes: QualitySizes | None = None,
    horizon_days: int | None = None,
    on_set: Any = None,
) -> dict[str, Any]:
    """Run the chosen sets and gather the report.

    Args:
        sets: Names from :data:`segscore.bench.quality_sets.ALL_SETS`.
        sizes: Sizes of the generated sets (defaults: a few minutes in all).
        horizon_days: Label horizon; None keeps the settings' default.
        on_set: Called with each set's name before it runs (progress).

    Returns:
        The report: ``sim_ari``, ``bgnbd_world_auc_gap``, ``real_sets``,
        ``real_auc_margin_min``, ``train_seconds`` (all sets), ``train_peak_rss_mb``
        (max over sets), and ``sets`` with every set's numbers.
    """
    sizes = sizes or QualitySizes()
    unknown = [s for s in sets if s not in ALL_SETS]
    if unknown:
        raise BenchError(f"unknown sets {unknown}; choose from {', '.join(ALL_SETS)}")
    results: dict[str, dict[str, Any]] = {}
    for name in sets:
        if on_set is not None:
            on_set(name)
        results[name] = run_set(name, sizes, horizon_days)
    ran = [r for r in results.values() if "skipped" not in r]
    sim = results.get("simulator", {})
    world = results.get("bgnbd_world", {})
    real = {k: v for k, v in results.items() if k in REAL_SETS}
    margins = [v["margin"] for v in real.values() if v.get("margin") is not None]
    textbook = [
        v["textbook_margin"]
        for v in real.values()
        if v.get("textbook_margin") is not None
    ]
    return {
        "sim_ari": sim.get("ari_vs_personas"),
        "bgnbd_world_auc_gap": _gap(
            world.get("true_bgnbd_roc_auc"), world.get("roc_auc")
        ),
        "bgnbd_world_fitted_auc_gap": _gap(
            world.get("bgnbd_roc_auc"), world.get("roc_auc")
        ),
        "real_sets": real,
        "real_auc_margin_min": round(min(margins), 4) if margins else None,
        "real_textbook_margin_min": round(min(textbook), 4) if textbook else None,
        "train_seconds": round(sum(r["train_seconds"] for r in ran), 2),
        "train_peak_rss_mb": max((r["peak_rss_mb"] for r in ran), default=None),
        "sets": results,
        "sizes": {k: v for k, v in vars(sizes).items()},
        "cpu_count": os.cpu_count(),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return " .. ".join(_fmt(v) for v in value)
    return str(value)


def print_result(console: Console, result: dict[str, Any]) -> None:
    """One column per set, one row per number, then the headline numbers."""
    names = list(result["sets"])
    table = Table("", *names, title="segscore bench quality")
    rows = {
        "rows": "rows",
        "users": "users",
        "roc_auc": "ROC-AUC",
        "pr_auc": "PR-AUC",
        "brier": "Brier",
        "lift_top_decile": "top-decile lift",
        "baseline_roc_auc": "recency-frequency AUC",
        "logistic_roc_auc": "logistic AUC",
        "bgnbd_roc_auc": "BG/NBD AUC (fitted)",
        "true_bgnbd_roc_auc": "BG/NBD AUC (true)",
        "margin": "margin over best baseline",
        "textbook_margin": "margin over RF and BG/NBD",
        "textbook_margin_ci95": "  its 95% bootstrap interval",
        "train_seconds": "train s",
        "peak_rss_mb": "peak MB",
    }
    sets = result["sets"]
    if any("skipped" in r for r in sets.values()):
        table.add_row("skipped", *(sets[n].get("skipped", "") for n in names))
    for key, label in rows.items():
        table.add_row(label, *(_fmt(sets[n].get(key)) for n in names))
    console.print(table)
    for key in (
        "sim_ari",
        "bgnbd_world_auc_gap",
        "bgnbd_world_fitted_auc_gap",
        "real_auc_margin_min",
        "real_textbook_margin_min",
        "train_seconds",
        "train_peak_rss_mb",
    ):
        console.print(f"{key}: {_fmt(result.get(key))}")
    for name, r in result["sets"].items():
        if "gate" in r:
            console.print(f"{name} gate: {r['gate']}", markup=False, highlight=False)
