"""``segscore bench serve`` end to end with tiny sizes: a smoke test, not a timing.

It must set up everything itself (Redis, simulation, training, both servers), run
every phase against real HTTP, write its flat JSON object, and stop what it
started.
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
        "--workers", "1", "--json", str(out),
    ]  # fmt: skip
    done = run_command(cmd, 400)

    result = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in result, key
    assert all(not isinstance(v, dict | list) for v in result.values())
    assert result["single_requests"] == 40
    assert 0 < result["single_p50_ms"] <= result["single_p99_ms"]
    assert 0 < result["feast_serve_p50_ms"] <= result["feast_serve_p99_ms"]
    assert result["ratio_p99_vs_feast"] == round(
        result["single_p99_ms"] / result["feast_serve_p99_ms"], 3
    )
    assert result["concurrent_requests"] > 0
    assert result["batch100_unexplained_scores_per_s"] > 0
    assert result["trees"] > 0 and result["leaves"] >= 2 * result["trees"]
    assert "segscore bench serve" in done.stdout
    # Everything it started is gone: its home (and logs) are removed on success.
    home = next(
        (line.split()[-1] for line in done.stdout.splitlines() if "bench home" in line),
        None,
    )
    assert home is not None and not Path(home).exists()
