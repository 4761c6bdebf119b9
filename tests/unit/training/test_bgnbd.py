"""The BG/NBD model: likelihood, fit, P(alive), expected purchases, sampler."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.special import beta, gamma

from training.bgnbd import (
    BgNbdParams,
    expected_purchases,
    fit,
    log_likelihood,
    p_alive,
    probability_of_purchase,
    sample,
)

TRUE = BgNbdParams(r=0.8, alpha=20.0, a=0.9, b=3.0)


def _direct(p: BgNbdParams, x: int, t_x: float, big_t: float) -> float:
    """Equation 6 of the paper, written out without logs."""
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    rate = gamma(r + x) * alpha**r / gamma(r)
    value = beta(a, b + x) / beta(a, b) * rate / (alpha + big_t) ** (r + x)
    if x > 0:
        value += beta(a + 1, b + x - 1) / beta(a, b) * rate / (alpha + t_x) ** (r + x)
    return math.log(value)


@pytest.mark.parametrize(
    ("x", "t_x", "big_t"),
    [(0, 0.0, 30.0), (1, 5.0, 40.0), (4, 38.5, 40.0), (7, 2.0, 365.0)],
)
def test_log_likelihood_matches_the_paper(x: int, t_x: float, big_t: float) -> None:
    p = BgNbdParams(r=0.24, alpha=4.41, a=0.79, b=2.43)
    got = log_likelihood(p, np.array([x]), np.array([t_x]), np.array([big_t]))
    assert got[0] == pytest.approx(_direct(p, x, t_x, big_t), rel=1e-9)


def test_parameters_are_recovered_from_drawn_customers() -> None:
    rng = np.random.default_rng(7)
    drawn = sample(TRUE, rng.uniform(30.0, 365.0, 20_000), 90.0, rng)
    started = time.perf_counter()
    fitted = fit(drawn.x, drawn.t_x, drawn.big_t)
    assert time.perf_counter() - started < 2.0
    assert fitted.r == pytest.approx(TRUE.r, rel=0.15)
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.2)
    assert fitted.a == pytest.approx(TRUE.a, rel=0.25)
    assert fitted.b == pytest.approx(TRUE.b, rel=0.3)
    # The fitted model predicts the drawn future.
    expected = expected_purchases(fitted, 90.0, drawn.x, drawn.t_x, drawn.big_t)
    assert expected.mean() == pytest.approx(drawn.future.mean(), rel=0.05)
    buys = probability_of_purchase(fitted, 90.0, drawn.x, drawn.t_x, drawn.big_t)
    assert buys.mean() == pytest.approx(np.mean(drawn.future > 0), abs=0.02)


def test_sampler_keeps_purchase_times_consistent_with_summaries() -> None:
    rng = np.random.default_rng(1)
    drawn = sample(TRUE, np.full(200, 100.0), 30.0, rng, keep_times=True)
    for i, times in enumerate(drawn.purchase_times):
        assert times[0] == 0.0
        assert np.sum((times > 0) & (times <= 100.0)) == drawn.x[i]
        assert np.sum(times > 100.0) == drawn.future[i]
        assert times[times <= 100.0].max() == pytest.approx(drawn.t_x[i])


def test_p_alive_is_one_without_repeat_purchases() -> None:
    x = np.array([0.0, 0.0, 3.0, 3.0])
    t_x = np.array([0.0, 0.0, 10.0, 90.0])
    big_t = np.array([5.0, 300.0, 100.0, 100.0])
    alive = p_alive(TRUE, x, t_x, big_t)
    assert alive[0] == alive[1] == 1.0
    # A long silence since the last purchase makes dropout likelier.
    assert 0.0 < alive[2] < alive[3] < 1.0


def test_expected_purchases_grow_with_frequency() -> None:
    x = np.arange(1.0, 10.0)
    t_x = np.full_like(x, 80.0)
    big_t = np.full_like(x, 100.0)
    expected = expected_purchases(TRUE, 30.0, x, t_x, big_t)
    assert np.all(np.diff(expected) > 0)
    buys = probability_of_purchase(TRUE, 30.0, x, t_x, big_t)
    assert np.all(np.diff(buys) > 0) and np.all((buys > 0) & (buys < 1))


def test_fit_refuses_data_without_repeat_buyers() -> None:
    with pytest.raises(ValueError, match="repeat"):
        fit(np.zeros(5), np.zeros(5), np.full(5, 10.0))
    with pytest.raises(ValueError, match="t_x <= T"):
        p_alive(TRUE, np.array([1.0]), np.array([5.0]), np.array([2.0]))
