"""The BG/NBD repeat-purchase model (Fader, Hardie & Lee 2005) in numpy and scipy.

A customer buys at Poisson rate ``lambda`` while alive and, after each purchase,
drops out for good with probability ``p``; across customers ``lambda`` is
Gamma(shape ``r``, rate ``alpha``) and ``p`` is Beta(``a``, ``b``). A customer is
summarised by ``x`` (repeat purchases after the first one), ``t_x`` (time of the
last purchase since the first) and ``T`` (time observed since the first purchase),
all in the same unit (days here). Everything is vectorised over customers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln, hyp2f1

# log-parameter bounds: wide enough for any time unit from hours to years, tight
# enough that the optimiser cannot wander into overflow.
_LOG_BOUNDS = [(-9.0, 9.0), (-9.0, 12.0), (-9.0, 9.0), (-9.0, 9.0)]


@dataclass(frozen=True)
class BgNbdParams:
    """Population parameters: Gamma(r, alpha) purchase rates, Beta(a, b) dropout."""

    r: float
    alpha: float
    a: float
    b: float

    def as_array(self) -> np.ndarray:
        """``[r, alpha, a, b]``."""
        return np.array([self.r, self.alpha, self.a, self.b], dtype=np.float64)


def _arrays(
    x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    t_x = np.asarray(t_x, dtype=np.float64)
    big_t = np.asarray(big_t, dtype=np.float64)
    if np.any(x < 0) or np.any(t_x < 0) or np.any(big_t < t_x):
        raise ValueError("summaries: need x >= 0 and 0 <= t_x <= T")
    return x, t_x, big_t


def log_likelihood(
    params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
) -> np.ndarray:
    """Log-likelihood of each customer's (x, t_x, T) under ``params``.

    Args:
        params: Population parameters.
        x: Repeat purchases.
        t_x: Time of the last purchase, since the first.
        big_t: Time observed, since the first purchase.

    Returns:
        One log-likelihood per customer (equation 6 of the paper, in logs).
    """
    x, t_x, big_t = _arrays(x, t_x, big_t)
    return _log_likelihood(params.as_array(), x, t_x, big_t)


def _log_likelihood(
    p: np.ndarray, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
) -> np.ndarray:
    return _terms(p, x, t_x, big_t)[0]


def _levels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct purchase counts and each customer's index into them.

    Counts take few distinct values, so the gamma-function terms are computed
    per value rather than per customer.
    """
    values, index = np.unique(x, return_inverse=True)
    return values, index.ravel()


