"""``segscore bench serve``'s report: one repeat's numbers, options, memory, table."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from segscore.bench.harness import BenchError, TreeMemory, report_rows
from segscore.bench.repeats import summarize_runs
from segscore.bench.serve import (
    QUICK,
    REPEATED,
    TARGETS,
    ServeBenchConfig,
    make_config,
    summarize,
)


def _loop(latencies: list[float], seconds: float, failures=()) -> dict:
    return {"latencies": latencies, "failures": list(failures), "seconds": seconds}


def _raw() -> dict:
    return {
        "single": [0.001, 0.002, 0.003],
        "feast": [0.004, 0.004, 0.004],
        "concurrent": _loop([0.01] * 300, 2.0),
        "batch_explained": _loop([0.02] * 50, 1.0),
        "batch_unexplained": _loop([0.005] * 400, 2.0),
    }


def test_one_repeat_gives_every_repeated_number_but_memory() -> None:
    out = summarize(_raw(), ServeBenchConfig(batch_size=100))
    memory = {"serve_rss_mb", "serve_pss_mb", "serve_rss_mb_largest_process"}
    assert set(out) == set(REPEATED) - memory
    assert out["concurrent_explained_per_s"] == 150.0
    assert out["batch100_explained_requests"] == 50
    # Batches count their users: 50 batches of 100 in one second.
    assert out["batch100_explained_scores_per_s"] == 5000.0
    assert out["batch100_explained_p99_ms"] == pytest.approx(20.0)
    assert out["batch100_unexplained_scores_per_s"] == 20_000.0
    assert out["ratio_p99_vs_feast"] == round(out["single_p99_ms"] / 4.0, 3)


@pytest.mark.parametrize(
    "phase", ["concurrent", "batch_explained", "batch_unexplained"]
)
def test_a_non_200_answer_or_an_empty_phase_fails_the_run(phase: str) -> None:
    raw = _raw()
    raw[phase]["failures"] = [503]
    with pytest.raises(BenchError, match="non-200"):
        summarize(raw, ServeBenchConfig())
    raw = _raw()
    raw[phase] = _loop([], 1.0)
    with pytest.raises(BenchError, match="no request"):
        summarize(raw, ServeBenchConfig())


def test_every_target_is_a_reported_median() -> None:
    assert set(TARGETS) <= set(REPEATED)
    assert TARGETS["serve_rss_mb"] == ("<=", 700.0)
    assert TARGETS["batch100_explained_p99_ms"] == ("<=", 40.0)
    assert TARGETS["ratio_p99_vs_feast"] == ("<=", 0.6)
    assert TARGETS["concurrent_explained_per_s"] == (">=", 1500.0)


def test_quick_shortens_what_was_not_given() -> None:
    default = make_config()
    assert default.repeats == 3 and default.duration == 10.0
    quick = make_config(quick=True, duration=None, users=200)
    assert quick.repeats == QUICK["repeats"] == 1
    assert quick.duration == QUICK["duration"] and quick.users == 200
    assert make_config(quick=True, repeats=2).repeats == 2
    # The warm-up never outnumbers the measured requests.
    assert make_config(single_requests=40).warmup_requests == 40
    assert make_config().warmup_requests == 200


def test_report_rows_fold_each_repeated_number_into_one_row() -> None:
    runs = [
        {"p99_ms": 30.0, "load_avg_1m": 1.0},
        {"p99_ms": 10.0, "load_avg_1m": 1.5},
        {"p99_ms": 20.0, "load_avg_1m": 0.5},
    ]
    result = {"users": 5, **summarize_runs(runs, ["p99_ms"])}
    rows = {key: (value, spread) for key, value, spread in report_rows(result)}
    assert set(rows) == {"users", "repeats", "p99_ms", "load_avg_1m_runs"}
    assert rows["p99_ms"] == ("20", "100 % (30 / 10 / 20)")
    long = summarize_runs([{"x": 161.694}, {"x": 423.392}, {"x": 142.969}], ["x"])
    assert dict((k, s) for k, _, s in report_rows(long))["x"] == (
        "173 % (161.7 / 423.4 / 143)"
    )
    big = summarize_runs([{"x": 13428.0}, {"x": 11906.0}, {"x": 16655.4}], ["x"])
    assert dict((k, s) for k, _, s in report_rows(big))["x"].endswith(
        "(13428 / 11906 / 16655)"
    )
    assert rows["load_avg_1m_runs"] == ("1.0 / 1.5 / 0.5", "")
    assert rows["users"] == ("5", "")
    one = {k: (v, s) for k, v, s in report_rows(summarize_runs(runs[:1], ["p99_ms"]))}
    assert one["p99_ms"] == ("30.0", "")


def test_tree_memory_sums_a_process_and_its_children() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
    )
    try:
        with TreeMemory(os.getpid(), every_seconds=0.01, pss=True) as memory:
            deadline = time.monotonic() + 30
            while memory.samples < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert memory.processes >= 2
        assert memory.peak_mb > memory.peak_process_mb > 0
        assert 0 < memory.peak_pss_mb <= memory.peak_mb
    finally:
        child.kill()
        child.wait()


def test_tree_memory_finds_a_child_started_later_and_reads_pss_less_often() -> None:
    with TreeMemory(
        os.getpid(),
        every_seconds=0.01,
        pss=True,
        refresh_seconds=0.05,
        pss_every_seconds=60.0,
    ) as memory:
        deadline = time.monotonic() + 30
        while memory.samples < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        alone, first_pss = memory.processes, memory.peak_pss_mb
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            while memory.processes <= alone and time.monotonic() < deadline:
                time.sleep(0.01)
            later_pss = memory.peak_pss_mb
        finally:
            child.kill()
            child.wait()
    assert memory.processes == alone + 1
    # PSS was read once, at the start: the child's pages never entered it.
    assert 0 < first_pss == later_pss
