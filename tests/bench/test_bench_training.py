"""Smoke run of ``segscore bench training`` (not a timed test): it must import,
backfill and build both training sets through Feast, and write its JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

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
    # Every user at every daily snapshot from their first event on.
    assert result["snapshot_rows"] >= result["segmentation_rows"]
    assert result["propensity_rows"] > result["segmentation_rows"]
    assert "seconds" in done.stdout and "peak_rss_mb" in done.stdout
