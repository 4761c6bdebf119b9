"""The BentoML scoring service: ``bentoml serve serving.service:ScoringService``.

The BentoML shell only: routes, middleware, metrics and the service's settings.
Each worker's work (models, the online read, scoring) is
:class:`serving.engine.ScoringEngine`, imported by the worker when it starts, so
the ``bentoml serve`` parent, which imports this module only to read the
service's configuration, stays small.

Endpoints: ``POST /score`` (body :class:`serving.schemas.ScoreRequest`; a valid
body is answered by :mod:`serving.score_route` ahead of BentoML's API route),
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
import warnings
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from pydantic.warnings import PydanticDeprecatedSince211
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.settings import get_settings
from serving import collector, connections
from serving.auth import ApiKeyMiddleware
from serving.limits import LimitsMiddleware
from serving.metric_paths import profile_user_id
from serving.metrics import LATENCY_BUCKETS, worker_metrics
from serving.schemas import (
    ErrorResponse,
    ProfileQuery,
    ScoreRequest,
    ScoreResponse,
    UserId,
    UserProfile,
    ValidationErrorResponse,
)
from serving.score_route import ScoreEndpoint

if TYPE_CHECKING:
    from serving.engine import ScoringEngine

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
    engine: ScoringEngine = request.app.state.engine
    return Response(engine.segments_body(), media_type=JSON)


async def _events(request: Request) -> Response:
    engine: ScoringEngine = request.app.state.engine
    return await engine.collect(await request.body())


async def _user(request: Request) -> Response:
    engine: ScoringEngine = request.app.state.engine
    user_id = profile_user_id(request.scope, request.path_params["user_id"])
    return await engine.user_profile(user_id, request.query_params.multi_items())


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


def _count_outcome(outcome: str) -> None:
    worker_metrics().count(outcome)


def _count_closed_connection(reason: str) -> None:
    worker_metrics().connections_closed.labels(reason=reason).inc()


# Before BentoML builds this worker's uvicorn server (it imports this module first).
connections.install(
    header_timeout=SETTINGS.header_timeout_seconds,
    max_connections=SETTINGS.max_connections_per_worker,
    on_close=_count_closed_connection,
    balance_in=SETTINGS.home / "run" if SETTINGS.balance_connections else None,
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
        # Imported here, in the worker: `bentoml serve` imports this module in its
        # parent process too, only to read the service's configuration, and the
        # engine's libraries (models, numpy, the feature store's client) would
        # make that idle parent ~230 MB larger.
        from serving.engine import ScoringEngine

        self.engine = ScoringEngine(get_settings())
        read_routes.state.engine = self.engine

    @bentoml.on_startup
    async def start_model_polling(self) -> None:
        """Follow promotions while serving (a background task per worker)."""
        self.engine.start()

    @bentoml.on_shutdown
    async def stop_model_polling(self) -> None:
        """Stop the promotion poller, the event producer and the Redis pool."""
        await self.engine.stop()

    @bentoml.api(route="/score", input_spec=ScoreRequest, output_spec=ScoreResponse)
    async def score(
        self, user_ids: list[str], explain: bool = True, top_k: int = 5
    ) -> Response:
        """Score users: segment, calibrated propensity and top-k SHAP explanation.

        Each score also lists the user's rule memberships active now (``rules``).
        Unknown users are scored from population defaults (``cold_start`` true).
        Answers 503 when the online store cannot be read.

        This route is the contract (OpenAPI, BentoML's clients) and answers every
        body that :func:`serving.score_route.parse_score_body` leaves to the
        model, i.e. each bad request; valid ones are scored by
        :class:`serving.score_route.ScoreEndpoint` with the same engine call.
        """
        return await self.engine.score(user_ids, explain, top_k)

    async def __is_ready__(self) -> bool:
        """Ready when the online store answers PING.

        The models need no check: ``__init__`` loads them or the worker never
        starts, and a failed reload keeps the last good pair.
        """
        return await self.engine.ready()


# Outermost first: limits (and outcome counting) see every /score answer,
# including authentication's 401; an unauthorised caller costs no parsing. The
# score endpoint is innermost: only authorised bodies within the limits reach it.
ScoringService.add_asgi_middleware(LimitsMiddleware, count=_count_outcome)
ScoringService.add_asgi_middleware(ApiKeyMiddleware)
ScoringService.add_asgi_middleware(
    ScoreEndpoint,
    engine=lambda: read_routes.state.engine,
    server=f"BentoML Service/{ScoringService.name}",
)
