"""The stream worker processes a bench starts: one consumer group, a log each."""

from __future__ import annotations

import subprocess

from infra import processes
from infra.settings import Settings
from segscore.bench.harness import BenchError, log_tail
from segscore.bench.stream_progress import CrashWatch


class BenchWorkers:
    """The worker processes of one phase: one consumer group, a log each.

    More than one splits the topic's partitions between them, as a deployment
    scales out; the first is named ``name``, the others ``name-2``, ``name-3``...
    """

    def __init__(
        self, settings: Settings, name: str, count: int, env: dict[str, str]
    ) -> None:
        self.names = [name, *(f"{name}-{i}" for i in range(2, count + 1))]
        self.procs: list[subprocess.Popen] = []
        try:
            for each in self.names:
                self.procs.append(processes.start_worker(settings, each, env))
        except BaseException:
            self.stop()
            raise
        logs = settings.home / "logs"
        self.logs = [logs / f"{each}.log" for each in self.names]
        self._watches = [CrashWatch(log) for log in self.logs]

    def check(self) -> None:
        """Fail when a worker exited, or logged a crashed task (it lives on then)."""
        for proc, log, watch in zip(self.procs, self.logs, self._watches, strict=True):
            if proc.poll() is not None:
                raise BenchError(f"worker exited:\n{log_tail(log)}")
            crash = watch.crashed()
            if crash:
                raise BenchError(f"a worker task crashed: {crash}")

    def pids(self) -> dict[str, int]:
        """For :class:`CpuMeter`: ``worker``, ``worker_2``, ..."""
        return {
            "worker" if i == 0 else f"worker_{i + 1}": proc.pid
            for i, proc in enumerate(self.procs)
        }

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after a grace period)."""
        for proc in self.procs:
            processes.stop(proc)
