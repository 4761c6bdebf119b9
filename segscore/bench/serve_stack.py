"""The live stack ``segscore bench serve`` measures against, also used by the soak run.

A private redis-server, simulated shoppers, the training run of ``segscore train``
(models and online seeding), the BentoML scoring service and, beside it, Feast's
own feature server over the same Redis and registry, asked for what /score derives
before its models run. :func:`scoring_stack` starts them all and stops them on
exit, in a home made by :func:`serve_bench_environment`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
from rich.console import Console

from core.names import LIVE_VIEW
from infra.processes import spawn_logged
from segscore.bench.harness import (
    BenchError,
    bench_environment,
    child_pids,
    log_tail,
)
from segscore.http_client import LOOPBACK, post_score

SERVER_START_TIMEOUT = 120.0


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
        str(feast_cli), "-c", str(repo), "serve", "-h", LOOPBACK, "-p", str(port),
        "--no-access-log",
        # Its default recycles the worker every ~1000 requests, which would put
        # restarts into its p99; a fair peer runs undisturbed.
        "--max-requests", "100000000",
    ]  # fmt: skip
    return spawn_logged(cmd, home / "logs" / "feast-serve.log", process_env(settings))


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """:func:`infra.processes.wait_ready`, failing as a bench error with the log."""
    from infra.processes import wait_ready

    try:
        wait_ready(url, proc, timeout)
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(f"{exc}:\n{log_tail(log)}") from None


def service_workers(pid: int) -> list[int]:
    """Pids of the BentoML worker processes under the ``bentoml serve`` arbiter."""
    return child_pids(pid, "_bentoml_impl.worker.service")


def wait_workers_started(
    server: subprocess.Popen, workers: int, log: Path, timeout: float
) -> None:
    """Until the ``bentoml serve`` tree is ``workers`` workers and nothing else.

    /readyz answers as soon as one worker listens; the others may still be
    starting, importing and resolving their read plan in a child process. A
    measurement begun then would share the cores with their start-up, see
    connections accepted by the one worker up, and count the start-up's children
    in the service's memory. Settled: the tree held exactly ``workers`` workers
    and no other process in two polls 0.5 s apart.
    """
    deadline = time.monotonic() + timeout
    settled = 0
    while settled < 2:
        if server.poll() is not None:
            raise BenchError(f"the scoring service exited:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"the scoring service's {workers} workers were not all up "
                f"after {timeout:.0f}s:\n{log_tail(log)}"
            )
        try:
            tree = psutil.Process(server.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        up = service_workers(server.pid)
        settled = settled + 1 if len(up) == workers == len(tree) else 0
        time.sleep(0.5)


def check_same_features(
    port: int, feast_port: int, user: str, features: list[str]
) -> None:
    """Both servers answer for ``user``; Feast's values are the ones /score used."""
    ours = post_score(f"http://{LOOPBACK}:{port}", [user], top_k=50)
    theirs = httpx.post(
        f"http://{LOOPBACK}:{feast_port}/get-online-features",
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
        return f"http://{LOOPBACK}:{self.port}"


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
            wait_http(
                f"http://{LOOPBACK}:{port}/readyz",
                server,
                home / "logs" / f"server-{port}.log",
                SERVER_START_TIMEOUT,
            )
            wait_workers_started(
                server,
                serve_workers,
                home / "logs" / f"server-{port}.log",
                SERVER_START_TIMEOUT,
            )
            if feast is not None:
                wait_http(
                    f"http://{LOOPBACK}:{feast_port}/health",
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
