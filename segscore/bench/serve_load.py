"""The load client of ``segscore bench serve``: every phase, run in its own process.

A separate process, so its CPU time is not the server's GIL time. It speaks raw
HTTP/1.1 over keep-alive sockets with requests built ahead
(:mod:`segscore.http_client`) and returns the raw latencies and counts of each
phase; the parent turns them into the report (:func:`segscore.bench.serve.summarize`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from typing import Any

from segscore.bench.harness import BenchError
from segscore.http_client import (
    SCORE_PATH,
    SyncConnection,
    async_request,
    build_request,
    open_async,
    score_body,
)


async def closed_loop(
    port: int, requests: Sequence[bytes], connections: int, seconds: float
) -> dict[str, Any]:
    """``connections`` clients, each sending its next request on every answer.

    Returns:
        ``latencies`` (seconds), ``failures`` (non-200 statuses) and ``seconds``
        (the wall time of the whole loop).
    """
    opened = []
    for _ in range(connections):
        opened.append(await open_async(port))
        # The service's worker processes share one listening socket, and a worker
        # that wakes accepts every pending connection at once: opened in a burst,
        # all of them could land on one worker. Spaced out, each accept is its
        # own race, as with clients arriving over time.
        await asyncio.sleep(0.01)
    latencies: list[float] = []
    failures: list[int] = []
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        reader, writer = opened[offset]
        i = offset
        while (start := time.perf_counter()) < deadline:
            status = await async_request(reader, writer, requests[i % len(requests)])
            latencies.append(time.perf_counter() - start)
            if status != 200:
                failures.append(status)
            i += connections

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(k) for k in range(connections)))
    finally:
        for _, writer in opened:
            writer.close()
    elapsed = time.perf_counter() - started
    return {"latencies": latencies, "failures": failures, "seconds": elapsed}


def _sequential(conn: SyncConnection, requests: Sequence[bytes]) -> list[float]:
    latencies = []
    for raw in requests:
        start = time.perf_counter()
        status, body = conn.request(raw)
        latencies.append(time.perf_counter() - start)
        if status != 200:
            raise BenchError(f"answer {status}: {body[:300]!r}")
    return latencies


def run_client(plan: dict[str, Any], out: Any) -> None:
    """The load generator, in its own process: runs every phase, puts results."""
    with contextlib.suppress(ImportError):
        import uvloop  # a cheaper event loop keeps the client's CPU share small

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        out.put({"ok": True, "result": _client_phases(plan)})
    except Exception as exc:  # reported to the parent, which fails the run
        out.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _client_phases(plan: dict[str, Any]) -> dict[str, Any]:
    ours, feast = plan["port"], plan["feast_port"]
    rng = random.Random(plan["seed"])
    users: list[str] = plan["users"]
    features: list[str] = plan["feast_features"]
    n = plan["single_requests"]
    picks = [rng.choice(users) for _ in range(n + plan["warmup"])]

    def score(ids: list[str], explain: bool = True) -> bytes:
        return build_request(ours, SCORE_PATH, score_body(ids, explain, top_k=5))

    def feast_read(ids: list[str]) -> bytes:
        body = {"features": features, "entities": {"user_id": ids}}
        return build_request(feast, "/get-online-features", body)

    result: dict[str, Any] = {}
    mine, theirs = SyncConnection(ours), SyncConnection(feast)
    try:
        warm = picks[: plan["warmup"]]
        _sequential(mine, [score([u]) for u in warm])
        _sequential(theirs, [feast_read([u]) for u in warm])
        single: list[float] = []
        peer: list[float] = []
        # Interleaved: both servers see the same moments of machine load.
        for user in picks[plan["warmup"] :]:
            single += _sequential(mine, [score([user])])
            peer += _sequential(theirs, [feast_read([user])])
        result["single"] = single
        result["feast"] = peer

        size = plan["batch_size"]
        batches = [
            rng.sample(users, min(size, len(users)))
            for _ in range(plan["batch_requests"])
        ]
        _sequential(mine, [score(b) for b in batches[:10]])
    finally:
        mine.close()
        theirs.close()

    concurrent_requests = [score([u]) for u in picks]
    result["concurrent"] = asyncio.run(
        closed_loop(ours, concurrent_requests, plan["concurrency"], plan["duration"])
    )
    # Batches as a backend sends them: several in flight at once, each connection
    # sending its next as soon as its previous is answered.
    explained = [score(b) for b in batches]
    result["batch_explained"] = asyncio.run(
        closed_loop(ours, explained, plan["batch_concurrency"], plan["duration"])
    )
    unexplained = [score(b, explain=False) for b in batches]
    result["batch_unexplained"] = asyncio.run(
        closed_loop(ours, unexplained, plan["batch_concurrency"], plan["duration"])
    )
    return result
