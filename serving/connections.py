"""Connection guards of each worker's HTTP server: a header deadline and a cap.

BentoML 1.4 runs every worker as ``uvicorn.Server(uvicorn.Config(app, ...))`` with
uvicorn's default protocol (``http="auto"``: httptools), and offers no way to pass
other uvicorn options. That protocol has no deadline for a request's headers: a new
connection has no timer at all until its first response, and the keep-alive timer
is cancelled by the first byte of the next request. A client that opens connections
and sends half a request line holds a file descriptor each, forever (3,000 such
connections left 2,371 open files in one worker). uvicorn's ``limit_concurrency``
is not reachable through BentoML and only answers once headers are complete, and
BentoML's ``traffic.max_concurrency`` counts requests, not connections.

:class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol plus:

- a header deadline: from the moment a connection opens (or the first byte of a
  following request on a keep-alive connection) to the end of the headers. On
  expiry the connection gets a 408 naming ``headers`` and is closed; a response
  still in flight on that connection is finished first.
- a connection cap per worker: a connection beyond ``max_connections`` gets a 503
  and is closed at once, before anything is read, so descriptors stay bounded.
- its open connections published to the other workers, which accept new ones
  so that each worker holds its share (:mod:`serving.accept_balance`).

The per-request cost is one timer armed and cancelled. :func:`install` points
uvicorn's ``auto`` protocol at this class; it must run in the worker before the
server starts, which importing the service module does (BentoML imports the
service, then builds the uvicorn config).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn.config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import accept_balance
from serving.metric_paths import templated

HEADER_TIMEOUT = "header_timeout"
OVER_CAPACITY = "over_capacity"
PROTOCOL = f"{__name__}:GuardedHttpToolsProtocol"


def canned_response(status: bytes, payload: dict[str, str], *extra: bytes) -> bytes:
    """A complete HTTP/1.1 answer with a JSON body that closes the connection."""
    body = orjson.dumps(payload)
    head = [
        b"HTTP/1.1 " + status,
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap.

    The limits are class attributes set by :func:`install` (uvicorn builds one
    instance per connection and passes it no options of ours).
    """

    header_timeout: float = 10.0
    max_connections: int = 512
    on_close: Callable[[str], None] | None = None
    timed_out_response: bytes = b""
    over_capacity_response: bytes = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        # The outermost layer, before BentoML's metrics: see serving.metric_paths.
        self.app = templated(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse a connection beyond the cap; otherwise start the header clock."""
        if len(self.connections) >= self.max_connections:
            # Not registered, never read: close() stops reading at once (asyncio
            # and uvloop alike) after flushing the 503.
            self.transport = transport
            transport.write(self.over_capacity_response)
            transport.close()
            self._closed_for(OVER_CAPACITY)
            return
        super().connection_made(transport)
        accept_balance.connections_changed(len(self.connections))
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the header timer with the connection."""
        self._disarm()
        super().connection_lost(exc)
        accept_balance.connections_changed(len(self.connections))

    def on_message_begin(self) -> None:
        """A following request on a keep-alive connection gets its own deadline."""
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        """Headers are in: the body deadline is the application's (408 ``body``)."""
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.header_timeout, self._headers_timed_out
            )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self._closed_for(HEADER_TIMEOUT)
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is still being answered: finish it, then close
            # (what uvicorn does on shutdown); writing a 408 now would corrupt it.
            self.cycle.keep_alive = False
            return
        self.transport.write(self.timed_out_response)
        self.transport.close()

    def _closed_for(self, reason: str) -> None:
        if self.on_close is not None:
            self.on_close(reason)


def install(
    header_timeout: float,
    max_connections: int,
    on_close: Callable[[str], None] | None = None,
    balance_in: Path | None = None,
) -> None:
    """Make the guarded protocol uvicorn's ``auto`` HTTP protocol in this process.

    ``on_close(reason)`` is told of every connection the guards close
    (``header_timeout``, ``over_capacity``). With ``balance_in`` (a directory for
    the workers' shared file), a ``bentoml serve`` worker balances its accepts
    with its siblings' (:mod:`serving.accept_balance`).
    """
    protocol = GuardedHttpToolsProtocol
    protocol.header_timeout = header_timeout
    protocol.max_connections = max_connections
    protocol.on_close = staticmethod(on_close) if on_close else None  # type: ignore[assignment]
    protocol.timed_out_response = canned_response(
        b"408 Request Timeout",
        {
            "error": "request timeout",
            "detail": f"headers: not received within {header_timeout:g} s",
        },
    )
    protocol.over_capacity_response = canned_response(
        b"503 Service Unavailable",
        {
            "error": "too many connections",
            "detail": f"at most {max_connections} connections per worker",
        },
        b"retry-after: 1",
    )
    uvicorn.config.HTTP_PROTOCOLS["auto"] = PROTOCOL
    if balance_in is not None:
        # BentoML sets the worker's index before it imports the service module,
        # which calls this; the parent has none and is left alone.
        from bentoml._internal.context import server_context

        accept_balance.install(server_context.worker_index, balance_in)
