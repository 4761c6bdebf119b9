"""Slow, idle and loosely typed clients against the real service, over raw sockets.

The service is started by :func:`tests.support.live_service.running_service`
(real ``bentoml serve``, real Redis, API key on), with short deadlines and a small
connection cap so that each test takes seconds: a body must arrive within 1 s of
its headers, headers within 3 s of the connection opening, and a worker holds at
most 16 connections.
"""

from __future__ import annotations

import json
import os
import select
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from serving.schemas import ErrorResponse
from tests.support.live_service import (
    API_KEY,
    KNOWN_USER,
    LiveService,
    running_service,
)
from tests.support.processes import eventually, run_cli

BODY_TIMEOUT = 1.0
HEADER_TIMEOUT = 3.0
MAX_CONNECTIONS = 16
# The acceptance bound: a connection with unfinished headers is closed within this.
CLOSE_WITHIN = 30.0

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    env = {
        "SEGSCORE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "SEGSCORE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "SEGSCORE_MAX_CONNECTIONS_PER_WORKER": str(MAX_CONNECTIONS),
        "SEGSCORE_SERVE_WORKERS": "1",
    }
    with running_service(tmp_path_factory.mktemp("segscore-home"), env) as service:
        yield service


def _http(live: LiveService) -> httpx.Client:
    return httpx.Client(base_url=live.url, timeout=10.0, headers={"X-API-Key": API_KEY})


def _connect(live: LiveService) -> socket.socket:
    url = urlparse(live.url)
    assert url.hostname is not None and url.port is not None
    return socket.create_connection((url.hostname, url.port), timeout=CLOSE_WITHIN)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(
            f"the server kept the connection open for {CLOSE_WITHIN:.0f} s"
        ) from None
    finally:
        sock.close()
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response (status, body) from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def _parse(raw: bytes) -> tuple[int, ErrorResponse]:
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower(), head
    return int(head.split()[1]), ErrorResponse.model_validate_json(body)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _metrics(live: LiveService) -> str:
    with _http(live) as http:
        return http.get("/metrics").text


_TIMEOUT_OUTCOME = 'segscore_score_requests_total{outcome="timeout"}'
_HEADER_TIMEOUTS = 'segscore_http_connections_closed_total{reason="header_timeout"}'
_OVER_CAPACITY = 'segscore_http_connections_closed_total{reason="over_capacity"}'


def _score_head(extra: bytes) -> bytes:
    return (
        b"POST /score HTTP/1.1\r\nHost: segscore\r\n"
        b"Content-Type: application/json\r\n"
        b"X-API-Key: " + API_KEY.encode() + b"\r\n" + extra + b"\r\n"
    )


@pytest.mark.parametrize(
    "request_start",
    [
        # Declared length, a third of it sent, then nothing.
        _score_head(b"Content-Length: 40\r\n") + b'{"user_ids": [',
        # Chunked, one chunk, then nothing.
        _score_head(b"Transfer-Encoding: chunked\r\n") + b'5\r\n{"use\r\n',
        # Headers only: the body never starts.
        _score_head(b"Content-Length: 40\r\n"),
    ],
    ids=["content-length", "chunked", "no-body"],
)
def test_slow_body_is_a_408_naming_body_and_counted(
    live: LiveService, request_start: bytes
) -> None:
    before = _metric(_metrics(live), _TIMEOUT_OUTCOME)
    sock = _connect(live)
    sock.sendall(request_start)

    status, error = _parse(_read_until_closed(sock))

    # Not BentoML's 504 (a 5xx counted nowhere): the client's fault, a 408.
    assert status == 408
    assert error.error == "request timeout"
    assert error.detail is not None and error.detail.startswith("body")
    assert _metric(_metrics(live), _TIMEOUT_OUTCOME) - before == 1


def test_unfinished_headers_are_answered_408_and_closed(live: LiveService) -> None:
    before = _metric(_metrics(live), _HEADER_TIMEOUTS)
    half_line = _connect(live)
    half_line.sendall(b"POST /score HTT")
    half_headers = _connect(live)
    half_headers.sendall(b"POST /score HTTP/1.1\r\nHost: segscore\r\nContent-Ty")
    silent = _connect(live)  # opens and never sends a byte

    for sock in (half_line, half_headers, silent):
        status, error = _parse(_read_until_closed(sock))
        assert status == 408
        assert error.detail is not None and error.detail.startswith("headers")
    assert _metric(_metrics(live), _HEADER_TIMEOUTS) - before == 3


def test_stalled_next_request_on_a_kept_alive_connection_is_closed(
    live: LiveService,
) -> None:
    sock = _connect(live)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: segscore\r\n\r\n")
    assert _read_response(sock)[0] == 200
    # The keep-alive timer stops at the first byte of the next request; the
    # header deadline must take over from there.
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")

    status, error = _parse(_read_until_closed(sock))
    assert status == 408
    assert error.detail is not None and error.detail.startswith("headers")


