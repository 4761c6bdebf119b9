"""The BentoML scoring service: ``bentoml serve serving.service:ScoringService``.

Thin on purpose: start-up loads settings, resolves the models' features in the Feast
registry and loads (and validates) both models; each request is one pipelined
Redis read of Feast's own hashes (:mod:`core.store.online_reader`), the pure
functions of :mod:`core.scoring`, and one JSON serialisation.

Endpoints: ``POST /score`` (body :class:`serving.schemas.ScoreRequest`),
``GET /segments``, ``POST /events`` (the event collector, :mod:`serving.collector`),
and BentoML's own ``GET /healthz`` (process alive),
``GET /readyz`` (models loaded and Redis answers PING), ``GET /metrics``
(BentoML's series plus :mod:`serving.metrics`) and the OpenAPI document at
``GET /docs.json``. Promotions are picked up while serving (:mod:`core.model_manager`).

Slow and idle clients: a request's headers and its body each have a deadline (408),
and each worker caps its open connections (503 beyond); see :mod:`serving.connections`
and :mod:`serving.limits`.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import bentoml
import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from pydantic.warnings import PydanticDeprecatedSince211
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core import scoring
from core.model_manager import ModelManager
from core.store.feast_config import feature_store
from core.store.online_reader import OnlineReader, resolve_views
from core.store.state_store import StateLayout
from infra.local_stack import current_broker, current_redis_url
from infra.settings import get_settings
from serving import collector, connections
from serving.auth import ApiKeyMiddleware
from serving.limits import LimitsMiddleware
from serving.metrics import LATENCY_BUCKETS, Metrics
from serving.schemas import ScoreRequest, ScoreResponse

logger = logging.getLogger(__name__)

JSON = "application/json"
# Read at import: the decorator and the connection guards below need them before
# BentoML creates the service.
SETTINGS = get_settings()
# Without an exporter configured, spans go nowhere; creating them was ~10 % of a
# one-user request. SEGSCORE_TRACE_REQUESTS=true traces the endpoints again.
_TRACING: dict[str, Any] = (
    {} if SETTINGS.trace_requests else {"excluded_urls": ["/score", "/segments"]}
)
_UNAVAILABLE = orjson.dumps(
    {"error": "online feature store unavailable", "detail": "retry shortly"}
)


class _QuietValidationErrors(logging.Filter):
    """BentoML logs every invalid request body as an ERROR with a traceback.

    That is the caller's mistake, already answered with a 4xx naming the field;
    a traceback per bad request would bury real errors (a schemathesis run wrote
    thousands). Such records become one INFO line; everything else passes as is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "invalid request body on %s [%s] (answered 4xx)"
        return True


async def _segments(request: Request) -> Response:
    service: ScoringService = request.app.state.service
    return Response(service.segments_body(), media_type=JSON)


async def _events(request: Request) -> Response:
    service: ScoringService = request.app.state.service
    return await service.collect(await request.body())


# @bentoml.api routes accept POST only and validate a fixed schema; GET /segments
# and the collector (whose body is an event, a list or {"events": [...]}, checked
# by the stream's contract) live in this small Starlette app mounted beside them.
# The service registers itself on its state.
read_routes = Starlette(
    routes=[
        Route("/segments", _segments, methods=["GET"]),
        Route(collector.EVENTS_PATH, _events, methods=["POST"]),
    ]
)

_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This worker process's metric series (created on first use)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def _count_outcome(outcome: str) -> None:
    metrics().count(outcome)


def _count_closed_connection(reason: str) -> None:
    metrics().connections_closed.labels(reason=reason).inc()


# Before BentoML builds this worker's uvicorn server (it imports this module first).
connections.install(
    header_timeout=SETTINGS.header_timeout_seconds,
    max_connections=SETTINGS.max_connections_per_worker,
    on_close=_count_closed_connection,
)