def _terms(
    p: np.ndarray,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    levels: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log-likelihood, its "alive" and "dropped out" parts, and the common part."""
    r, alpha, a, b = p
    values, index = _levels(x) if levels is None else levels
    per_value = gammaln(r + values) + betaln(a, b + values)
    common = per_value[index] - gammaln(r) + r * np.log(alpha) - betaln(a, b)
    alive = -(r + x) * np.log(alpha + big_t)
    repeat = x > 0
    # B(a+1, b+x-1) / B(a, b+x) = a / (b+x-1): the customer dropped out after t_x.
    dropped = np.full_like(x, -np.inf)
    dropped[repeat] = (
        np.log(a)
        - np.log(b + x[repeat] - 1.0)
        - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    )
    return common + np.logaddexp(alive, dropped), alive, dropped, common


def _gradient(
    p: np.ndarray,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    levels: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood per customer and its gradient in the log-parameters."""
    r, alpha, a, b = p
    values, index = _levels(x) if levels is None else levels
    ll, alive, dropped, common = _terms(p, x, t_x, big_t, (values, index))
    mix = ll - common
    w_alive = np.exp(alive - mix)
    w_dropped = np.exp(dropped - mix)  # 0 where x = 0
    repeat = x > 0
    inv_b = np.zeros_like(x)
    inv_b[repeat] = 1.0 / (b + x[repeat] - 1.0)
    ab = digamma(a + b)
    abx = digamma(a + b + values)[index]
    d_r = (
        digamma(r + values)[index]
        - digamma(r)
        + np.log(alpha)
        - w_alive * np.log(alpha + big_t)
        - w_dropped * np.log(alpha + t_x)
    )
    d_alpha = (
        r / alpha
        - w_alive * (r + x) / (alpha + big_t)
        - w_dropped * (r + x) / (alpha + t_x)
    )
    d_a = ab - abx + w_dropped / a
    d_b = digamma(b + values)[index] - abx - digamma(b) + ab - w_dropped * inv_b
    # d/d(log theta) = theta * d/d(theta)
    grad = np.vstack([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    return ll, grad


def fit(
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    weights: np.ndarray | None = None,
) -> BgNbdParams:
    """Maximum-likelihood (r, alpha, a, b) from customer summaries.

    Identical summaries are collapsed into one weighted row first (day-grained
    summaries repeat a lot), and L-BFGS-B runs on the log-parameters within
    bounds, from a start set by the data's purchase rate.

    Args:
        x: Repeat purchases.
        t_x: Time of the last purchase, since the first.
        big_t: Time observed, since the first purchase.
        weights: Customers each row stands for (default one).

    Returns:
        The fitted parameters.

    Raises:
        ValueError: On empty input or when no customer repeats (no rate to fit).
    """
    x, t_x, big_t = _arrays(x, t_x, big_t)
    if len(x) == 0:
        raise ValueError("summaries: no customers to fit")
    if not np.any(x > 0):
        raise ValueError("summaries: no customer made a repeat purchase")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    rows, inverse = np.unique(
        np.column_stack([x, t_x, big_t]), axis=0, return_inverse=True
    )
    counts = np.bincount(inverse.ravel(), weights=w)
    ux, ut, uT = rows[:, 0], rows[:, 1], rows[:, 2]
    total = counts.sum()
    levels = _levels(ux)

    def objective(log_p: np.ndarray) -> tuple[float, np.ndarray]:
        ll, grad = _gradient(np.exp(log_p), ux, ut, uT, levels)
        value = -float(np.dot(counts, ll)) / total
        if not np.isfinite(value):
            return 1e12, np.zeros(4)
        return value, -(grad @ counts) / total

    # Start at a rate matching the observed one with alpha on the data's time
    # scale; dropout starts neutral.
    scale = max(float(np.average(big_t, weights=w)), 1e-3)
    rate = max(float(np.average(x, weights=w)) / scale, 1e-6)
    best = None
    for start in ([1.0, 1.0 / rate, 1.0, 3.0], [0.5, scale, 0.5, 1.0]):
        result = minimize(
            objective,
            np.log(np.clip(start, 1e-4, 1e5)),
            method="L-BFGS-B",
            jac=True,
            bounds=_LOG_BOUNDS,
        )
        if best is None or result.fun < best.fun:
            best = result
        if result.success:
            break
    assert best is not None
    r, alpha, a, b = np.exp(best.x)
    return BgNbdParams(float(r), float(alpha), float(a), float(b))


def p_alive(
    params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
) -> np.ndarray:
    """Probability each customer is still alive at ``T`` (1 when ``x`` is 0)."""
    x, t_x, big_t = _arrays(x, t_x, big_t)
    r, alpha, a, b = params.as_array()
    return 1.0 / (1.0 + _dropout_odds(r, alpha, a, b, x, t_x, big_t))


def _dropout_odds(
    r: float,
    alpha: float,
    a: float,
    b: float,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
) -> np.ndarray:
    odds = np.zeros_like(x)
    repeat = x > 0
    xr = x[repeat]
    log_odds = (
        np.log(a)
        - np.log(b + xr - 1.0)
        + (r + xr) * (np.log(alpha + big_t[repeat]) - np.log(alpha + t_x[repeat]))
    )
    odds[repeat] = np.exp(np.minimum(log_odds, 700.0))
    return odds


def expected_purchases(
    params: BgNbdParams,
    horizon: float,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
) -> np.ndarray:
    """Expected purchases in (T, T + horizon] given each customer's history.

    Equation 10 of the paper; it already carries P(alive), so it is "P(alive) x
    expected purchases while alive".
    """
    x, t_x, big_t = _arrays(x, t_x, big_t)
    r, alpha, a, b = params.as_array()
    if abs(a - 1.0) < 1e-6:
        a = 1.0 + 1e-6  # the closed form has a removable singularity at a = 1
    shrink = (alpha + big_t) / (alpha + big_t + horizon)
    z = horizon / (alpha + big_t + horizon)
    tail = 1.0 - shrink ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1.0, z)
    lead = (a + b + x - 1.0) / (a - 1.0)
    return lead * tail / (1.0 + _dropout_odds(r, alpha, a, b, x, t_x, big_t))


def probability_of_purchase(
    params: BgNbdParams,
    horizon: float,
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
) -> np.ndarray:
    """Probability of at least one purchase in (T, T + horizon].

    A customer alive at ``T`` cannot drop out before buying again (dropout follows
    a purchase), so it buys in the horizon with probability ``1 - exp(-lambda t)``;
    averaged over the posterior Gamma(r + x, alpha + T) of ``lambda`` and times
    P(alive), this is exact. It is the quantity a "buys within the horizon" label
    asks for.
    """
    x, t_x, big_t = _arrays(x, t_x, big_t)
    r, alpha, _, _ = params.as_array()
    buys = 1.0 - ((alpha + big_t) / (alpha + big_t + horizon)) ** (r + x)
    return p_alive(params, x, t_x, big_t) * buys


@dataclass(frozen=True)
class DrawnCustomers:
    """Customers drawn from the generative process, seen at a cut-off."""

    x: np.ndarray
    t_x: np.ndarray
    big_t: np.ndarray
    future: np.ndarray
    purchase_times: list[np.ndarray]


def sample(
    params: BgNbdParams,
    big_t: np.ndarray,
    horizon: float,
    rng: np.random.Generator,
    keep_times: bool = False,
) -> DrawnCustomers:
    """Draw customers from BG/NBD with known parameters.

    Each customer makes a first purchase at time 0 and is observed until its
    ``big_t`` (the cut-off); purchases in (T, T + horizon] are counted as
    ``future``.

    Args:
        params: Population parameters.
        big_t: Time observed per customer (its length sets the count).
        horizon: Length of the period after the cut-off.
        rng: Random source.
        keep_times: Also return every purchase time (slower; for event logs).

    Returns:
        Summaries at the cut-off, future purchase counts and, with
        ``keep_times``, every purchase time (the first at 0, up to
        ``T + horizon``); otherwise ``purchase_times`` is empty.
    """
    big_t = np.asarray(big_t, dtype=np.float64)
    n = len(big_t)
    rate = rng.gamma(params.r, 1.0 / params.alpha, size=n)
    dropout = rng.beta(params.a, params.b, size=n)
    end = big_t + horizon
    clock = np.zeros(n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    future = np.zeros(n)
    times: list[list[float]] = [[0.0] for _ in range(n)] if keep_times else []
    # Everyone is alive after the first purchase (which is why P(alive) is 1 at
    # x = 0); after each repeat purchase a customer drops out with probability
    # p, and the survivors wait an exponential gap for the next one.
    active = np.ones(n, dtype=bool)
    while np.any(active):
        idx = np.flatnonzero(active)
        clock[idx] += rng.exponential(1.0 / np.maximum(rate[idx], 1e-300))
        inside = clock[idx] <= end[idx]
        idx = idx[inside]
        before = clock[idx] <= big_t[idx]
        x[idx[before]] += 1
        t_x[idx[before]] = clock[idx[before]]
        future[idx[~before]] += 1
        if keep_times:
            for i in idx:
                times[i].append(float(clock[i]))
        active[:] = False
        active[idx] = rng.random(len(idx)) >= dropout[idx]
    return DrawnCustomers(
        x=x,
        t_x=t_x,
        big_t=big_t,
        future=future,
        purchase_times=[np.asarray(t) for t in times],
    )
