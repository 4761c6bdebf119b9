"""Smoke run of ``segscore bench stream`` on real components (not a timed test).

A tiny backlog and a short paced phase: the command must start and stop its own
stack, apply every event, see sampled events through Feast and write its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import PROJECT_ROOT

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


def test_bench_stream_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    # The bench makes its own home and stack; nothing may point it elsewhere.
    for name in ("SEGSCORE_REDIS_URL", "SEGSCORE_KAFKA_BROKER"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    # Several small batches, so throughput is measured between two worker writes.
    args = [
        *("--events", "3000", "--users", "200", "--batch-max-events", "250"),
        *("--rate", "300", "--duration", "2"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "segscore.cli", "bench", "stream", *args, "--json", out],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads(out.read_text())
    missing = [k for k in KEYS if k not in data]
    assert not missing, missing
    assert all(not isinstance(v, dict | list) for v in data.values()), "not flat"
    assert data["events"] == 3000
    assert data["users"] == 200
    assert data["offered_rate"] == 300
    assert data["events_per_s"] > 0
    assert data["worker_batch_max_events"] == 250
    assert data["states_wrong"] == 0
    assert data["freshness_samples"] > 0
    assert 0 < data["freshness_p50_ms"] <= data["freshness_p99_ms"]
    assert data["achieved_rate"] > 0
    assert data["worker_start_to_first_write_s"] > 0
    # The bare consumer read the same backlog; the share is worker / bare.
    assert data["raw_consumer_events_per_s"] > 0
    share = data["events_per_s"] / data["raw_consumer_events_per_s"]
    assert abs(data["worker_share_of_raw"] - share) <= 0.001 + 0.001 * share
    assert "bare consumer" in result.stdout
