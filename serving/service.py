"""The BentoML scoring service: ``bentoml serve serving.service:ScoringService``.

Thin on purpose: start-up loads settings, resolves the models' features in the Feast
registry and loads (and validates) both models; each request is one pipelined
Redis read of Feast's own hashes (:mod:`core.store.online_reader`), the pure
functions of :mod:`core.scoring`, and one JSON serialisation.

Endpoints: ``POST /score`` (body :class:`serving.schemas.ScoreRequest`),
``GET /users/{user_id}`` (a user's profile, :mod:`serving.profile`),
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
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from pydantic.warnings import PydanticDeprecatedSince211
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core import scoring
from core.model_manager import ModelManager
from core.store.feast_config import feature_store
from core.store.online_reader import OnlineReader, resolve_views
from core.store.recent_events import recent_command
from core.store.state_store import DEDUPE_FIELD, MEMBERS_FIELD, StateLayout
from infra.local_stack import current_broker, current_redis_url
from infra.settings import get_settings
from serving import collector, connections, profile
from serving.auth import ApiKeyMiddleware
from serving.limits import LimitsMiddleware
from serving.metrics import LATENCY_BUCKETS, Metrics
from serving.schemas import (
    ErrorResponse,
    ProfileQuery,
    ScoreRequest,
    ScoreResponse,
    UserId,
    UserProfile,
    ValidationErrorResponse,
)

logger = logging.getLogger(__name__)

JSON = "application/json"
# Read at import: the decorator and the connection guards below need them before
# BentoML creates the service.
SETTINGS = get_settings()
# Without an exporter configured, spans go nowhere; creating them was ~10 % of a
# one-user request. SEGSCORE_TRACE_REQUESTS=true traces the endpoints again.
_TRACING: dict[str, Any] = (
    {}
    if SETTINGS.trace_requests
    else {"excluded_urls": ["/score", "/segments", "/users"]}
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


async def _user(request: Request) -> Response:
    service: ScoringService = request.app.state.service
    return await service.user_profile(
        request.path_params["user_id"], request.query_params.multi_items()
    )


def _profile_parameters() -> list[dict[str, Any]]:
    """OpenAPI parameters of GET /users/{user_id}, from the types that check them."""
    query = ProfileQuery.model_json_schema()["properties"]
    return [
        {
            "name": "user_id",
            "in": "path",
            "required": True,
            "description": "The user, as in POST /score (a '/' in it as %2F).",
            "schema": TypeAdapter(UserId).json_schema(),
        },
        *(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": query[name]["description"],
                "schema": _query_schema(query[name]),
            }
            for name in ("events", "top_k")
        ),
    ]


def _query_schema(field: dict[str, Any]) -> dict[str, Any]:
    # A query value is never JSON null: an optional one is simply left out.
    options = [o for o in field.get("anyOf", [field]) if o.get("type") != "null"]
    (schema,) = options
    return {k: v for k, v in schema.items() if k not in ("description", "title")}


def _doc(model: type[Any], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


# @bentoml.api routes accept POST only and validate a fixed schema; GET /segments,
# GET /users/{user_id} and the collector (whose body is an event, a list or
# {"events": [...]}, checked by the stream's contract) live in this small app
# mounted beside them. The service registers itself on its state. FastAPI only
# because BentoML documents a mounted app's routes in /docs.json when it is one;
# no route uses FastAPI's request handling (the profile route's own checks name
# fields as /score does), and its own docs pages are off.
read_routes = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
read_routes.router.routes.extend(
    [
        Route("/segments", _segments, methods=["GET"]),
        Route(collector.EVENTS_PATH, _events, methods=["POST"]),
        # ":path": an id may hold "/" (sent as %2F, decoded before routing).
        APIRoute(
            "/users/{user_id:path}",
            _user,
            methods=["GET"],
            response_model=None,
            summary="A user's profile",
            description="Segment, propensity and explanation (as POST /score), "
            "the worker's live segment, active rule memberships, the last events "
            "and feature ages. An unknown user is a cold start (200), not a 404.",
            responses={
                200: _doc(UserProfile, "The profile."),
                401: _doc(ErrorResponse, "X-API-Key missing or wrong."),
                422: _doc(ValidationErrorResponse, "A bad id or parameter."),
                503: _doc(ErrorResponse, "The online store cannot be read."),
            },
            openapi_extra={"parameters": _profile_parameters()},
        ),
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
        # The worker's rule memberships lie in the same hash: read by the same
        # HMGET, so /score's rules cost no round trip.
        self.reader = OnlineReader(
            self._redis,
            StateLayout.of(store),
            resolve_views(store, scoring.online_columns(scoring.ONLINE_FEATURES)),
            extra_fields=(MEMBERS_FIELD,),
        )
        self.recent_events = settings.profile_recent_events
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

        Each score also lists the user's rule memberships active now (``rules``).
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
            return _store_unavailable()
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
        profile.add_rules(
            payload["scores"], self.reader.extra(replies, MEMBERS_FIELD), as_of
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

    async def user_profile(
        self, user_id: str, params: list[tuple[str, str]]
    ) -> Response:
        """``GET /users/{user_id}``: the user's profile (:class:`UserProfile`).

        One round trip: the scoring fields, memberships and the worker's data
        (one ``HMGET``) and the last events (``LRANGE``). An unknown user is a
        cold start with no rules or events, as /score answers it; 422 names a
        bad id or parameter; 503 when Redis cannot be read, as /score.
        """
        query = profile.parse_query(user_id, params, self.recent_events)
        if not isinstance(query, ProfileQuery):
            return _json(422, {"error": "invalid request", "detail": query})
        models = self.models.current
        n_events = self.recent_events if query.events is None else query.events
        key = self.reader.key(query.user_id)
        commands: list[tuple[bytes | int, ...]] = [(b"HGET", key, DEDUPE_FIELD)]
        if n_events:
            commands.append(recent_command(query.user_id, n_events))
        try:
            replies, (dedupe, *recent) = await self.reader.fetch_with(
                [query.user_id], commands
            )
        except (RedisError, OSError) as exc:
            logger.warning("online store read failed: %s", exc)
            return _store_unavailable()
        as_of = time.time()
        stored = self.reader.columns(replies)
        payload = scoring.score(
            [query.user_id],
            stored,
            as_of,
            models,
            explain=True,
            top_k=query.top_k,
            stale_after=SETTINGS.stale_after_seconds,
        )
        (score,) = payload["scores"]
        body = profile.profile_payload(
            query.user_id,
            score,
            payload["model_versions"],
            as_of,
            rules=profile.active_rules(
                self.reader.extra(replies, MEMBERS_FIELD)[0], as_of
            ),
            live=profile.live_segment(
                None if isinstance(dedupe, Exception) else dedupe,
                models.segment_names,
            ),
            events=profile.recent_events(recent[0]) if recent else [],
            ages=profile.feature_ages_by_name(stored, self.reader.feature_names, as_of),
        )
        return Response(orjson.dumps(body), media_type=JSON)

    async def __is_ready__(self) -> bool:
        """Ready when the online store answers PING.

        The models need no check: ``__init__`` loads them or the worker never
        starts, and a failed reload keeps the last good pair.
        """
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False


def _store_unavailable() -> Response:
    return Response(
        _UNAVAILABLE, status_code=503, media_type=JSON, headers={"Retry-After": "1"}
    )


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
