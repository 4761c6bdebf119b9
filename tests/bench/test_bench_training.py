"""Training benches at small size (not timed): ``segscore bench training`` must
import, backfill and build both training sets through Feast and write its JSON;
the generated transaction log must have the layout and size asked for."""

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
    args = ["--events", "5000", "--users", "500", "--days", "12", "--json", str(out)]
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
