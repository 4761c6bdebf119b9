"""``segscore bench serve`` end to end with tiny sizes: a smoke test, not a timing.

It must set up everything itself (Redis, simulation, training, both servers), run
every phase against real HTTP with the service's memory sampled, write its flat
JSON object (medians of one ``--quick`` repeat), and stop what it started.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

pytestmark = pytest.mark.bench

REQUIRED = (
    "single_p50_ms",
    "single_p99_ms",
    "feast_serve_p99_ms",
    "ratio_p99_vs_feast",
    "concurrent_explained_per_s",
    "batch100_explained_p99_ms",
    "batch100_unexplained_scores_per_s",
    "serve_rss_mb",
    "serve_pss_mb",
    "serve_rss_mb_largest_process",
    "trees",
    "leaves",
    "cpu_count",
)


def test_bench_serve_runs_every_phase_and_writes_flat_json(
    tmp_path: Path, run_command: Callable[..., CompletedProcess[str]]
):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "segscore.cli", "bench", "serve",
        "--users", "200", "--days", "24",
        "--single-requests", "40", "--concurrency", "4", "--duration", "1",
        "--batch-requests", "10", "--batch-size", "20", "--batch-concurrency", "2",
        "--workers", "1", "--quick", "--json", str(out),
    ]  # fmt: skip
    done = run_command(cmd, 400)

    result = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in result, key
    # Flat: no objects; lists only as each repeat's value of a number.
    for key, value in result.items():
        assert not isinstance(value, dict), key
        if isinstance(value, list):
            assert key.endswith("_runs"), key
            assert all(isinstance(v, int | float) for v in value), key
    # --quick is one repeat: the medians are that repeat's values.
    assert result["repeats"] == 1
    assert result["single_p99_ms_runs"] == [result["single_p99_ms"]]
    assert len(result["load_avg_1m_runs"]) == 1
    assert result["single_requests"] == 40
    assert 0 < result["single_p50_ms"] <= result["single_p99_ms"]
    assert 0 < result["feast_serve_p50_ms"] <= result["feast_serve_p99_ms"]
    assert result["ratio_p99_vs_feast"] == round(
        result["single_p99_ms"] / result["feast_serve_p99_ms"], 3
    )
    assert result["concurrent_requests"] > 0
    assert result["batch100_explained_requests"] > 0
    assert (
        0 < result["batch100_explained_p50_ms"] <= result["batch100_explained_p99_ms"]
    )
    # The arbiter and its one worker, at least, were sampled; a sum is no less
    # than its largest part, and PSS (shared pages split) no more than RSS.
    assert result["serve_processes"] >= 2
    assert result["serve_rss_mb"] >= result["serve_rss_mb_largest_process"] > 0
    assert 0 < result["serve_pss_mb"] <= result["serve_rss_mb"]
    assert result["batch100_unexplained_scores_per_s"] > 0
    assert result["trees"] > 0 and result["leaves"] >= 2 * result["trees"]
    assert "segscore bench serve" in done.stdout
    # Everything it started is gone: its home (and logs) are removed on success.
    home = next(
        (line.split()[-1] for line in done.stdout.splitlines() if "bench home" in line),
        None,
    )
    assert home is not None and not Path(home).exists()
