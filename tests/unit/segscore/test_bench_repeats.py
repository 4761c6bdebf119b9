"""Repeated benchmark measurements: medians, every value, spread and load."""

from __future__ import annotations

import pytest

from segscore.bench.repeats import chosen_options, summarize_runs


def test_median_runs_and_spread_of_each_key() -> None:
    runs = [
        {"p99_ms": 30.0, "per_s": 1500.0, "load_avg_1m": 1.2},
        {"p99_ms": 10.0, "per_s": 1400.0, "load_avg_1m": 1.5},
        {"p99_ms": 20.0, "per_s": 1600.0, "load_avg_1m": 1.1},
    ]
    out = summarize_runs(runs, ["p99_ms", "per_s"])
    assert out["repeats"] == 3
    assert out["p99_ms"] == 20.0
    assert out["p99_ms_runs"] == [30.0, 10.0, 20.0]
    assert out["p99_ms_spread_pct"] == 100.0
    assert out["per_s"] == 1500.0
    assert out["per_s_spread_pct"] == pytest.approx(13.3)
    assert out["load_avg_1m_runs"] == [1.2, 1.5, 1.1]


def test_even_number_of_runs_takes_the_middle_mean() -> None:
    out = summarize_runs([{"x": 1.0}, {"x": 3.0}], ["x"])
    assert out["x"] == 2.0
    assert "load_avg_1m_runs" not in out


def test_zero_median_has_zero_spread() -> None:
    assert summarize_runs([{"x": 0.0}, {"x": 0.0}], ["x"])["x_spread_pct"] == 0.0


def test_missing_value_or_no_runs_is_an_error() -> None:
    with pytest.raises(ValueError, match="'x'"):
        summarize_runs([{"x": 1.0}, {"y": 2.0}], ["x"])
    with pytest.raises(ValueError, match="no runs"):
        summarize_runs([], ["x"])


def test_given_options_win_over_quick_ones_and_none_is_not_given() -> None:
    quick = {"repeats": 1, "events": 100}
    given = {"events": 500, "duration": None, "seed": 3}
    assert chosen_options(given, True, quick) == {
        "repeats": 1,
        "events": 500,
        "seed": 3,
    }
    assert chosen_options(given, False, quick) == {"events": 500, "seed": 3}
