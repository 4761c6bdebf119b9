"""``segscore bench training``: import -> backfill -> point-in-time training sets.

Generates an event log in the public "eCommerce behavior data" layout (CSV) --
``events`` rows over ``users`` users and ``days`` days, uniform arrivals, the
Kaggle data's mix of view / cart / remove_from_cart / purchase -- then runs, in ONE
fresh child process so its peak memory is the pipeline's own:

1. ``segscore import`` (:func:`training.event_import.import_events`),
2. the backfill with the stream worker's feature functions, snapshots as the
   training run takes them (:func:`training.backfill.snapshot_plan`),
3. the offline-store write (Parquet files Feast reads),
4. both training sets through Feast ``get_historical_features`` (segmentation:
   every user at the last snapshot; propensity: every labelled snapshot row).

``seconds`` is the wall time of 1-4 (generating the input is not counted).
``peak_rss_mb`` is the most memory the pipeline held at once: the larger of the
child's own peak resident set and the total resident set of the child *and its
backfill worker processes*, sampled every 50 ms (a parallel backfill's workers
count, not just the process that waits for them). Feast registry setup is timed
separately (``setup_s``) since it does not grow with the data.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from core.names import PROPENSITY_SERVICE, SEGMENTATION_SERVICE
from segscore.bench.harness import run_in_child

TARGET_SECONDS = 60.0
TARGET_RSS_MB = 4096.0
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
    """What to generate."""

    events: int = 1_000_000
    users: int = 100_000
    days: int = 30
    seed: int = 7
    keep_home: bool = False


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


def _stage_peak_mb() -> float | None:
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


def _pipeline(home: str, csv: str, config: dict[str, Any], box: Any) -> None:
    """Child process: import, backfill, write offline, build both training sets."""
    os.environ["SEGSCORE_HOME"] = home
    # Library chatter (Feast's experimental-feature notice, ibis deprecations)
    # would bury the numbers.
    warnings.filterwarnings("ignore")
    from core.event_files import read_events
    from core.store.feast_config import feature_store
    from feature_repo.apply import apply_repo
    from infra.settings import get_settings
    from training.backfill import backfill, snapshot_plan, write_offline
    from training.event_import import import_events
    from training.labels import snapshot_labels
    from training.training_set import latest_population, training_frame

    settings = get_settings()
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = round(now - clock, 2)
        peak = _stage_peak_mb()
        if peak is not None:
            stages[name.removesuffix("_s") + "_peak_rss_mb"] = peak
        clock = now

    store = feature_store(settings, "redis://127.0.0.1:1/0")  # never contacted
    apply_repo(store)
    lap("setup_s")
    events_path = settings.data_dir / "events.parquet"
    imported = import_events(Path(csv), events_path)
    events = read_events(events_path)
    lap("import_s")
    ts = events["ts"].to_numpy()
    grid, activity_until = snapshot_plan(events, settings)
    result = backfill(
        events,
        grid,
        settings.allowed_lateness_seconds,
        workers=settings.backfill_workers,
        activity_until=activity_until,
    )
    lap("backfill_s")
    write_offline(result, settings)
    lap("write_offline_s")
    population = latest_population(result.stream)
    snapshot_rows = len(result.stream)
    snapshot_instants = result.stream["event_timestamp"].nunique()
    rows = result.stream[["user_id", "event_timestamp"]]
    # From here on the offline files are the features; holding the tables too
    # would only add to the peak.
    del result
    segmentation = training_frame(store, population, SEGMENTATION_SERVICE)
    lap("segmentation_set_s")
    entities = snapshot_labels(
        events, rows, settings.label_horizon_days, data_end=float(ts.max())
    )
    del rows
    del events
    propensity = training_frame(store, entities, PROPENSITY_SERVICE)
    lap("propensity_set_s")
    box.put(
        {
            **stages,
            "imported_events": imported.summary.accepted,
            "rejected_rows": imported.summary.rejected,
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


def run_training_bench(config: TrainingBenchConfig) -> dict[str, Any]:
    """Generate the input, run the pipeline in a child process, return one flat dict."""
    home = Path(tempfile.mkdtemp(prefix="segscore-bench-training-"))
    try:
        csv = home / "ecommerce.csv"
        started = time.perf_counter()
        write_ecommerce_csv(csv, config)
        generate_s = time.perf_counter() - started
        result, tree_peak = run_in_child(
            _pipeline,
            (str(home), str(csv), asdict(config)),
            died="benchmark child exited with {exitcode} (see above)",
        )
        peak = round(max(result["peak_rss_mb"], tree_peak), 1)
        timed = (
            "import_s",
            "backfill_s",
            "write_offline_s",
            "segmentation_set_s",
            "propensity_set_s",
        )
        seconds = round(sum(result[k] for k in timed), 2)
        result["peak_rss_process_mb"] = result.pop("peak_rss_mb")
        return {
            "events": config.events,
            "users": config.users,
            "days": config.days,
            "seconds": seconds,
            "peak_rss_mb": peak,
            "peak_rss_tree_sampled_mb": round(tree_peak, 1),
            "target_seconds": TARGET_SECONDS,
            "target_rss_mb": TARGET_RSS_MB,
            "meets_targets": seconds <= TARGET_SECONDS and peak <= TARGET_RSS_MB,
            **result,
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
