"""Start the long-running segscore processes (Faust worker, BentoML server).

The demo, the CLI and the integration tests all start them through here, as real
subprocesses with the environment that points them at one stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from infra.settings import PROJECT_ROOT, Settings


def process_env(
    settings: Settings, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment for a child process: this one plus the settings it must see."""
    env = dict(os.environ)
    env["SEGSCORE_HOME"] = str(settings.home)
    env["BENTOML_HOME"] = str(settings.bentoml_home)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


def spawn_logged(
    cmd: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start ``cmd`` in its own session, stdout and stderr appended to ``log``.

    A new session, so Ctrl-C in the shell that started it leaves it alone; the
    caller stops it. ``env`` is the child's whole environment (``None``: this
    one's).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _log(settings: Settings, name: str) -> Path:
    path = settings.home / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def worker_process_count(settings: Settings) -> int:
    """How many worker processes a machine runs: the setting, else one per core
    (at most one per partition: a process without a partition only waits)."""
    if settings.worker_processes:
        return settings.worker_processes
    return max(1, min(os.cpu_count() or 1, settings.topic_partitions))


def start_worker(
    settings: Settings, name: str = "worker", extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``faust -A streams.app worker`` as a subprocess (log in home/logs)."""
    cmd = [
        sys.executable, "-m", "faust", "-A", "streams.app", "worker",
        "-l", "info", "--without-web",
    ]  # fmt: skip
    return spawn_logged(
        cmd, _log(settings, name), process_env(settings, extra_env), PROJECT_ROOT
    )


def start_server(
    settings: Settings, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``bentoml serve serving.service:ScoringService`` on ``port``."""
    cmd = [
        sys.executable, "-m", "bentoml", "serve", "serving.service:ScoringService",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return spawn_logged(
        cmd,
        _log(settings, f"server-{port}"),
        process_env(settings, extra_env),
        PROJECT_ROOT,
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before ready")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a child process group, killing it if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=5)
