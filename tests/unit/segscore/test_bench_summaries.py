"""Repeats of the stream and activation benches as one flat result; their options."""

from __future__ import annotations

from segscore.bench import activation, stream
from segscore.bench.repeats import summarize_numbers


def _runs() -> list[dict]:
    return [
        {
            "events_per_s": 9000.0,
            "steady": 9500.0,
            "lower_bound": False,
            "name": "a",
            "missing": 0,
            "load_avg_1m": 1.0,
        },
        {
            "events_per_s": 7000.0,
            "steady": None,
            "lower_bound": True,
            "name": "b",
            "missing": 2,
            "load_avg_1m": 2.0,
        },
        {
            "events_per_s": 8000.0,
            "steady": 8800.0,
            "lower_bound": False,
            "name": "c",
            "missing": 1,
            "load_avg_1m": 1.5,
        },
    ]


def test_numbers_become_medians_with_their_runs_and_spread() -> None:
    out = summarize_numbers(_runs(), totals=["missing"])
    assert out["repeats"] == 3
    assert out["events_per_s"] == 8000.0
    assert out["events_per_s_runs"] == [9000.0, 7000.0, 8000.0]
    assert out["events_per_s_spread_pct"] == 25.0
    assert out["load_avg_1m_runs"] == [1.0, 2.0, 1.5]
    assert "load_avg_1m" not in out


def test_counts_of_failures_are_summed_not_medianed() -> None:
    out = summarize_numbers(_runs(), totals=["missing"])
    # The median (1) would hide that one repeat missed two.
    assert out["missing"] == 3
    assert "missing_runs" not in out


def test_flags_names_and_sometimes_missing_numbers_are_the_last_runs() -> None:
    out = summarize_numbers(_runs())
    assert out["lower_bound"] is False and out["name"] == "c"
    # A number one repeat could not measure is not summarised over the others.
    assert out["steady"] == 8800.0 and "steady_runs" not in out
    # Without totals a count is an ordinary number.
    assert out["missing"] == 1.0 and out["missing_runs"] == [0.0, 2.0, 1.0]


def test_quick_is_one_short_repeat_and_given_options_win() -> None:
    assert stream.make_config().repeats == 3
    assert activation.make_config().repeats == 3
    quick = stream.make_config(quick=True, events=None, users=200)
    assert quick.repeats == 1 and quick.events == stream.QUICK["events"]
    assert quick.users == 200
    assert stream.make_config(quick=True, events=3000).events == 3000
    quick = activation.make_config(quick=True, duration=7.0)
    assert quick.repeats == 1 and quick.duration == 7.0
    assert quick.events == activation.QUICK["events"]


def test_every_repeat_of_the_live_phase_has_crafted_users_of_its_own() -> None:
    from segscore.bench.activation_traffic import plan_live

    known = [f"b{i:07d}" for i in range(50)]
    first = plan_live(200, 5.0, known, 2.0, 1)
    again = plan_live(200, 5.0, known, 2.0, 1, "r1")
    firsts = {e.user_id for e in first.expected}
    agains = {e.user_id for e in again.expected}
    assert firsts and agains and not firsts & agains
    assert all(user.startswith("r1") for user in agains)
