"""Training benches at small size (not timed): ``segscore bench training --quick``
must import, backfill and build both training sets through Feast, fit both models
on them and write its JSON with the medians of its repeats; the generated
transaction log must have the layout and size asked for."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pandas as pd
import pytest

pytestmark = pytest.mark.bench


def test_bench_training_smoke(
    tmp_path: Path, run_command: Callable[..., CompletedProcess[str]]
) -> None:
    out = tmp_path / "bench-training.json"
    args = ["--quick", "--json", str(out)]
    cmd = [sys.executable, "-m", "segscore.cli", "bench", "training", *args]
    done = run_command(cmd, 300)
    result = json.loads(out.read_text())
    assert result["seconds"] > 0 and result["peak_rss_mb"] > 0
    # The headline peak covers the whole process tree, never less than one process.
    assert result["peak_rss_tree_sampled_mb"] > 100
    assert result["peak_rss_mb"] >= result["peak_rss_process_mb"]
    assert result["peak_rss_mb"] >= result["peak_rss_tree_sampled_mb"]
    assert result["imported_events"] == 5000 and result["rejected_rows"] == 0
    assert result["segmentation_rows"] == 500
    # Every user at the newest snapshot, and more rows at the earlier ones.
    assert result["snapshot_rows"] > result["segmentation_rows"]
    assert result["snapshots"] >= result["grid_instants"] >= 1
    assert result["propensity_rows"] > result["segmentation_rows"]
    # Both models were fitted on the sets, timed apart from ``seconds``.
    assert result["fit_seconds"] > 0 and result["segments"] >= 2
    assert result["fit_seconds"] == pytest.approx(
        result["segmenter_fit_s"] + result["propensity_fit_s"], abs=0.02
    )
    # --quick: one repeat, reported as a median with its value and the load.
    assert result["repeats"] == 1
    assert result["seconds_runs"] == [result["seconds"]]
    assert len(result["load_avg_1m_runs"]) == 1
    assert result["target_seconds"] == 20 and result["target_rss_mb"] == 2048
    assert "seconds" in done.stdout and "peak_rss_mb" in done.stdout


def test_transaction_log_has_the_layout_and_size_asked_for(tmp_path: Path) -> None:
    from segscore.bench.transaction_log import (
        DAY,
        TransactionLogConfig,
        write_transaction_log,
    )
    from training.event_import import import_events

    end = 1_767_225_599.0  # 2025-12-31 23:59:59 UTC
    config = TransactionLogConfig(customers=4_000)
    path = tmp_path / "transactions.csv"
    rows = write_transaction_log(path, config, end=end)
    # About three transactions per customer, as at the 50k-customer size.
    assert 2.5 * config.customers <= rows <= 3.5 * config.customers
    imported = import_events(path, tmp_path / "events.parquet", now=end + DAY)
    assert imported.summary.layout == "transactions"
    assert imported.summary.accepted == rows and imported.summary.rejected == 0
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert events["user_id"].nunique() == config.customers
    assert set(events["event_type"]) == {"purchase"}
    assert events["ts"].min() >= end - config.days * DAY - DAY
    assert events["ts"].max() <= end


def _repeat(seconds: float, peak: float, load: float) -> dict[str, float]:
    from segscore.bench.training import REPEATED
    from segscore.bench.training_child import TIMED_STAGES

    run = dict.fromkeys(REPEATED, 1.0)
    run.update({stage: seconds / len(TIMED_STAGES) for stage in TIMED_STAGES})
    run.update(seconds=seconds, peak_rss_mb=peak, load_avg_1m=load)
    run.update(fit_seconds=3.0, segmenter_fit_s=1.0, propensity_fit_s=2.0)
    run.update(fit_peak_rss_mb=900.0, snapshot_rows=123)
    return run


def test_training_bench_checks_the_targets_on_the_medians() -> None:
    from segscore.bench.training import TrainingBenchConfig, summarize

    # One slow repeat (a busy machine) does not fail the target; the median does.
    runs = [_repeat(18.0, 1900.0, 0.4), _repeat(31.0, 1950.0, 2.5)]
    runs.append(_repeat(19.0, 2000.0, 0.6))
    result = summarize(runs, TrainingBenchConfig())
    assert result["seconds"] == 19.0 and result["peak_rss_mb"] == 1950.0
    assert result["seconds_runs"] == [18.0, 31.0, 19.0]
    assert result["seconds_spread_pct"] == pytest.approx(100 * 13 / 19, abs=0.1)
    assert result["load_avg_1m_runs"] == [0.4, 2.5, 0.6]
    assert result["meets_targets"] is True
    assert result["fit_seconds"] == 3.0 and result["snapshot_rows"] == 123
    slower = [_repeat(21.0, 1900.0, 0.4) for _ in range(3)]
    assert summarize(slower, TrainingBenchConfig())["meets_targets"] is False


def test_quick_training_bench_is_small_and_given_options_win() -> None:
    from segscore.bench.training import make_config

    quick = make_config(True, events=None, repeats=None)
    assert quick.repeats == 1 and quick.events < 10_000 and quick.fit
    assert make_config(True, events=8_000).events == 8_000
    assert make_config(False).repeats == 3 and make_config(False).events == 1_000_000
    with pytest.raises(ValueError, match="unknown"):
        make_config(False, wrong=1)
