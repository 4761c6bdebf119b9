"""``segscore worker`` with several processes: one consumer group on one machine.

A stream worker process is single-threaded (Python's interpreter lock): on two
cores one process took 0.6-0.8 of a core and a second process nearly doubled the
events written per second. So ``segscore worker`` runs one process per core (at
most one per partition) and supervises them:

- SIGTERM or SIGINT to the group goes to every process, which leaves the consumer
  group cleanly (its partitions move at the committed offsets);
- when one process exits, the others are stopped and the group exits with the
  first failing exit code (128 + the signal for one killed by a signal): a
  supervisor (systemd, Kubernetes) then restarts the whole unit instead of it
  running on with part of its capacity;
- if the group itself is killed (SIGKILL), the kernel sends each process SIGTERM
  (``PR_SET_PDEATHSIG``): no orphan keeps consuming.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 20.0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run_group(count: int, command: Sequence[str] | None = None) -> int:
    """Run ``count`` worker processes until one exits or a signal asks; the exit code.

    ``command`` is what each process runs: by default one worker process of
    ``segscore worker``. A ``SEGSCORE_WORKER_ID`` set for the group becomes
    ``<id>-1``, ``<id>-2``... (metrics files and client ids must differ); without
    it each process takes its own default id.
    """
    cmd = list(command or [sys.executable, "-m", "segscore.cli", "worker", "-n", "1"])
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    procs: list[subprocess.Popen] = []
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        base = os.environ.get("SEGSCORE_WORKER_ID")
        for index in range(1, count + 1):
            env = dict(os.environ)
            if base:
                env["SEGSCORE_WORKER_ID"] = f"{base}-{index}"
            procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent))
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.2)
        if not stopping:  # one ended by itself: the unit is not whole any more
            stop(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    asked = (0, -signal.SIGTERM, -signal.SIGINT)
    failed = [p.returncode for p in procs if p.returncode not in asked]
    if not failed:
        return 0
    # A process killed by a signal exits the group as a shell reports it.
    return 128 - failed[0] if failed[0] < 0 else failed[0]
