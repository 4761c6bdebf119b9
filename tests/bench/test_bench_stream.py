"""Smoke run of ``segscore bench stream`` on real components (not a timed test).

A tiny backlog and a short paced phase: the command must start and stop its own
stack, apply every event, see sampled events through Feast and write its JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

pytestmark = pytest.mark.bench

KEYS = (
    "events_per_s",
    "freshness_p50_ms",
    "freshness_p99_ms",
    "offered_rate",
    "achieved_rate",
    "events",
    "users",
    "cpu_count",
    "machine",
    "worker_batch_max_events",
    "timestamp",
    "worker_start_to_first_write_s",
    "raw_consumer_events_per_s",
    "worker_share_of_raw",
)


def test_bench_stream_smoke(
    tmp_path: Path, run_command: Callable[..., CompletedProcess[str]]
) -> None:
    out = tmp_path / "bench.json"
    # Several small batches, so throughput is measured between two worker writes.
    args = [
        *("--events", "3000", "--users", "200", "--batch-max-events", "250"),
        *("--rate", "300", "--duration", "2", "--quick", "--workers", "2"),
    ]
    cmd = [sys.executable, "-m", "segscore.cli", "bench", "stream", *args]
    result = run_command([*cmd, "--json", str(out)], 180)
    data = json.loads(out.read_text())
    missing = [k for k in KEYS if k not in data]
    assert not missing, missing
    # Flat: no objects; lists only as each repeat's value of a number.
    for key, value in data.items():
        assert not isinstance(value, dict), key
        if isinstance(value, list):
            assert key.endswith("_runs"), key
    # --quick is one repeat: each median is that repeat's value.
    assert data["repeats"] == 1
    assert data["events_per_s_runs"] == [data["events_per_s"]]
    assert len(data["load_avg_1m_runs"]) == 1
    assert data["events"] == 3000
    assert data["users"] == 200
    assert data["offered_rate"] == 300
    assert data["events_per_s"] > 0
    assert data["worker_batch_max_events"] == 250
    assert data["states_wrong"] == 0
    # Two worker processes split the two partitions; each one's CPU is metered.
    assert data["workers"] == 2
    assert abs(data["events_per_s_per_worker"] - data["events_per_s"] / 2) <= 0.1
    assert data["backlog_cpu_worker"] > 0 and data["backlog_cpu_worker_2"] > 0
    assert data["freshness_samples"] > 0
    assert 0 < data["freshness_p50_ms"] <= data["freshness_p99_ms"]
    assert data["achieved_rate"] > 0
    assert data["worker_start_to_first_write_s"] > 0
    # The bare consumer read the same backlog; the share is worker / bare.
    assert data["raw_consumer_events_per_s"] > 0
    share = data["events_per_s"] / data["raw_consumer_events_per_s"]
    assert abs(data["worker_share_of_raw"] - share) <= 0.001 + 0.001 * share
    assert "bare consumer" in result.stdout
