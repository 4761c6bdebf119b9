"""``segscore bench training``: import -> backfill -> point-in-time training sets.

Generates an event log in the public "eCommerce behavior data" layout (CSV) --
``events`` rows over ``users`` users and ``days`` days, uniform arrivals, the
Kaggle data's mix of view / cart / remove_from_cart / purchase -- then, ``repeats``
times, runs in a fresh child process (:mod:`segscore.bench.training_child`) so
that its peak memory is the pipeline's own and every repeat measures the same:

1. ``segscore import`` (:func:`training.event_import.import_events`),
2. the backfill with the stream worker's feature functions, snapshots as the
   training run takes them (:func:`training.backfill.snapshot_plan`),
3. the offline-store write (Parquet files Feast reads),
4. both training sets through Feast ``get_historical_features`` (segmentation:
   every user at the last snapshot; propensity: every labelled snapshot row),

and then fits both models on those sets as ``segscore train`` does.

``seconds`` is the wall time of 1-4 (generating the input and the fit are not
counted; the fit is ``fit_seconds``). ``peak_rss_mb`` is the most memory 1-4 held
at once: the larger of the child's own peak resident set and the total resident
set of the child *and its backfill worker processes*, sampled every 50 ms (a
parallel backfill's workers count, not just the process that waits for them);
the fit's peak is ``fit_peak_rss_mb``. ``cpu_s`` is the CPU time 1-4 took in all
processes, which the machine's other load changes less than the wall time. Each
number is the median of the repeats, with each repeat's value, the spread and the
load average after each repeat (:mod:`segscore.bench.repeats`); the targets are
checked on the medians. Feast registry setup is timed separately (``setup_s``)
since it does not grow with the data.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from segscore.bench.harness import TreeMemory, wait_for_reply
from segscore.bench.repeats import (
    DEFAULT_REPEATS,
    chosen_options,
    load_average,
    summarize_runs,
)
from segscore.bench.training_child import TIMED_STAGES, pipeline

TARGET_SECONDS = 20.0
TARGET_RSS_MB = 2048.0
# Roughly the event mix of the public dataset (views dominate).
ECOMMERCE_MIX = {
    "view": 0.90,
    "cart": 0.06,
    "remove_from_cart": 0.025,
    "purchase": 0.015,
}
CATEGORIES = (
    "electronics.smartphone",
    "appliances.kitchen.washer",
    "computers.notebook",
    "apparel.shoes",
    "furniture.living_room.sofa",
    "kids.toys",
    "sport.bicycle",
    "beauty.fragrance",
)


@dataclass(frozen=True)
class TrainingBenchConfig:
    """What to generate, how often to measure it, and whether to fit the models."""

    events: int = 1_000_000
    users: int = 100_000
    days: int = 30
    seed: int = 7
    repeats: int = DEFAULT_REPEATS
    fit: bool = True
    keep_home: bool = False


# What ``--quick`` changes: one repeat on a small log (CI); the fit stays, so the
# whole path is exercised.
QUICK: dict[str, Any] = {"repeats": 1, "events": 5_000, "users": 500, "days": 12}

# The numbers each repeat measures, summarised as medians with their spread.
REPEATED = (
    "seconds",
    "peak_rss_mb",
    "peak_rss_tree_sampled_mb",
    "peak_rss_process_mb",
    "cpu_s",
    *TIMED_STAGES,
    *(f"{stage.removesuffix('_s')}_peak_rss_mb" for stage in TIMED_STAGES),
    "setup_s",
)
FIT_REPEATED = (
    "fit_seconds",
    "segmenter_fit_s",
    "propensity_fit_s",
    "fit_peak_rss_mb",
)


def make_config(quick: bool = False, **given: Any) -> TrainingBenchConfig:
    """A config from the options given (``None`` = not given) and ``--quick``.

    See :func:`segscore.bench.repeats.chosen_options` (``quick`` fills in
    :data:`QUICK`).
    """
    chosen = chosen_options(given, quick, QUICK)
    known = {f.name for f in fields(TrainingBenchConfig)}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise ValueError(f"unknown training bench options {unknown}")
    return TrainingBenchConfig(**chosen)


def write_ecommerce_csv(path: Path, config: TrainingBenchConfig) -> None:
    """An eCommerce-behavior-layout CSV of ``config.events`` rows, vectorised."""
    rng = np.random.default_rng(config.seed)
    n = config.events
    end = time.time() - 3600
    ts = np.sort(rng.uniform(end - config.days * 86_400, end, n))
    # The public data's format: "2019-10-01 00:00:04 UTC" (whole seconds).
    stamps = np.char.replace(ts.astype("datetime64[s]").astype(str), "T", " ")
    kinds = np.array(list(ECOMMERCE_MIX))
    p = np.array(list(ECOMMERCE_MIX.values()))
    event_type = kinds[rng.choice(len(kinds), size=n, p=p / p.sum())]
    users = rng.integers(0, config.users, size=n)
    products = rng.integers(1_000_000, 1_050_000, size=n)
    category = rng.integers(0, len(CATEGORIES), size=n)
    table = pa.table(
        {
            "event_time": pa.array(np.char.add(stamps, " UTC")),
            "event_type": pa.array(event_type),
            "product_id": pa.array(products),
            "category_id": pa.array(2_053_013_555_631_882_655 + category),
            "category_code": pa.array(np.array(CATEGORIES)[category]),
            "brand": pa.array(np.full(n, "acme")),
            "price": pa.array(np.round(rng.gamma(2.0, 40.0, size=n), 2)),
            "user_id": pa.array(500_000_000 + users),
            # A new session every ~4 events of a user, as in the public data.
            "user_session": pa.array(
                np.char.add(
                    "s", ((users * 7919 + np.arange(n) // 4) % 10**9).astype(str)
                )
            ),
        }
    )
    pacsv.write_csv(table, path)


def run_once(root: Path, csv: Path, fit: bool, keep: bool = False) -> dict[str, Any]:
    """One repeat in a fresh child process and a fresh home under ``root``.

    The home is removed afterwards unless ``keep``.

    Returns:
        The repeat's flat result: the child's stages and counts, ``seconds``,
        ``peak_rss_mb`` (import -> sets), with ``fit`` the fit's numbers, and
        ``load_avg_1m`` right after the repeat.
    """
    home = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    died = "benchmark child exited with {exitcode} (see above)"
    context = mp.get_context("spawn")
    box = context.Queue()
    child = context.Process(target=pipeline, args=(str(home), str(csv), fit, box))
    child.start()
    assert child.pid is not None
    try:
        with TreeMemory(child.pid) as tree:
            result = wait_for_reply(box, child, None, died=died)
        sets_peak = tree.peak_mb
        fitted: dict[str, Any] = {}
        if fit:
            # A new sampler: the fit's peak is reported apart from the target's.
            with TreeMemory(child.pid) as fit_tree:
                fitted = wait_for_reply(box, child, None, died=died)
            process = fitted.get("fit_peak_rss_process_mb") or 0.0
            fitted["fit_peak_rss_mb"] = round(max(process, fit_tree.peak_mb), 1)
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    result["peak_rss_process_mb"] = result.pop("peak_rss_mb")
    return {
        **result,
        **fitted,
        "seconds": round(sum(result[k] for k in TIMED_STAGES), 2),
        "peak_rss_mb": round(max(result["peak_rss_process_mb"], sets_peak), 1),
        "peak_rss_tree_sampled_mb": round(sets_peak, 1),
        "load_avg_1m": load_average(),
    }


def summarize(
    runs: list[dict[str, Any]], config: TrainingBenchConfig
) -> dict[str, Any]:
    """The repeats as one flat report: medians with spreads, targets on the medians.

    Counts (rows, events) are the same in every repeat of one input; the last
    repeat's are reported.
    """
    keys = [*REPEATED, *(k for k in FIT_REPEATED if k in runs[0])]
    summary = summarize_runs(runs, keys)
    seconds, peak = summary["seconds"], summary["peak_rss_mb"]
    last = runs[-1]
    counts = {
        k: v
        for k, v in last.items()
        if k not in keys and k not in ("load_avg_1m", "fit_peak_rss_process_mb")
    }
    medians = {k: summary.pop(k) for k in keys}
    return {
        "events": config.events,
        "users": config.users,
        "days": config.days,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "target_seconds": TARGET_SECONDS,
        "target_rss_mb": TARGET_RSS_MB,
        "meets_targets": seconds <= TARGET_SECONDS and peak <= TARGET_RSS_MB,
        **{k: v for k, v in medians.items() if k not in ("seconds", "peak_rss_mb")},
        **counts,
        **summary,
    }


def run_training_bench(config: TrainingBenchConfig) -> dict[str, Any]:
    """Generate the input once, run ``config.repeats`` repeats, return one flat dict."""
    if config.repeats < 1:
        raise ValueError("repeats must be >= 1")
    home = Path(tempfile.mkdtemp(prefix="segscore-bench-training-"))
    try:
        csv = home / "ecommerce.csv"
        started = time.perf_counter()
        write_ecommerce_csv(csv, config)
        generate_s = time.perf_counter() - started
        runs = [
            run_once(home, csv, config.fit, config.keep_home)
            for _ in range(config.repeats)
        ]
        return {
            **summarize(runs, config),
            "generate_input_s": round(generate_s, 2),
            "input_mb": round(csv.stat().st_size / 2**20, 1),
            "cpu_count": os.cpu_count(),
            "machine": f"{platform.platform()} | {platform.processor() or '?'}",
        }
    finally:
        if config.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