@bentoml.service(
    name="segscore-scoring",
    workers=SETTINGS.serve_workers,
    # The whole request (a 504); longer than the body deadline, whose 408 must win.
    traffic={"timeout": SETTINGS.request_timeout_seconds},
    # A log line per request cost ~0.1 ms of a ~1 ms request; errors still log.
    logging={"access": {"enabled": False}},
    tracing=_TRACING,
    metrics={
        "enabled": True,
        "namespace": "bentoml_service",
        "duration": {"buckets": list(LATENCY_BUCKETS)},
    },
)
@bentoml.asgi_app(read_routes, path="/")
class ScoringService:
    """Segment, purchase propensity and SHAP explanation per user."""

    def __init__(self) -> None:
        # BentoML 1.4 reads ``model_fields`` off the request model instance, and the
        # resulting deprecation warning is written to stderr on every request.
        warnings.filterwarnings(
            "ignore", category=PydanticDeprecatedSince211, module=r"_bentoml_impl\."
        )
        logging.getLogger("bentoml._internal.server.http_app").addFilter(
            _QuietValidationErrors()
        )
        settings = get_settings()
        redis_url = current_redis_url(settings)
        store = feature_store(settings, redis_url)
        # Short timeouts and no retries: with Redis down or stalled a caller gets
        # a 503 at once rather than waiting; the next request reconnects.
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=settings.online_read_timeout_seconds,
            socket_connect_timeout=settings.online_connect_timeout_seconds,
            retry=None,
        )
        self.models = ModelManager(
            settings,
            allowed=scoring.ONLINE_FEATURES,
            on_reload=self._on_reload,
        )
        # The read plan covers everything any valid model may need (the state
        # blob stands for every stream feature), so a promotion never changes
        # what is read; the registry must know it all.
        self.reader = OnlineReader(
            self._redis,
            StateLayout.of(store),
            resolve_views(store, scoring.online_columns(scoring.ONLINE_FEATURES)),
        )
        self._segments_for: tuple[str, bytes] | None = None
        # The broker is looked up and connected on the first POST /events only:
        # scoring neither waits for it nor fails without it.
        self.events = collector.EventSink(
            lambda: current_broker(settings),
            settings.events_topic,
            settings.collector_produce_timeout_seconds,
        )
        # Run the model path once so the first request does not pay for lazy
        # initialisation inside LightGBM and numpy.
        scoring.score(["warm-up"], {}, time.time(), self.models.current)
        read_routes.state.service = self
        metrics()
        logger.info(
            "scoring service ready: models %s, online store %s",
            self.models.current.versions,
            redis_url,
        )

    def _on_reload(self, outcome: str, detail: str) -> None:
        metrics().reloads.labels(outcome=outcome).inc()

    def segments_body(self) -> bytes:
        """The ``GET /segments`` body of the serving segmenter (cached per model)."""
        segmenter = self.models.current.segmenter
        cached = self._segments_for
        if cached is None or cached[0] != segmenter.tag:
            cached = (
                segmenter.tag,
                orjson.dumps(scoring.segment_catalogue(segmenter)),
            )
            self._segments_for = cached
        return cached[1]

    @bentoml.on_startup
    async def start_model_polling(self) -> None:
        """Follow promotions while serving (a background task per worker)."""
        self.models.start()

    @bentoml.on_shutdown
    async def stop_model_polling(self) -> None:
        """Stop the promotion poller, the event producer and the Redis pool."""
        await self.models.stop()
        await self.events.close()
        await self._redis.aclose()

    async def collect(self, body: bytes) -> Response:
        """``POST /events``: validate, produce with acks=all, then answer 202.

        422 names every bad event's field (nothing is produced); 503 with
        ``Retry-After`` when the broker does not acknowledge in time.
        """
        found = collector.validate_body(body, SETTINGS)
        if isinstance(found, collector.BadRequest):
            metrics().collected.labels(outcome="invalid").inc()
            return _json(
                found.status, {"error": "invalid request", "detail": found.detail}
            )
        events, errors = found
        if errors:
            metrics().collected.labels(outcome="invalid").inc(len(errors))
            return _json(422, collector.error_body(errors))
        try:
            await self.events.deliver(events)
        except collector.BrokerUnavailable as exc:
            logger.warning("event broker unavailable: %s", exc)
            metrics().collected.labels(outcome="unavailable").inc(len(events))
            return _json(
                503,
                {
                    "error": "event broker unavailable",
                    "detail": "retry shortly with the same event ids (replays "
                    "are dropped by event_id)",
                },
                {"Retry-After": "1"},
            )
        metrics().collected.labels(outcome="accepted").inc(len(events))
        return _json(202, {"accepted": len(events)})

    @bentoml.api(route="/score", input_spec=ScoreRequest, output_spec=ScoreResponse)
    async def score(
        self, user_ids: list[str], explain: bool = True, top_k: int = 5
    ) -> Response:
        """Score users: segment, calibrated propensity and top-k SHAP explanation.

        Unknown users are scored from population defaults (``cold_start`` true).
        Answers 503 when the online store cannot be read.
        """
        started = time.perf_counter()
        # One pair for the whole request, even if a promotion swaps it meanwhile.
        models = self.models.current
        try:
            replies = await self.reader.fetch(user_ids)
        except (RedisError, OSError) as exc:
            logger.warning("online store read failed: %s", exc)
            return Response(
                _UNAVAILABLE,
                status_code=503,
                media_type=JSON,
                headers={"Retry-After": "1"},
            )
        # The read time, taken after the read so no stored timestamp is in its
        # future; ages and windows are "as of" this instant.
        as_of = time.time()
        stored = self.reader.columns(replies)
        payload = scoring.score(
            user_ids,
            stored,
            as_of,
            models,
            explain=explain,
            top_k=top_k,
            stale_after=SETTINGS.stale_after_seconds,
        )
        body = orjson.dumps(payload)
        scores = payload["scores"]
        metrics().observe_scores(
            time.perf_counter() - started,
            explain,
            len(scores),
            sum(1 for s in scores if s["cold_start"]),
            [s["feature_age_seconds"] for s in scores],
        )
        return Response(body, media_type=JSON)

    async def __is_ready__(self) -> bool:
        """Ready when the online store answers PING.

        The models need no check: ``__init__`` loads them or the worker never
        starts, and a failed reload keeps the last good pair.
        """
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False


def _json(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers
    )


# Outermost first: limits (and outcome counting) see every /score answer,
# including authentication's 401; an unauthorised caller costs no parsing.
ScoringService.add_asgi_middleware(LimitsMiddleware, count=_count_outcome)
ScoringService.add_asgi_middleware(ApiKeyMiddleware)
