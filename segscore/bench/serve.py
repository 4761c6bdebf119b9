"""``segscore bench serve``: the scoring API over loopback HTTP, beside ``feast serve``.

Everything runs in a fresh temporary ``SEGSCORE_HOME``: a private redis-server,
``segscore simulate``'s shoppers, the training run of ``segscore train`` (backfill,
both models, online seeding), then two servers on loopback:

- the BentoML scoring service (:func:`infra.processes.start_server`), and
- Feast's own feature server, ``feast -c DIR serve`` over a feature_store.yaml for
  the same Redis and registry, asked for the same features of the same users: the
  on-demand view ``user_live_features`` (every stream feature derived from the
  state blob at read time, as /score derives them) plus the history features the
  models use. That is the work /score does before its models run, done by the
  stock server.

The load comes from a separate client *process* (so its CPU time is not the
server's GIL time) speaking raw HTTP/1.1 over keep-alive sockets with pre-built
requests, which costs a few tens of microseconds per request. Phases:

1. single: one random known user per request, explain on, top_k 5, sequential;
   interleaved request by request with the same request to ``feast serve``, so
   both see the same machine load. p50/p99 of both, and the ratio of the p99s.
2. concurrent: 16 connections, each sending the next single-user explained
   request as soon as the previous answer arrives, for ``duration`` seconds:
   explained scores per second.
3. batch explain: 100 random users per request, explain on, sequential: p50/p99.
4. batch throughput: 100 users per request, explain off, a few connections for
   ``duration`` seconds: user scores per second.

Any non-200 answer fails the run. ``--profile`` records the service's worker
processes with py-spy across the phases and prints where their time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from segscore.bench.stream import (
    BenchError,
    bench_environment,
    machine_info,
    print_profile,
    start_profiler,
    stop_profiler,
    summarize_profile,
)

HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 120.0

# Issue 5's targets, printed next to the numbers.
TARGETS: dict[str, tuple[str, float]] = {
    "single_p50_ms": ("<=", 2.5),
    "single_p99_ms": ("<=", 5.0),
    "ratio_p99_vs_feast": ("<=", 1.0),
    "concurrent_explained_per_s": (">=", 800.0),
    "batch100_explained_p99_ms": ("<=", 60.0),
    "batch100_unexplained_scores_per_s": (">=", 20_000.0),
}


@dataclass(frozen=True)
class ServeBenchConfig:
    """What to run."""

    users: int = 1000
    days: float = 28.0
    seed: int = 7
    single_requests: int = 2000
    concurrency: int = 16
    duration: float = 10.0
    batch_size: int = 100
    batch_requests: int = 200
    batch_concurrency: int = 8
    serve_workers: int = 2
    warmup_requests: int = 200
    profile: Path | None = None
    keep_home: bool = False


# ------------------------------------------------------------------ raw HTTP client


def build_request(port: int, path: str, payload: Any) -> bytes:
    """A complete keep-alive HTTP/1.1 POST with a JSON body."""
    body = orjson.dumps(payload)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
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

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=30)
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


async def _async_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> int:
    writer.write(raw)
    status, length, chunked = _parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    if chunked:
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(length or 0)
    return status


async def _closed_loop(
    port: int, requests: Sequence[bytes], connections: int, seconds: float
) -> dict[str, Any]:
    """``connections`` clients, each sending its next request on every answer."""
    opened = []
    for _ in range(connections):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        opened.append((reader, writer))
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
            status = await _async_request(reader, writer, requests[i % len(requests)])
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


def _percentiles_ms(latencies: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(latencies) * 1000.0, [50, 99])
    return round(float(p50), 3), round(float(p99), 3)


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
        body = {"user_ids": ids, "explain": explain, "top_k": 5}
        return build_request(ours, "/score", body)

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
        result["batch_explained"] = _sequential(mine, [score(b) for b in batches])
    finally:
        mine.close()
        theirs.close()

    concurrent_requests = [score([u]) for u in picks]
    result["concurrent"] = asyncio.run(
        _closed_loop(ours, concurrent_requests, plan["concurrency"], plan["duration"])
    )
    unexplained = [score(b, explain=False) for b in batches]
    result["batch_unexplained"] = asyncio.run(
        _closed_loop(ours, unexplained, plan["batch_concurrency"], plan["duration"])
    )
    return result


# ------------------------------------------------------------------------ the run


@contextlib.contextmanager
def serve_bench_environment(keep: bool) -> Iterator[Path]:
    """A temp SEGSCORE_HOME (and BentoML home) with no external Redis; restored."""
    with bench_environment(
        keep,
        "segscore-bench-serve-",
        cleared=(
            "BENTOML_HOME",
            "SEGSCORE_REDIS_URL",
            "SEGSCORE_KAFKA_BROKER",
            "SEGSCORE_API_KEY",
            "SEGSCORE_SERVE_WORKERS",
            "SEGSCORE_SEGMENTER_VERSION",
            "SEGSCORE_PROPENSITY_VERSION",
        ),
        # Interrupted too: the server logs tell what went wrong.
        keep_logs_on=BaseException,
    ) as home:
        os.environ["BENTOML_HOME"] = str(home / "bentoml")
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        yield home


def model_size(booster: Any) -> tuple[int, int]:
    """Trees and total leaves of a LightGBM booster."""
    dumped = booster.dump_model()
    return booster.num_trees(), sum(t["num_leaves"] for t in dumped["tree_info"])


def feast_features() -> list[str]:
    """What ``feast serve`` is asked for: what /score derives before its models.

    Every stream feature of the on-demand view (derived from the state blob at
    read time, as /score derives them) and the history features the models use.
    """
    from core.feature_catalog import (
        HISTORY_FEATURES,
        PROPENSITY_FEATURES,
        SEGMENTATION_FEATURES,
        STREAM_FEATURES,
        stored_features,
    )
    from feature_repo.live_features import LIVE_VIEW

    history = {spec.name for spec in HISTORY_FEATURES}
    used = stored_features(tuple(SEGMENTATION_FEATURES) + tuple(PROPENSITY_FEATURES))
    # Both groups from the on-demand view: /score derives history from the state too.
    return [f"{LIVE_VIEW}:{spec.name}" for spec in STREAM_FEATURES] + [
        f"{LIVE_VIEW}:{name}" for name in used if name in history
    ]


def start_feast_server(
    settings: Any, redis_url: str, port: int, home: Path
) -> subprocess.Popen:
    """``feast -c DIR serve`` for the same Redis and registry (log in home/logs)."""
    from core.store.feast_config import write_feature_store_yaml
    from infra.processes import process_env

    repo = home / "feast"
    repo.mkdir(parents=True, exist_ok=True)
    write_feature_store_yaml(settings, redis_url, repo / "feature_store.yaml")
    feast_cli = Path(sys.executable).with_name("feast")
    cmd = [
        str(feast_cli), "-c", str(repo), "serve", "-h", HOST, "-p", str(port),
        "--no-access-log",
        # Its default recycles the worker every ~1000 requests, which would put
        # restarts into its p99; a fair peer runs undisturbed.
        "--max-requests", "100000000",
    ]  # fmt: skip
    log = home / "logs" / "feast-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            env=process_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """:func:`infra.processes.wait_ready`, failing as a bench error with the log."""
    from infra.processes import wait_ready

    try:
        wait_ready(url, proc, timeout)
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(f"{exc}:\n{_tail(log)}") from None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _service_workers(pid: int) -> list[int]:
    """Pids of the BentoML worker processes under the ``bentoml serve`` arbiter."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
                found.append(child.pid)
    return found


