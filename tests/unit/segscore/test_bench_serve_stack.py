"""``bench serve`` measures only once every worker of the service is up, alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from segscore.bench.harness import BenchError
from segscore.bench.serve_stack import wait_workers_started

# A stand-in for ``bentoml serve``: its workers carry BentoML's worker module in
# their command line, as :func:`service_workers` looks for; ``extra`` adds a child
# that is not a worker (as a worker's read-plan child is).
ARBITER = """
import subprocess, sys, time
sleep = "import time; time.sleep(60)"
kids = [
    subprocess.Popen([sys.executable, "-c", sleep, "_bentoml_impl.worker.service"])
    for _ in range(int(sys.argv[1]))
]
if sys.argv[2] == "extra":
    kids.append(subprocess.Popen([sys.executable, "-c", sleep, "read_plan"]))
time.sleep(60)
"""


def _arbiter(workers: int, extra: bool) -> subprocess.Popen:
    args = [str(workers), "extra" if extra else "none"]
    return subprocess.Popen(
        [sys.executable, "-c", ARBITER, *args], start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_settles_once_the_tree_is_its_workers(tmp_path: Path) -> None:
    server = _arbiter(2, extra=False)
    try:
        wait_workers_started(server, 2, tmp_path / "server.log", timeout=60)
    finally:
        _stop(server)


@pytest.mark.parametrize(("started", "extra"), [(1, False), (2, True)])
def test_a_missing_worker_or_another_process_keeps_it_waiting(
    tmp_path: Path, started: int, extra: bool
) -> None:
    server = _arbiter(started, extra)
    try:
        with pytest.raises(BenchError, match="not all up"):
            wait_workers_started(server, 2, tmp_path / "server.log", timeout=3)
    finally:
        _stop(server)


def test_a_service_that_exits_fails_at_once(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", "pass"])
    server.wait()
    with pytest.raises(BenchError, match="exited"):
        wait_workers_started(server, 2, tmp_path / "server.log", timeout=60)
