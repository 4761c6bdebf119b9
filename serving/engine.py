"""What a scoring worker does per request, behind the BentoML shell (serving.service).

Start-up loads settings, resolves the models' features in the Feast registry and
loads (and validates) both models; each request is one pipelined Redis read of
Feast's own hashes (:mod:`core.store.online_reader`), the pure functions of
:mod:`core.scoring`, and one JSON serialisation.

Kept apart from the service module because ``bentoml serve`` imports that module
in its parent process only to read the service's configuration: everything
imported here (the models' libraries, the feature store's client) is loaded by the
workers alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.responses import Response

from core import scoring
from core.feature_catalog import STATE_FEATURE
from core.model_manager import ModelManager
from core.store.online_reader import OnlineReader
from core.store.read_plan import resolve_read_plan
from core.store.recent_events import recent_command
from core.store.state_store import DEDUPE_FIELD, MEMBERS_FIELD
from infra.heap import settle_after_setup
from infra.local_stack import current_broker, current_redis_url
from infra.settings import Settings
from serving import collector, profile
from serving.metrics import worker_metrics
from serving.schemas import ProfileQuery

logger = logging.getLogger(__name__)

JSON = "application/json"
_UNAVAILABLE = orjson.dumps(
    {"error": "online feature store unavailable", "detail": "retry shortly"}
)


class ScoringEngine:
    """One worker's models, online reader and event sink, and the endpoints' work."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        redis_url = current_redis_url(settings)
        # Short timeouts and no retries: with Redis down or stalled a caller gets
        # a 503 at once rather than waiting; the next request reconnects. The
        # read timeout bounds each whole read (see OnlineReader), not each reply.
        self._read_timeout = settings.online_read_timeout_seconds
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=None,
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
        plan = resolve_read_plan(
            settings, redis_url, scoring.online_columns(scoring.ONLINE_FEATURES)
        )
        self.reader = OnlineReader(
            self._redis,
            plan.layout,
            plan.views,
            extra_fields=(MEMBERS_FIELD,),
            timeout=self._read_timeout,
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
        # initialisation inside numpy.
        scoring.score(["warm-up"], {}, time.time(), self.models.current)
        worker_metrics()
        logger.info(
            "scoring service ready: models %s, online store %s",
            self.models.current.versions,
            redis_url,
        )

    def _on_reload(self, outcome: str, detail: str) -> None:
        worker_metrics().reloads.labels(outcome=outcome).inc()

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

    def start(self) -> None:
        """Follow promotions while serving (a background task per worker).

        Called when the worker's event loop starts, after every import and the
        app's set-up: what they made is frozen out of the garbage collector's
        scans (:mod:`infra.heap`), which otherwise held batches up at random.
        """
        settle_after_setup()
        self.models.start()

    async def stop(self) -> None:
        """Stop the promotion poller, the event producer and the Redis pool."""
        await self.models.stop()
        await self.events.close()
        await self._redis.aclose()

    async def collect(self, body: bytes) -> Response:
        """``POST /events``: validate, produce with acks=all, then answer 202.

        422 names every bad event's field (nothing is produced); 503 with
        ``Retry-After`` when the broker does not acknowledge in time.
        """
        metrics = worker_metrics()
        found = collector.validate_body(body, self.settings)
        if isinstance(found, collector.BadRequest):
            metrics.collected.labels(outcome="invalid").inc()
            return _json(
                found.status, {"error": "invalid request", "detail": found.detail}
            )
        events, errors = found
        if errors:
            metrics.collected.labels(outcome="invalid").inc(len(errors))
            return _json(422, collector.error_body(errors))
        try:
            await self.events.deliver(events)
        except collector.BrokerUnavailable as exc:
            logger.warning("event broker unavailable: %s", exc)
            metrics.collected.labels(outcome="unavailable").inc(len(events))
            return _json(
                503,
                {
                    "error": "event broker unavailable",
                    "detail": "retry shortly with the same event ids (replays "
                    "are dropped by event_id)",
                },
                {"Retry-After": "1"},
            )
        metrics.collected.labels(outcome="accepted").inc(len(events))
        return _json(202, {"accepted": len(events)})

    async def score(self, user_ids: list[str], explain: bool, top_k: int) -> Response:
        """``POST /score`` (see :meth:`serving.service.ScoringService.score`)."""
        started = time.perf_counter()
        # One pair for the whole request, even if a promotion swaps it meanwhile.
        models = self.models.current
        try:
            replies = await self.reader.fetch_preferring(user_ids, STATE_FEATURE)
        except (RedisError, OSError) as exc:
            logger.warning("online store read failed: %s", exc)
            return _store_unavailable()
        # The read time, taken after the read so no stored timestamp is in its
        # future; ages and windows are "as of" this instant.
        as_of = time.time()
        # Stored history rows count only for users without a state (the state's
        # own history wins): theirs alone were read, and are decoded.
        stored = self.reader.columns(replies, only_without=STATE_FEATURE)
        payload = scoring.score(
            user_ids,
            stored,
            as_of,
            models,
            explain=explain,
            top_k=top_k,
            stale_after=self.settings.stale_after_seconds,
        )
        profile.add_rules(
            payload["scores"], self.reader.extra(replies, MEMBERS_FIELD), as_of
        )
        body = orjson.dumps(payload)
        scores = payload["scores"]
        worker_metrics().observe_scores(
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
            stale_after=self.settings.stale_after_seconds,
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

    async def ready(self) -> bool:
        """Whether the online store answers PING."""
        try:
            async with asyncio.timeout(self._read_timeout):
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
