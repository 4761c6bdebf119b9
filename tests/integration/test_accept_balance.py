"""Keep-alive connections end up spread evenly over the service's two workers.

Counted from outside: the established TCP connections each ``bentoml serve``
worker process holds on the service's port (psutil), after clients that opened
their connections one after another, and all at once.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from tests.support.live_service import LiveService, running_service

CLIENTS = 8


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    env = {"SEGSCORE_SERVE_WORKERS": "2"}
    with running_service(tmp_path_factory.mktemp("segscore-home"), env) as service:
        _wait_for_both_workers(service)
        yield service


def _wait_for_both_workers(live: LiveService, timeout: float = 60.0) -> None:
    """Until each worker has answered a request (the service is ready when one is).

    A worker still loading its models accepts nothing, so the other takes every
    connection meanwhile, as it should.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conns = _clients(live, 0.01, count=2)
        try:
            if len(_held(live)) == 2:
                return
        finally:
            for conn in conns:
                conn.close()
        time.sleep(0.5)
    pytest.fail("the second worker never served")


def _held(live: LiveService) -> list[int]:
    """Established connections on the service's port, per worker process."""
    port = urlparse(live.url).port
    workers = psutil.Process(live.server_pid).children(recursive=True)
    counts = [
        sum(
            1
            for c in worker.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
        for worker in workers
    ]
    return sorted(n for n in counts if n) if sum(counts) else counts


def _clients(
    live: LiveService, spaced: float, count: int = CLIENTS
) -> list[http.client.HTTPConnection]:
    url = urlparse(live.url)
    assert url.hostname is not None and url.port is not None
    conns = []
    for _ in range(count):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.connect()
        conns.append(conn)
        time.sleep(spaced)
    for conn in conns:  # each answered: accepted and served, kept alive
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    return conns


@pytest.mark.parametrize("spaced", [0.01, 0.0], ids=["one-by-one", "burst"])
def test_connections_are_spread_over_the_workers(
    live: LiveService, spaced: float
) -> None:
    conns = _clients(live, spaced)
    try:
        held = _held(live)
        assert sum(held) == CLIENTS, held
        if spaced:
            assert held == [CLIENTS // 2, CLIENTS // 2], held
        else:
            # All at once, each accept is still a race: a sibling that does not
            # get to its accept within the grace time (a loaded machine) leaves
            # the connection to the other. Unbalanced, this saw 8/0 and 1/7.
            assert len(held) == 2 and max(held) <= CLIENTS // 2 + 1, held
    finally:
        for conn in conns:
            conn.close()
    # Closed connections leave the counts, so the next clients balance afresh.
    deadline = time.monotonic() + 5
    while sum(_held(live)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(_held(live)) == 0


def test_the_workers_share_their_counts_in_the_run_directory(
    live: LiveService,
) -> None:
    run = Path(live.settings.home) / "run"
    assert [p.name for p in run.glob("accept-*.slots")] == [
        f"accept-{live.server_pid}.slots"
    ]
