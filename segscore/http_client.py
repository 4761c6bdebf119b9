"""HTTP to the scoring service: httpx calls for a few requests, raw sockets for load.

``segscore score`` and the checks around a benchmark send a handful of requests
and want a plain :class:`httpx.Response` (:func:`post_score`,
:func:`server_error_count`). Load generators (``segscore bench serve``,
``scripts/robustness.py soak``) send thousands a second from one process, where
httpx's own cost per request would be measured instead of the server's: they build
each request once as bytes (:func:`build_request`) and speak HTTP/1.1 over
keep-alive sockets (:class:`SyncConnection`, :func:`open_async`,
:func:`async_request`), a few tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

LOOPBACK = "127.0.0.1"
SCORE_PATH = "/score"


def score_body(
    user_ids: Sequence[str], explain: bool = True, top_k: int = 5
) -> dict[str, Any]:
    """The JSON body of a /score request."""
    return {"user_ids": list(user_ids), "explain": explain, "top_k": top_k}


def post_score(
    url: str,
    user_ids: Sequence[str],
    *,
    top_k: int = 5,
    explain: bool = True,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """POST /score to the service at ``url``; the answer, whatever its status.

    Args:
        url: The service's base URL, e.g. ``http://127.0.0.1:3000``.
        user_ids: Users to score.
        top_k: Explanation entries per user.
        explain: Ask for explanations.
        api_key: Sent as ``X-API-Key`` when given.
        timeout: Seconds for the whole request.

    Raises:
        httpx.HTTPError: The service could not be reached or did not answer.
    """
    return httpx.post(
        f"{url}{SCORE_PATH}",
        json=score_body(user_ids, explain, top_k),
        headers={"X-API-Key": api_key} if api_key else None,
        timeout=timeout,
    )


def server_error_count(url: str) -> float:
    """5xx answers the service has counted (BentoML's per-status series)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_request_total") and (
            'http_response_code="5' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------- raw HTTP/1.1


def build_request(port: int, path: str, payload: Any, host: str = LOOPBACK) -> bytes:
    """A complete keep-alive HTTP/1.1 POST with a JSON body."""
    body = orjson.dumps(payload)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """Status, Content-Length (or None) and whether the body is chunked."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return status, length, chunked


class SyncConnection:
    """One blocking keep-alive connection: send bytes, read one whole response."""

    def __init__(self, port: int, host: str = LOOPBACK) -> None:
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(262_144)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def _take_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        out, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return out

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request, return (status, body)."""
        self.sock.sendall(raw)
        status, length, chunked = _parse_head(self._take_until(b"\r\n\r\n"))
        if chunked:
            parts = []
            while size := int(self._take_until(b"\r\n").split(b";")[0], 16):
                parts.append(self._take(size))
                self._take(2)
            self._take_until(b"\r\n")
            return status, b"".join(parts)
        return status, self._take(length or 0)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


async def open_async(
    port: int, host: str = LOOPBACK
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio keep-alive connection with Nagle off (small requests go at once)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    return reader, writer


async def async_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> int:
    """Send one pre-built request, read its whole response; returns the status."""
    writer.write(raw)
    status, length, chunked = _parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    if chunked:
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(length or 0)
    return status
