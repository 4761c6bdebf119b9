"""API-key authentication for the scoring service (when a key is configured).

A pure ASGI middleware: every request must carry ``X-API-Key`` equal to
``SEGSCORE_API_KEY``, or it gets a 401 with the service's error body. Probes and
metrics stay open (``/healthz``, ``/readyz``, ``/livez``, ``/metrics``): orchestrators
and Prometheus call them without credentials, and they reveal no user data.
``POST /events`` also takes ``SEGSCORE_COLLECTOR_KEY``: a write-only key a site can
embed in its pages without handing out the key that reads users' scores.
Without a configured key the middleware passes everything through.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from infra.settings import get_settings
from serving.collector import EVENTS_PATH

HEADER = "x-api-key"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/metrics"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class ApiKeyMiddleware:
    """Rejects requests without the configured API key (401), before any work."""

    def __init__(
        self, app: ASGIApp, key: str | None = None, collector_key: str | None = None
    ) -> None:
        self.app = app
        settings = get_settings()
        configured = key if key is not None else settings.api_key
        self.key = configured.encode() if configured else None
        writer = collector_key if collector_key is not None else settings.collector_key
        # With only a collector key, /events needs it and the rest stays open.
        self.keys = [self.key] if self.key else []
        self.keys_by_path = {
            EVENTS_PATH: [k for k in (self.key, writer and writer.encode()) if k]
        }

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        """Pass authorised (or open) requests on; answer the rest with 401."""
        path = scope.get("path")
        keys = self.keys_by_path.get(path, self.keys)
        if not keys or scope["type"] != "http" or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        supplied = dict(scope.get("headers") or ()).get(HEADER.encode())
        # compare_digest: the time taken must not reveal how much of a guess matched.
        if supplied is not None and any(
            secrets.compare_digest(supplied, k) for k in keys
        ):
            await self.app(scope, receive, send)
            return
        reason = "missing" if supplied is None else "wrong"
        body = orjson.dumps(
            {"error": "unauthorized", "detail": f"X-API-Key: {reason} API key"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'ApiKey header="X-API-Key"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
