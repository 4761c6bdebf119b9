"""The BentoML scoring service: ``bentoml serve serving.service:ScoringService``.

Thin on purpose: start-up loads settings, the online store and both models; each
request is one Feast online read for the union of both models' stored features,
the pure functions of :mod:`serving.scoring`, and one JSON serialisation.

Endpoints: ``POST /score`` (body :class:`serving.schemas.ScoreRequest`),
``GET /segments``, and BentoML's own ``GET /healthz`` (process alive),
``GET /readyz`` (models loaded and Redis answers PING) and ``GET /metrics``.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import bentoml
import orjson
import redis.asyncio as aioredis
from feast import FeatureStore
from pydantic.warnings import PydanticDeprecatedSince211
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.feast_config import feature_store
from infra.local_stack import current
from infra.settings import get_settings
from serving import scoring
from serving.auth import ApiKeyMiddleware
from serving.schemas import ScoreRequest, ScoreResponse
from training.registry import load_propensity, load_segmenter

logger = logging.getLogger(__name__)

# A healthy local Redis answers a pipelined read in well under a millisecond. When
# it is down or stalled we would rather answer 503 at once than hold the caller.
ONLINE_STORE_TIMEOUT_SECONDS = 0.25
JSON = "application/json"


def _feature_refs(store: FeatureStore, names: tuple[str, ...]) -> list[str]:
    """``view:feature`` references for stored feature names, from the registry."""
    owner: dict[str, str] = {}
    for view in store.list_feature_views():
        for feature in view.features:
            owner.setdefault(feature.name, view.name)
    missing = [name for name in names if name not in owner]
    if missing:
        raise RuntimeError(
            f"features {missing} are not in the Feast registry; run `feast apply` "
            "(or `segscore up`) for this feature repo"
        )
    return [f"{owner[name]}:{name}" for name in names]


def _json(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status_code, media_type=JSON, headers=headers
    )


async def _segments(request: Request) -> Response:
    service: ScoringService = request.app.state.service
    return Response(service.segments_body, media_type=JSON)


# @bentoml.api routes accept POST only; read-only endpoints live in this small
# Starlette app mounted beside them. The service registers itself on its state.
read_routes = Starlette(routes=[Route("/segments", _segments, methods=["GET"])])


@bentoml.service(name="segscore-scoring", traffic={"timeout": 10})
@bentoml.asgi_app(read_routes, path="/")
class ScoringService:
    """Segment, purchase propensity and SHAP explanation per user."""

    def __init__(self) -> None:
        # BentoML 1.4 reads ``model_fields`` off the request model instance, and the
        # resulting deprecation warning is written to stderr on every request.
        warnings.filterwarnings(
            "ignore", category=PydanticDeprecatedSince211, module=r"_bentoml_impl\."
        )
        settings = get_settings()
        redis_url = current(settings).redis_url

        self.store = feature_store(
            settings, redis_url, fail_fast_seconds=ONLINE_STORE_TIMEOUT_SECONDS
        )
        self.models = scoring.ScoringModels.from_bundles(
            load_segmenter(settings), load_propensity(settings)
        )
        # Resolving references loads the registry now rather than on the first call.
        self.feature_refs = _feature_refs(
            self.store, scoring.online_columns(self.models.stored_features)
        )
        self.segments_body = orjson.dumps(
            scoring.segment_catalogue(self.models.segmenter)
        )
        self._ping = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=ONLINE_STORE_TIMEOUT_SECONDS,
            socket_connect_timeout=ONLINE_STORE_TIMEOUT_SECONDS,
            retry=None,
        )
        # Run the model path once so the first request does not pay for lazy
        # initialisation inside LightGBM and scikit-learn.
        scoring.score(["warm-up"], {}, time.time(), self.models)
        read_routes.state.service = self
        logger.info(
            "scoring service ready: models %s, online store %s",
            self.models.versions,
            redis_url,
        )

    @bentoml.api(route="/score", input_spec=ScoreRequest, output_spec=ScoreResponse)
    async def score(
        self, user_ids: list[str], explain: bool = True, top_k: int = 5
    ) -> Response:
        """Score users: segment, calibrated propensity and top-k SHAP explanation.

        Unknown users are scored from population defaults (``cold_start`` true).
        Answers 503 when the online store cannot be read.
        """
        try:
            online = await self.store.get_online_features_async(
                self.feature_refs, {"user_id": user_ids}
            )
        except (RedisError, OSError) as exc:
            logger.warning("online store read failed: %s", exc)
            return _json(
                {
                    "error": "online feature store unavailable",
                    "detail": type(exc).__name__,
                },
                503,
                {"Retry-After": "1"},
            )
        # The read time, taken after the read so no stored timestamp is in its
        # future; ages and windows are "as of" this instant.
        as_of = time.time()
        stored = online.to_dict(include_event_timestamps=True)
        payload = scoring.score(
            user_ids, stored, as_of, self.models, explain=explain, top_k=top_k
        )
        return _json(payload)

    async def __is_ready__(self) -> bool:
        """Ready when the online store answers PING.

        The models need no check: ``__init__`` loads them or the worker never starts.
        """
        try:
            return bool(await self._ping.ping())
        except (RedisError, OSError):
            return False


# Checked before BentoML parses a request: an unauthorised caller costs no work.
ScoringService.add_asgi_middleware(ApiKeyMiddleware)
