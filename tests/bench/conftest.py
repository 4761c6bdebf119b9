"""The benchmarks run as a user runs them: a command in a subprocess, no stack given."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from infra.settings import PROJECT_ROOT


@pytest.fixture
def run_command() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a command from the project root, asserting it succeeds.

    Nothing in its environment points at a home, a Redis, a broker or a BentoML
    home: each benchmark must start, and stop, everything it needs itself.
    ``settings`` adds ``SEGSCORE_`` settings of the test's choosing.
    """

    def run(
        cmd: list[str], timeout: float, settings: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SEGSCORE_") and k != "BENTOML_HOME"
        }
        env.update(settings or {})
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        done = subprocess.run(
            cmd,
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done

    return run
