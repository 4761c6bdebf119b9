"""Helpers for tests that drive the real processes: the CLI, polling, stack files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from infra import local_stack
from infra.processes import process_env
from infra.settings import PROJECT_ROOT, Settings

T = TypeVar("T")


def run_cli(settings: Settings, *args: str, timeout: float = 300) -> str:
    """Run ``segscore ARGS`` as a real subprocess; fail with its output if it fails."""
    env = process_env(settings)
    result = subprocess.run(
        [sys.executable, "-m", "segscore.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"segscore {' '.join(args)} exited {result.returncode}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def run_python(code: str, home: Path) -> str:
    """Run ``python -c code`` in a fresh interpreter of the project with
    ``SEGSCORE_HOME=home``; its output, or a failure showing what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "SEGSCORE_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"exited {result.returncode}\n{result.stderr[-4000:]}")
    return result.stdout


def feature_repo_yaml(settings: Settings) -> Path:
    """A feature_store.yaml for the running test stack, outside the source tree."""
    from core.store.feast_config import write_feature_store_yaml

    stack = local_stack.current(settings)
    return write_feature_store_yaml(
        settings, stack.redis_url, settings.home / "feature_store.yaml"
    )


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
