"""``POST /score`` for valid bodies, answered without BentoML's API machinery.

A scoring request spends about as much worker CPU in the request path as in the
scoring itself. BentoML's API route is the largest share of that path that this
service controls: its IO descriptor reads the body into a pydantic model, the
request context, the route lookup, and the response's header and background
bookkeeping came to ~110 us per request in-process, against ~0.4 ms of scoring
(measured with the scoring stubbed out, docs/serving.md).

:class:`ScoreEndpoint` is an ASGI middleware, the innermost of the service's own
(after the limits and the API key), so everything around it still sees /score:
BentoML's request metrics and whole-request timeout, :mod:`serving.limits`
(body size and deadline, outcome counting) and :mod:`serving.auth`. It checks
the body with :func:`parse_score_body`, a conservative test that accepts only
bodies :class:`serving.schemas.ScoreRequest` accepts, with the same values, and
scores them at once. Every other body goes on, unchanged, to the
``@bentoml.api`` route, which stays the contract: it answers each bad request
exactly as before (pydantic's errors naming the field, 400 or 422) and is what
the OpenAPI document and BentoML's clients describe. So a valid request takes
the short path and an invalid one costs what it always did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import orjson
from starlette.responses import Response

from serving.limits import (
    SCORE_PATH,
    ASGIApp,
    Receive,
    Scope,
    Send,
    replay_body,
)
from serving.schemas import (
    MAX_TOP_K,
    MAX_USER_ID_CHARS,
    MAX_USERS_PER_REQUEST,
    ScoreRequest,
)

logger = logging.getLogger(__name__)

# The fields and defaults of the request model itself, so the two cannot drift;
# tests/unit/serving/test_score_route.py fails if the model gains a field.
FIELDS = frozenset(ScoreRequest.model_fields)
DEFAULT_EXPLAIN: bool = ScoreRequest.model_fields["explain"].default
DEFAULT_TOP_K: int = ScoreRequest.model_fields["top_k"].default
# BentoML's answer to an exception in an API, so a failure reads the same on
# either path; the traceback goes to the log only.
_INTERNAL_ERROR = orjson.dumps(
    {"error": "An unexpected error has occurred, please check the server log."}
)


class Scorer(Protocol):
    """What answers a valid request: :meth:`serving.engine.ScoringEngine.score`."""

    async def score(
        self, user_ids: list[str], explain: bool, top_k: int
    ) -> Response: ...  # pragma: no cover - a protocol


def parse_score_body(body: bytes) -> tuple[list[str], bool, int] | None:
    """A valid ``POST /score`` body's ``(user_ids, explain, top_k)``, or None.

    None means "not certainly valid": the body then goes to the pydantic model,
    which names what is wrong (or accepts an unusual spelling this test leaves
    to it, such as a byte-order mark). Accepted: a JSON object with no keys but
    the model's; 1..1000 ids, each a string of 1..128 characters; ``explain`` a
    boolean and ``top_k`` an integer (not a boolean) in 1..50 when present.
    orjson refuses what could make an id differ from pydantic's reading (lone
    surrogates, invalid UTF-8), and both keep the last of repeated keys.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or not doc.keys() <= FIELDS:
        return None
    user_ids = doc.get("user_ids")
    explain = doc.get("explain", DEFAULT_EXPLAIN)
    top_k = doc.get("top_k", DEFAULT_TOP_K)
    # type() rather than isinstance(): True is an int to Python, not to the
    # strict model.
    if (
        type(user_ids) is not list
        or not 1 <= len(user_ids) <= MAX_USERS_PER_REQUEST
        or type(explain) is not bool
        or type(top_k) is not int
        or not 1 <= top_k <= MAX_TOP_K
    ):
        return None
    # Mapped builtins: a 1,000-id batch is checked in ~30 us.
    if set(map(type, user_ids)) != {str}:
        return None
    lengths = list(map(len, user_ids))
    if min(lengths) < 1 or max(lengths) > MAX_USER_ID_CHARS:
        return None
    return user_ids, explain, top_k


class ScoreEndpoint:
    """Answers valid ``POST /score`` requests; passes everything else on."""

    def __init__(
        self, app: ASGIApp, engine: Callable[[], Scorer], server: str | None = None
    ) -> None:
        """Wrap ``app``.

        Args:
            app: The rest of the service (BentoML's routes).
            engine: Gives the worker's scorer; called on the first request, as
                the service builds its engine after its middleware.
            server: A ``Server`` header for the answers, as BentoML's API sends.
        """
        self.app = app
        self.engine = engine
        self.extra_headers = [(b"server", server.encode())] if server else []
        self._scorer: Scorer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Score a valid POST /score body here; anything else goes to ``app``."""
        if (
            scope["type"] != "http"
            or scope["path"] != SCORE_PATH
            or scope["method"] != "POST"
        ):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client left: there is no one to answer
        request = parse_score_body(body)
        if request is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        scorer = self._scorer
        if scorer is None:
            scorer = self._scorer = self.engine()
        try:
            response = await scorer.score(*request)
        except Exception:
            # Not CancelledError: BentoML's timeout cancels a request to answer 504.
            logger.exception("Exception on %s [POST]", SCORE_PATH)
            response = Response(
                _INTERNAL_ERROR, status_code=500, media_type="application/json"
            )
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [*response.raw_headers, *self.extra_headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive) -> bytes | None:
    # serving.limits has already read the body under its deadline and size
    # limit and replays it as one message; the loop is for any other order.
    # None: the client disconnected first.
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