def _check_same_features(
    port: int, feast_port: int, user: str, features: list[str]
) -> None:
    """Both servers answer for ``user``; Feast's values are the ones /score used."""
    import httpx

    ours = httpx.post(
        f"http://{HOST}:{port}/score",
        json={"user_ids": [user], "explain": True, "top_k": 50},
        timeout=10,
    )
    theirs = httpx.post(
        f"http://{HOST}:{feast_port}/get-online-features",
        json={"features": features, "entities": {"user_id": [user]}},
        timeout=10,
    )
    if ours.status_code != 200 or theirs.status_code != 200:
        raise BenchError(
            f"sanity request failed: /score {ours.status_code} {ours.text[:200]}; "
            f"feast {theirs.status_code} {theirs.text[:200]}"
        )
    body = theirs.json()
    names = body["metadata"]["feature_names"]
    values = {
        name: result["values"][0]
        for name, result in zip(names, body["results"], strict=True)
    }
    ours_values = {
        c["feature"]: c["value"] for c in ours.json()["scores"][0]["explanation"]
    }
    # History features are stored values: equal on both sides. (Windows depend
    # on the instant of each read, so they are not compared here.)
    for name in ("orders_90d", "revenue_90d", "avg_order_value_90d"):
        if (
            name in ours_values
            and name in values
            and not np.isclose(float(values[name]), ours_values[name])
        ):
            raise BenchError(
                f"{name}: feast serve {values[name]} but /score used "
                f"{ours_values[name]} for {user}"
            )
    missing = [n for n in names if values.get(n) is None]
    if len(missing) == len(names):
        raise BenchError(f"feast serve returned no values for {user}")


