"""The soak script, for a few seconds instead of ten minutes.

It must start its own stack, send its fixed rate, sample worker memory, write its
report and pass (0 errors, flat RSS); the ten-minute run is not part of CI.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from infra.settings import PROJECT_ROOT

pytestmark = pytest.mark.bench


def test_short_soak_has_no_errors_and_reports_memory(
    tmp_path: Path, run_command: Callable[..., CompletedProcess[str]]
):
    report = tmp_path / "soak.json"
    cmd = [
        sys.executable, str(PROJECT_ROOT / "scripts" / "robustness.py"), "soak",
        "--minutes", "0.15", "--rate", "40", "--users", "200", "--days", "24",
        # A few seconds are all warm-up: memory is not expected to be flat yet.
        "--rss-growth", "0.5", "--report", str(report),
    ]  # fmt: skip
    run_command(cmd, 300)

    result = json.loads(report.read_text())
    assert result["sent"] == int(0.15 * 60 * 40)
    assert result["statuses"] == {"200": result["sent"]}
    assert result["errors"] == 0
    assert len(result["rss_samples"]) >= 3
    assert all(rss > 50 for _, sample in result["rss_samples"] for rss in sample)
