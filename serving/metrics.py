"""The service's own Prometheus series, next to BentoML's on ``GET /metrics``.

BentoML already exports per-endpoint request durations and counts by HTTP status
(``bentoml_service_request_*``); these add what only the service knows: scoring
latency by kind, requests by outcome (including the ones middleware answers
before BentoML sees them), users scored, cold starts, the age of the features a
score was made from, and model reloads. Plain prometheus_client objects: BentoML
sets ``PROMETHEUS_MULTIPROC_DIR`` before a worker starts, and its /metrics merges
every worker's files.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

# Scoring takes ~0.5 ms for one user to tens of ms for a large explained batch.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# Feature age: seconds (a live user) to the stream view's 8-day TTL.
AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86_400, 3 * 86_400, 8 * 86_400)

OUTCOMES = (
    "ok",
    "invalid",
    "too_large",
    "timeout",
    "unauthorized",
    "store_unavailable",
    "error",
)


class Metrics:
    """The series, created once per worker process."""

    def __init__(self) -> None:
        self.latency = Histogram(
            name="segscore_score_duration_seconds",
            documentation="Time inside the /score handler (online read + scoring).",
            labelnames=["explain", "batch"],
            buckets=LATENCY_BUCKETS,
        )
        self.requests = Counter(
            name="segscore_score_requests_total",
            documentation="POST /score requests by outcome.",
            labelnames=["outcome"],
        )
        self.users = Counter(
            name="segscore_users_scored_total",
            documentation="Users scored (one request may score up to 1000).",
        )
        self.cold_starts = Counter(
            name="segscore_cold_starts_total",
            documentation="Users scored from population defaults (nothing stored).",
        )
        self.feature_age = Histogram(
            name="segscore_feature_age_seconds",
            documentation="Age of the real-time features a score was made from.",
            buckets=AGE_BUCKETS,
        )
        self.connections_closed = Counter(
            name="segscore_http_connections_closed_total",
            documentation="Connections the server closed itself: headers not "
            "received in time, or beyond the per-worker connection cap.",
            labelnames=["reason"],
        )
        self.reloads = Counter(
            name="segscore_model_reloads_total",
            documentation="Model promotions seen: loaded, or refused (kept serving "
            "the last good pair).",
            labelnames=["outcome"],
        )
        self.collected = Counter(
            name="segscore_collected_events_total",
            documentation="Events sent to POST /events by outcome: accepted "
            "(acknowledged by the broker), invalid, unavailable (503).",
            labelnames=["outcome"],
        )
        for outcome in ("accepted", "invalid", "unavailable"):
            self.collected.labels(outcome=outcome)
        for outcome in OUTCOMES:
            # Export every outcome from the start, so rates exist before the first
            # error instead of appearing with it.
            self.requests.labels(outcome=outcome)
        for outcome in ("loaded", "refused"):
            self.reloads.labels(outcome=outcome)
        for reason in ("header_timeout", "over_capacity"):
            self.connections_closed.labels(reason=reason)
        # Children looked up once: ``labels()`` costs microseconds per call.
        self._latency = {
            (explain, batch): self.latency.labels(explain=explain, batch=batch)
            for explain in ("true", "false")
            for batch in ("1", "2-100", "101-1000")
        }
        self._outcomes = {o: self.requests.labels(outcome=o) for o in OUTCOMES}

    def count(self, outcome: str) -> None:
        """Count one /score answer by outcome."""
        self._outcomes.get(outcome, self._outcomes["error"]).inc()

    def observe_scores(
        self, seconds: float, explain: bool, users: int, cold: int, ages: list
    ) -> None:
        """Record one successful /score request."""
        batch = "1" if users == 1 else "2-100" if users <= 100 else "101-1000"
        self._latency["true" if explain else "false", batch].observe(seconds)
        self.users.inc(users)
        if cold:
            self.cold_starts.inc(cold)
        known = [a for a in ages if a is not None]
        if known:
            observe_many(self.feature_age, known)


def observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, as one update per bucket.

    A 100-user batch would otherwise spend ~0.2 ms on 100 observes. Relies on
    prometheus_client's child layout (non-cumulative ``_buckets``, ``_sum``,
    ``_upper_bounds`` ending in +Inf); anything else takes the plain loop.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(values) < 4:
        for value in values:
            histogram.observe(value)
        return
    # Imported here: the bentoml parent imports this module (for the service's
    # settings) and would otherwise load numpy for nothing.
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    # Bucket i counts values in (bound[i-1], bound[i]]: the first bound >= value.
    counts = np.bincount(
        np.searchsorted(np.asarray(bounds), array, side="left"),
        minlength=len(bounds),
    )
    total.inc(float(array.sum()))
    for index, count in enumerate(counts.tolist()):
        if count:
            buckets[index].inc(count)


_metrics: Metrics | None = None


def worker_metrics() -> Metrics:
    """This worker process's series (created on first use, once per process)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
