"""Request limits and status codes around ``POST /score`` and ``POST /events``.

Pure ASGI middleware; the body rules apply to both paths (each with its own size
limit), the 422 rewriting and outcome counting to ``/score`` only (``/events``
answers its own errors, :mod:`serving.collector`).

- Body size: a body larger than ``max_body_bytes`` gets 413 naming ``body``, before
  BentoML parses it (by ``Content-Length``, or by counting a chunked body).
  Ids per request and id length are limits of the request model
  (:mod:`serving.schemas`), reported per field.
- Body deadline: the whole body must arrive within ``body_timeout`` seconds of the
  headers, or the request gets 408 naming ``body`` and the connection is closed (a
  client that stalls mid-body must not keep it). The body is read here, under one
  timer, and handed on to BentoML; its own whole-request timeout (504) is longer.
  The headers' deadline is the connection's (:mod:`serving.connections`).
- Validation errors: BentoML answers every pydantic error with 400. A body that
  is valid JSON but breaks the schema becomes 422 (Unprocessable Content, what
  FastAPI and most JSON APIs answer), with BentoML's body naming each field; a
  body that is not JSON at all stays 400.
- Media type: only JSON bodies are accepted (415 naming ``Content-Type``);
  BentoML would otherwise try its multipart/pickle decoders and answer a
  malformed multipart header with a 500.
- Outcomes: every ``/score`` answer, including those of the authentication
  middleware inside this one, is counted by outcome (``segscore_score_requests_total``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from infra.settings import get_settings
from serving.collector import EVENTS_PATH

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCORE_PATH = "/score"
_OUTCOME_BY_STATUS = {
    200: "ok",
    400: "invalid",
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    415: "invalid",
    422: "invalid",
    503: "store_unavailable",
}


def outcome_of(status: int) -> str:
    """The ``outcome`` label of a /score answer with this HTTP status."""
    return _OUTCOME_BY_STATUS.get(status, "error" if status >= 500 else "invalid")


async def _reply(
    send: Send,
    status: int,
    payload: dict[str, Any],
    close: bool = False,
) -> None:
    body = orjson.dumps(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        # uvicorn closes the connection after this response instead of reading
        # on: what is left of the request would be parsed as the next one.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _is_schema_error(body: bytes) -> bool:
    """BentoML's validation body for a JSON body that breaks the schema."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, list) or not detail:
        return False
    return all(
        isinstance(item, dict) and item.get("type") != "json_invalid" for item in detail
    )


class LimitsMiddleware:
    """Body size and deadline, 422 for schema errors, outcome counting on /score."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int | None = None,
        count: Callable[[str], None] | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        settings = get_settings()
        score_limit = (
            max_body_bytes if max_body_bytes is not None else settings.max_body_bytes
        )
        self.max_body_bytes = {
            SCORE_PATH: score_limit,
            EVENTS_PATH: settings.collector_max_body_bytes,
        }
        self.body_timeout = (
            body_timeout if body_timeout is not None else settings.body_timeout_seconds
        )
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Apply the limits to POST /score and /events; pass the rest through."""
        path = scope.get("path")
        limit = self.max_body_bytes.get(path) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        if path == SCORE_PATH:
            send = self._rewriting(send)
        headers = dict(scope.get("headers") or ())
        content_type = headers.get(b"content-type")
        if content_type is not None and not _is_json(content_type):
            await _reply(
                send,
                415,
                {
                    "error": "unsupported media type",
                    "detail": "Content-Type: expected application/json",
                },
            )
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > limit
            except ValueError:
                too_large = False
            if too_large:
                await self._too_large(send, limit)
                return
        if scope.get("method") == "POST":
            # Read the body (at most the limit, whether declared or chunked) under
            # one deadline before BentoML sees anything, then hand it on. A body
            # already received in full costs one timer armed and cancelled.
            try:
                async with asyncio.timeout(self.body_timeout):
                    body, complete = await self._read_limited(receive, limit)
            except TimeoutError:
                await self._timed_out(send)
                return
            if not complete:
                await self._too_large(send, limit)
                return
            receive = replay_body(body, receive)
        await self.app(scope, receive, send)

    async def _timed_out(self, send: Send) -> None:
        await _reply(
            send,
            408,
            {
                "error": "request timeout",
                "detail": f"body: not received within {self.body_timeout:g} s",
            },
            close=True,
        )

    async def _too_large(self, send: Send, limit: int) -> None:
        await _reply(
            send,
            413,
            {
                "error": "request body too large",
                "detail": f"body: at most {limit} bytes",
            },
        )

    async def _read_limited(self, receive: Receive, limit: int) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True

    def _rewriting(self, send: Send) -> Send:
        held: list[Message] = []
        count = self.count

        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                if count is not None:
                    count(outcome_of(message["status"]))
                if message["status"] == 400:
                    held.append(message)  # decided by the body that follows
                    return
                await send(message)
                return
            if held and kind == "http.response.body":
                start = held.pop()
                if _is_schema_error(message.get("body", b"")):
                    start = {**start, "status": 422}
                await send(start)
            await send(message)

        return wrapped


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read ``body`` first, then defers."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