def run_serve_bench(config: ServeBenchConfig, console: Console) -> dict[str, Any]:
    """Run every phase on a private stack; returns the flat result."""
    from segscore.bench.stream import _sigterm_as_interrupt

    with _sigterm_as_interrupt(), serve_bench_environment(config.keep_home) as home:
        return _run(config, console, home)


@dataclass
class LiveStack:
    """A private Redis, trained models, and both servers on loopback."""

    home: Path
    port: int
    feast_port: int
    users: list[str]
    trees: int
    leaves: int
    events: int
    propensity_auc: float | None
    server: subprocess.Popen
    feast: subprocess.Popen | None

    @property
    def url(self) -> str:
        """The scoring service's base URL."""
        return f"http://{HOST}:{self.port}"


@contextlib.contextmanager
def scoring_stack(
    home: Path,
    console: Console,
    users: int = 1000,
    days: float = 28.0,
    seed: int = 7,
    serve_workers: int = 2,
    with_feast: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Iterator[LiveStack]:
    """Everything ``segscore bench serve`` measures against, started in ``home``.

    A private redis-server, ``users`` simulated shoppers over ``days``, the
    training run of ``segscore train`` (models + online seeding), the scoring
    service and (``with_feast``) ``feast serve``; all stopped on exit. The
    environment must already point ``SEGSCORE_HOME``/``BENTOML_HOME`` at
    ``home`` (see :func:`serve_bench_environment`).
    """
    from core.event_files import write_events
    from core.registry import load_propensity
    from infra import local_stack, processes
    from infra.settings import get_settings
    from segscore.simulator import simulate
    from training.workflow import run_training

    settings = get_settings()
    redis_service = server = feast = None
    try:
        redis_service = local_stack.start_redis(home)
        # No broker: nothing here streams. The stack file tells every process
        # (training, both servers) where Redis is.
        local_stack.Stack(redis_service.address, "127.0.0.1:1", [redis_service]).save(
            settings.stack_file
        )

        end = time.time() - 120
        with console.status(f"simulating {days:g} days of {users} shoppers"):
            sim = simulate(users, end - days * 86_400, end, seed=seed)
            events_path = settings.data_dir / "events.parquet"
            write_events(sim.events, events_path)
            events_path.with_suffix(".personas.json").write_bytes(
                orjson.dumps(sim.personas)
            )
        summary = run_training(settings, events_path, seed_online=True, console=console)
        trees, leaves = model_size(load_propensity(settings).booster)
        console.print(
            f"trained on {len(sim.events):,} events: {trees} trees, {leaves} leaves; "
            f"{summary.get('seeded_users', 0)} users seeded online"
        )

        port = local_stack.free_port()
        server = processes.start_server(
            settings,
            port,
            extra_env={
                "SEGSCORE_SERVE_WORKERS": str(serve_workers),
                **(extra_env or {}),
            },
        )
        feast_port = 0
        if with_feast:
            feast_port = local_stack.free_port()
            feast = start_feast_server(
                settings, redis_service.address, feast_port, home
            )
        with console.status("starting the scoring service and feast serve"):
            _wait_http(
                f"http://{HOST}:{port}/readyz",
                server,
                home / "logs" / f"server-{port}.log",
                SERVER_START_TIMEOUT,
            )
            if feast is not None:
                _wait_http(
                    f"http://{HOST}:{feast_port}/health",
                    feast,
                    home / "logs" / "feast-serve.log",
                    SERVER_START_TIMEOUT,
                )
        yield LiveStack(
            home=home,
            port=port,
            feast_port=feast_port,
            users=sorted(sim.personas),
            trees=trees,
            leaves=leaves,
            events=len(sim.events),
            propensity_auc=summary.get("propensity_auc"),
            server=server,
            feast=feast,
        )
    finally:
        for proc in (server, feast):
            if proc is not None:
                processes.stop(proc)
        if redis_service is not None:
            local_stack.stop_pid(redis_service.pid)


def _run(config: ServeBenchConfig, console: Console, home: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "users": config.users,
        "days": config.days,
        "serve_workers": config.serve_workers,
        "concurrency": config.concurrency,
        "batch_size": config.batch_size,
        "batch_concurrency": config.batch_concurrency,
        "cpu_count": os.cpu_count(),
        "machine": machine_info(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    console.print(f"bench home {home}")
    profiler = client = None
    try:
        with scoring_stack(
            home,
            console,
            users=config.users,
            days=config.days,
            seed=config.seed,
            serve_workers=config.serve_workers,
        ) as stack:
            result["propensity_auc"] = stack.propensity_auc
            result["trees"], result["leaves"] = stack.trees, stack.leaves
            features = feast_features()
            _check_same_features(stack.port, stack.feast_port, stack.users[0], features)
            result["feast_features"] = len(features)

            if config.profile is not None:
                workers = _service_workers(stack.server.pid)
                if not workers:
                    raise BenchError("no BentoML worker process found to profile")
                # The first worker stands for all: they run the same code.
                profiler = start_profiler(
                    workers[0], config.profile, home / "logs" / "py-spy.log"
                )

            plan = {
                "port": stack.port,
                "feast_port": stack.feast_port,
                "seed": config.seed,
                "users": stack.users,
                "feast_features": features,
                "single_requests": config.single_requests,
                "warmup": config.warmup_requests,
                "concurrency": config.concurrency,
                "duration": config.duration,
                "batch_size": config.batch_size,
                "batch_requests": config.batch_requests,
                "batch_concurrency": config.batch_concurrency,
            }
            result["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
            ctx = mp.get_context("spawn")
            outbox = ctx.Queue()
            client = ctx.Process(target=run_client, args=(plan, outbox), daemon=True)
            client.start()
            budget = 300 + 2 * config.duration + config.single_requests * 0.05
            with console.status("measuring (client process running every phase)"):
                reply = _get(outbox, client, budget)
            client.join(timeout=10)
            result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            if not reply["ok"]:
                raise BenchError(f"client failed: {reply['error']}")
            result.update(summarize(reply["result"], config))
            if profiler is not None:
                stop_profiler(profiler)
                profiler = None
                samples, own, inclusive = summarize_profile(config.profile, top=20)
                result["profile"] = str(config.profile)
                result["profile_samples"] = samples
                result["profile_top_self"] = ", ".join(
                    f"{f} {p:.1f}%" for f, p in own[:8]
                )
                print_profile(console, samples, own, inclusive, "service worker")
            for name, proc in (
                ("scoring service", stack.server),
                ("feast", stack.feast),
            ):
                if proc is not None and proc.poll() is not None:
                    raise BenchError(f"{name} died during the run")
            return result
    except BenchError:
        console.print(f"logs kept in {home / 'logs'}")
        raise
    finally:
        if client is not None and client.is_alive():
            client.terminate()
            client.join(timeout=5)
        if profiler is not None:
            stop_profiler(profiler)


def _get(box: Any, proc: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return box.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                raise BenchError("the client process died") from None
    raise BenchError(f"the client did not finish within {timeout:.0f}s")


def summarize(raw: dict[str, Any], config: ServeBenchConfig) -> dict[str, Any]:
    """The flat numbers of the client's raw latencies and counts."""
    out: dict[str, Any] = {}
    out["single_requests"] = len(raw["single"])
    out["single_p50_ms"], out["single_p99_ms"] = _percentiles_ms(raw["single"])
    out["feast_serve_p50_ms"], out["feast_serve_p99_ms"] = _percentiles_ms(raw["feast"])
    out["ratio_p99_vs_feast"] = round(
        out["single_p99_ms"] / out["feast_serve_p99_ms"], 3
    )
    concurrent = raw["concurrent"]
    if concurrent["failures"]:
        raise BenchError(
            f"concurrent phase: non-200 answers {concurrent['failures'][:5]}"
        )
    out["concurrent_requests"] = len(concurrent["latencies"])
    out["concurrent_explained_per_s"] = round(
        len(concurrent["latencies"]) / concurrent["seconds"], 1
    )
    out["concurrent_p50_ms"], out["concurrent_p99_ms"] = _percentiles_ms(
        concurrent["latencies"]
    )
    out["batch100_explained_p50_ms"], out["batch100_explained_p99_ms"] = (
        _percentiles_ms(raw["batch_explained"])
    )
    unexplained = raw["batch_unexplained"]
    if unexplained["failures"]:
        raise BenchError(f"batch phase: non-200 answers {unexplained['failures'][:5]}")
    out["batch100_unexplained_requests"] = len(unexplained["latencies"])
    out["batch100_unexplained_scores_per_s"] = round(
        len(unexplained["latencies"]) * config.batch_size / unexplained["seconds"], 1
    )
    out["batch100_unexplained_p50_ms"], out["batch100_unexplained_p99_ms"] = (
        _percentiles_ms(unexplained["latencies"])
    )
    out["meets_targets"] = all(
        _meets(out[key], op, bound) for key, (op, bound) in TARGETS.items()
    )
    return out


def _meets(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The result as a table, with each issue-5 target and whether it is met."""
    table = Table(title="segscore bench serve")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    table.add_column("target")
    for key, value in result.items():
        if key == "profile_top_self":
            continue
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            mark = "[green]ok[/]" if _meets(value, op, bound) else "[red]missed[/]"
            target = f"{op} {bound:g} {mark}"
        table.add_row(key, str(value), target)
    console.print(table)
