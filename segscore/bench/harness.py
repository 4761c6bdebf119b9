"""The bench harness: private home, child processes, CPU/RSS, py-spy, stats, reports.

What every ``segscore bench`` command (and ``scripts/robustness.py``) needs around
the thing it measures, so that each measures and reports the same way: a temporary
``SEGSCORE_HOME`` with the environment restored afterwards, SIGTERM unwinding like
Ctrl-C so everything started is stopped, child processes with their logs, CPU
shares and resident memory of processes, py-spy profiles summarised per function,
latency percentiles, and the flat JSON report.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from infra.processes import spawn_logged


class BenchError(RuntimeError):
    """The benchmark could not complete (worker died, timed out, wrong results)."""


# ------------------------------------------------------------------- environment


@contextlib.contextmanager
def bench_environment(
    keep: bool,
    prefix: str,
    cleared: Sequence[str],
    restored: Sequence[str] = (),
    keep_logs_on: type[BaseException] = Exception,
) -> Iterator[Path]:
    """A temporary ``SEGSCORE_HOME``; the environment is restored afterwards.

    Args:
        keep: Keep the home (its logs) after a clean run too.
        prefix: Name prefix of the temporary directory.
        cleared: Variables removed for the run (e.g. an external Redis URL), so
            the bench starts its own services.
        restored: Variables the run may set, put back as they were afterwards.
        keep_logs_on: Failures after which the home is kept: its logs tell what
            went wrong.
    """
    names = dict.fromkeys(("SEGSCORE_HOME", *cleared, *restored))
    saved = {name: os.environ.get(name) for name in names}
    home = Path(tempfile.mkdtemp(prefix=prefix))
    for name in cleared:
        os.environ.pop(name, None)
    os.environ["SEGSCORE_HOME"] = str(home)
    keep_logs = keep
    try:
        yield home
    except keep_logs_on:
        keep_logs = True
        raise
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if not keep_logs:
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the cleanup runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def machine_info() -> str:
    """One line: OS, CPU model and Python."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.platform()} | {cpu} | "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def machine_facts() -> dict[str, Any]:
    """Where and when a run happened: ``cpu_count``, ``machine``, ``timestamp``."""
    return {
        "cpu_count": os.cpu_count(),
        "machine": machine_info(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------- child processes


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, or ``(no log)``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_reply(
    box: Any, proc: Any, timeout: float | None, died: str, late: str = ""
) -> Any:
    """The next item a child process puts in ``box``.

    Args:
        box: A multiprocessing queue the child answers in.
        proc: The child (``multiprocessing.Process``), checked while waiting.
        timeout: Seconds to wait at most; ``None`` waits while the child lives.
        died: The error when the child exits first; ``{exitcode}`` is filled in.
        late: The error when ``timeout`` passes first.

    Raises:
        BenchError: The child died, or did not answer in time.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        try:
            return box.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                raise BenchError(died.format(exitcode=proc.exitcode)) from None
    raise BenchError(late)


def run_in_child(target: Any, args: tuple[Any, ...], died: str) -> tuple[Any, float]:
    """Run ``target(*args, box)`` in a spawned process and wait for its one reply.

    Returns:
        The reply the child put in ``box``, and the peak RSS (MB) of the child's
        process tree, its own workers included, sampled while it ran.

    Raises:
        BenchError: The child exited without replying (``died``, see
            :func:`wait_for_reply`).
    """
    ctx = mp.get_context("spawn")
    box = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, box))
    child.start()
    assert child.pid is not None
    with TreeMemory(child.pid) as tree:
        reply = wait_for_reply(box, child, None, died=died)
    child.join()
    return reply, tree.peak_mb


def child_pids(pid: int, cmdline_contains: str) -> list[int]:
    """Pids of the descendants of ``pid`` whose command line holds a marker."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if cmdline_contains in " ".join(child.cmdline()):
                found.append(child.pid)
    return found


# ------------------------------------------------------------ CPU and memory


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a process (all threads), Linux only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU share of a few processes over an interval (1.0 = one core busy)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start: dict[str, float | None] = {}
        self.t0 = 0.0

    def begin(self) -> None:
        """Start an interval."""
        self.t0 = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def end(self) -> dict[str, float | None]:
        """Each process's CPU share since :meth:`begin` (None if unreadable)."""
        wall = max(time.monotonic() - self.t0, 1e-9)
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            before, after = self.start.get(name), cpu_seconds(pid)
            out[name] = (
                None
                if before is None or after is None
                else round((after - before) / wall, 3)
            )
        return out


class TreeMemory:
    """Samples the resident memory of a process and its descendants in a thread.

    ``peak_mb`` is the peak of the summed RSS: pages two processes share count
    twice, so it is the conservative number. With ``pss``, ``peak_pss_mb`` is
    the peak of the summed proportional set size (shared pages split between
    their sharers), closer to what the tree costs the machine. ``peak_process_mb``
    is the largest single process's RSS seen, and ``processes`` the most
    processes seen in the tree at once.

    The sampler must not disturb what it measures. RSS comes from ``statm``
    (kernel counters) every ``every_seconds``. Two reads cost more and are done
    less often: listing the tree (every process's ``stat``, ~10 ms of CPU
    here), every ``refresh_seconds``; and PSS (``smaps_rollup``, a walk of each
    process's page tables under its memory-map lock, which stalls the process
    if it maps or unmaps meanwhile), every ``pss_every_seconds``. Together at
    every 0.25 s sample they had taken ~30 ms of CPU each time, and a serving
    worker's p99 rose with them.
    """

    def __init__(
        self,
        pid: int,
        every_seconds: float = 0.05,
        pss: bool = False,
        refresh_seconds: float = 0.5,
        pss_every_seconds: float = 1.0,
    ) -> None:
        self.peak_mb = 0.0
        self.peak_pss_mb = 0.0
        self.peak_process_mb = 0.0
        self.processes = 0
        self.samples = 0
        self._root = psutil.Process(pid)
        self._every = every_seconds
        self._pss = pss
        self._refresh = refresh_seconds
        self._pss_every = pss_every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        processes: list[psutil.Process] = []
        listed = pss_read = -math.inf
        while not self._stop.is_set():
            now = time.monotonic()
            if now - listed >= self._refresh:
                try:
                    processes = [self._root, *self._root.children(recursive=True)]
                except psutil.Error:
                    return
                listed = now
            with_pss = self._pss and now - pss_read >= self._pss_every
            if with_pss:
                pss_read = now
            rss = pss = seen = 0
            for process in processes:
                try:
                    info = (
                        process.memory_full_info()
                        if with_pss
                        else process.memory_info()
                    )
                except psutil.Error:
                    continue  # exited since the tree was listed
                rss += info.rss
                if with_pss:
                    pss += info.pss
                seen += 1
                self.peak_process_mb = max(self.peak_process_mb, info.rss / 2**20)
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            if with_pss:
                self.peak_pss_mb = max(self.peak_pss_mb, pss / 2**20)
            self.processes = max(self.processes, seen)
            self.samples += 1
            self._stop.wait(self._every)


def rss_mb(pids: Sequence[int]) -> list[float]:
    """Resident memory of each process in MB (NaN for one that is gone)."""
    out = []
    for pid in pids:
        try:
            out.append(round(psutil.Process(pid).memory_info().rss / 2**20, 1))
        except psutil.Error:
            out.append(float("nan"))
    return out


# ------------------------------------------------------------------------ py-spy


def py_spy_binary() -> str:
    """py-spy next to this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def start_profiler(pid: int, out: Path, log: Path) -> subprocess.Popen:
    """``py-spy record`` attached to ``pid``: collapsed stacks of GIL-holding threads.

    The worker is bound by one interpreter lock, so what holds the GIL is where its
    throughput goes; ``--nonblocking`` keeps the sampling from pausing it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        py_spy_binary(), "record", "--pid", str(pid), "--rate", "100",
        "--gil", "--nonblocking", "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    return spawn_logged(cmd, log)


def stop_profiler(proc: subprocess.Popen) -> None:
    """SIGINT makes py-spy write its output; kill it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _frame_function(frame: str) -> str:
    # "name (path/file.py:123)" -> "name (path/file.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize_profile(
    path: Path, top: int = 15
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Samples, top self-time and top inclusive functions (% of samples)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for function in set(frames):
            inclusive[function] += n
    if not total:
        return 0, [], []

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, 100.0 * c / total) for f, c in counter.most_common(top)]

    return total, pct(own), pct(inclusive)


def print_profile(
    console: Console,
    samples: int,
    own: list[tuple[str, float]],
    inclusive: list[tuple[str, float]],
    subject: str = "worker",
) -> None:
    """A py-spy summary as two tables: self time and inclusive time per function."""
    for title, rows in (("self", own), ("inclusive", inclusive)):
        table = Table(
            title=f"{subject} profile, {title} time ({samples} GIL-holding samples)"
        )
        table.add_column("function", overflow="fold")
        table.add_column("%", justify="right")
        for function, pct in rows:
            table.add_row(function, f"{pct:.1f}")
        console.print(table)


def profile_report(
    console: Console, path: Path, subject: str, top: int = 15
) -> dict[str, Any]:
    """Print a recorded profile; its keys for the report.

    Returns:
        ``profile`` (the file), ``profile_samples`` and ``profile_top_self`` (the
        eight functions with the most self time, with their shares).
    """
    samples, own, inclusive = summarize_profile(path, top)
    print_profile(console, samples, own, inclusive, subject)
    return {
        "profile": str(path),
        "profile_samples": samples,
        "profile_top_self": ", ".join(f"{f} {p:.1f}%" for f, p in own[:8]),
    }


# ---------------------------------------------------------- numbers and reports


def percentiles_ms(
    seconds: Sequence[float], qs: Sequence[float] = (50, 99), digits: int = 3
) -> tuple[float, ...]:
    """Percentiles ``qs`` of durations in seconds, as milliseconds rounded."""
    values = np.percentile(np.asarray(seconds, dtype=float) * 1000.0, list(qs))
    return tuple(round(float(v), digits) for v in values)


def report_rows(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(key, value, spread)`` rows of a flat report for a table, repeats folded in.

    A number summarised over repeats (:func:`segscore.bench.repeats.summarize_runs`)
    is one row: its median as the value, and as the spread its spread and each
    repeat's value, e.g. ``8 % (30.4 / 31.2 / 32.9)``; its ``_runs`` and
    ``_spread_pct`` keys get no rows of their own. Other lists are joined with
    `` / ``; other keys have no spread.
    """
    for key, value in result.items():
        base = key.removesuffix("_runs").removesuffix("_spread_pct")
        if (
            base != key
            and base in result
            and isinstance(result.get(f"{base}_runs"), list)
        ):
            continue  # folded into the row of ``base``
        runs = result.get(f"{key}_runs")
        if isinstance(runs, list) and len(runs) > 1:
            spread = result.get(f"{key}_spread_pct")
            # Four digits tell repeats apart; the JSON keeps them whole.
            each = " / ".join(f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}" for v in runs)
            yield key, f"{value:g}", f"{spread:.0f} % ({each})"
        elif isinstance(value, list):
            yield key, " / ".join(str(v) for v in value), ""
        else:
            yield key, str(value), ""


def report_table(title: str, rows: Iterable[tuple[str, ...]], extra: str = "") -> Table:
    """A table of :func:`report_rows`'s rows (plus an ``extra`` column if named).

    The metric names are never cut: they are what a reader greps for.
    """
    table = Table(title=title)
    table.add_column("metric", no_wrap=True)
    table.add_column("median", overflow="fold")
    table.add_column("spread (each repeat)", overflow="fold")
    if extra:
        table.add_column(extra, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def write_json_report(path: Path, report: dict[str, Any]) -> None:
    """Write a report as indented JSON (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