def _worker_pids(live: LiveService) -> list[int]:
    children = psutil.Process(live.server_pid).children(recursive=True)
    pids = [p.pid for p in children if "_bentoml_impl.worker.service" in p.cmdline()]
    assert pids, "no BentoML worker process found"
    return pids


def _open_files(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def test_connections_beyond_the_cap_are_refused_and_descriptors_stay_bounded(
    live: LiveService,
) -> None:
    workers = _worker_pids(live)
    before = _metrics(live)
    baseline = _open_files(workers)
    count = 3 * MAX_CONNECTIONS
    socks = []
    for _ in range(count):
        sock = _connect(live)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: segscore\r\n")
        socks.append(sock)

    # Connections beyond the cap are closed at once (a 503, or a reset when the
    # request was already waiting unread); the rest wait for the header deadline.
    def refused_so_far() -> int | None:
        readable, _, _ = select.select(socks, [], [], 0)
        return len(readable) if len(readable) >= count - MAX_CONNECTIONS else None

    eventually(refused_so_far, timeout=20, what="over-capacity connections closed")
    held = _open_files(workers)
    answers = [_read_until_closed(sock) for sock in socks]

    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    refused = [a for a in answers if not a.startswith(b"HTTP/1.1 408")]
    assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in refused), refused
    assert any(a.startswith(b"HTTP/1.1 503") for a in refused)
    assert 0 < len(timed_out) <= MAX_CONNECTIONS
    assert len(refused) >= count - MAX_CONNECTIONS
    # Descriptors: at most the cap more than at rest (plus a little slack for
    # the worker's own files), however many clients try.
    assert held - baseline <= MAX_CONNECTIONS + 8, (baseline, held)

    after = _metrics(live)
    assert _metric(after, _OVER_CAPACITY) - _metric(before, _OVER_CAPACITY) == len(
        refused
    )
    # Once they are gone, normal service.
    with _http(live) as http:
        response = http.post("/score", json={"user_ids": [KNOWN_USER]})
    assert response.status_code == 200, response.text
    assert _open_files(workers) - baseline <= 8


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_ids": ["u"], "explain": "yes"}, "explain"),
        ({"user_ids": ["u"], "explain": 1}, "explain"),
        ({"user_ids": ["u"], "top_k": "5"}, "top_k"),
        ({"user_ids": ["u"], "top_k": True}, "top_k"),
        ({"user_ids": ["u"], "top_k": 5.0}, "top_k"),
        ({"user_ids": [1]}, "user_ids"),
        ({"user_ids": "u"}, "user_ids"),
    ],
)
def test_types_are_strict(live: LiveService, body: dict, field: str) -> None:
    with _http(live) as http:
        response = http.post("/score", json=body)

    assert response.status_code == 422, response.text
    assert [e["loc"][0] for e in response.json()["detail"]] == [field]


@pytest.mark.parametrize("escaped", [rb"\ud800", rb"a\udc00b", rb"\ud800\ud800"])
def test_lone_surrogate_user_id_is_a_422_naming_user_ids(
    live: LiveService, escaped: bytes
) -> None:
    with _http(live) as http:
        response = http.post(
            "/score",
            content=b'{"user_ids": ["ok", "' + escaped + b'"]}',
            headers={"Content-Type": "application/json"},
        )
        # A proper pair (an emoji) is a valid id.
        pair = http.post(
            "/score",
            content=rb'{"user_ids": ["\ud83d\ude00"]}',
            headers={"Content-Type": "application/json"},
        )

    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["user_ids", 1]]
    assert pair.status_code == 200, pair.text
    assert pair.json()["scores"][0]["user_id"] == "\U0001f600"


def test_lone_surrogate_in_an_unknown_key_is_a_422_not_a_500(
    live: LiveService,
) -> None:
    with _http(live) as http:
        response = http.post(
            "/score",
            content=rb'{"user_ids": ["u"], "\ud800": 1}',
            headers={"Content-Type": "application/json"},
        )

    # The key is echoed in the error, escaped: a raw surrogate could not be sent.
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["\\ud800"]]


def test_cli_score_sends_the_api_key(
    live: LiveService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From SEGSCORE_API_KEY (set for this service and its clients)...
    out = run_cli(live.settings, "score", KNOWN_USER, "--url", live.url)
    assert json.loads(out)["scores"][0]["user_id"] == KNOWN_USER

    monkeypatch.delenv("SEGSCORE_API_KEY")
    # ... or from --api-key.
    out = run_cli(
        live.settings, "score", KNOWN_USER, "--url", live.url, "--api-key", API_KEY
    )
    assert json.loads(out)["scores"][0]["cold_start"] is False

    for args, says in (
        ((), "pass --api-key or set SEGSCORE_API_KEY"),
        (("--api-key", "wrong"), "refused the API key"),
    ):
        with pytest.raises(AssertionError) as failed:
            run_cli(live.settings, "score", KNOWN_USER, "--url", live.url, *args)
        message = str(failed.value)
        assert "exited 1" in message and "401 unauthorized" in message
        assert says in message and "Traceback" not in message
