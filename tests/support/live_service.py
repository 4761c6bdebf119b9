"""The scoring service started for real, for the tests that talk to it over HTTP.

:func:`running_service` starts ``bentoml serve`` as a subprocess on a private
redis-server, a Feast registry with the repo applied, tiny models in the BentoML
store of a temporary home and one known user's features pushed online.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pandas as pd
import pytest
import redis

from core.events import Event
from core.feature_catalog import HISTORY_FEATURES
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, save_states
from core.user_state import UserState, apply_event
from feature_repo.apply import apply_repo
from infra.local_stack import Service, Stack, free_port, start_redis, stop_pid
from infra.settings import PROJECT_ROOT, Settings, get_settings
from tests.support.model_bundles import save_tiny_models

API_KEY = "test-key-0123456789"
KNOWN_USER = "known-user-1"
TWO_HOURS = 2 * 3600.0
THREE_DAYS = 3 * 86_400.0
SERVER_START_TIMEOUT = 90.0


@dataclass
class LiveService:
    """What the tests talk to, and what they may stop and restart."""

    url: str
    settings: Settings
    redis: Service
    redis_port: int
    model_tags: tuple[str, str]
    log: Path
    server_pid: int = 0


def push_known_user(settings: Settings, redis_url: str) -> None:
    """Store :data:`KNOWN_USER`'s state and history row in the online store.

    The newest of its events (four cart adds) is two hours old, its one purchase
    three days old.
    """
    store = feature_store(settings, redis_url)
    now = pd.Timestamp.now(tz="UTC")
    # Real events folded into real state: the service derives every window from
    # the pushed state blob at request time.
    state = UserState()
    last = now.timestamp() - TWO_HOURS
    history_events = [
        ("purchase", now.timestamp() - THREE_DAYS),
        *(("add_to_cart", last - 60 * i) for i in (3, 2, 1, 0)),
    ]
    for i, (etype, ts) in enumerate(history_events):
        event = Event(
            event_id=f"known-{i}",
            user_id=KNOWN_USER,
            event_type=etype,
            ts=ts * 1000,
            revenue=10.0 if etype == "purchase" else None,
        )
        apply_event(state, event, lateness_seconds=600)
    client = redis.Redis.from_url(redis_url)
    save_states(client, StateLayout.of(store), {KNOWN_USER: state})
    client.close()
    history = {spec.name: 2.0 for spec in HISTORY_FEATURES}
    history["first_seen_ts"] = now.timestamp() - 30 * 86_400.0
    store.write_to_online_store(
        "user_history_features",
        pd.DataFrame([{"user_id": KNOWN_USER, "event_timestamp": now, **history}]),
    )


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited ({proc.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"service not ready within {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _stop_group(proc: subprocess.Popen) -> None:
    # bentoml serve runs an arbiter with worker children; they share the process
    # group we created for it, so signal that group only.
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextmanager
def running_service(
    home: Path, extra_env: dict[str, str] | None = None
) -> Iterator[LiveService]:
    """``bentoml serve`` on a private Redis and model store in ``home``.

    ``extra_env`` (``SEGSCORE_*`` settings) is set for the service and the test.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGSCORE_HOME", str(home))
        mp.setenv("BENTOML_HOME", str(home / "bentoml"))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        # Every test here runs with authentication on; the client sends the key.
        mp.setenv("SEGSCORE_API_KEY", API_KEY)
        # Promotions are polled for; quickly here so the reload tests are short.
        mp.setenv("SEGSCORE_MODEL_POLL_SECONDS", "0.2")
        mp.delenv("SEGSCORE_SEGMENTER_VERSION", raising=False)
        mp.delenv("SEGSCORE_PROPENSITY_VERSION", raising=False)
        mp.delenv("SEGSCORE_SERVE_WORKERS", raising=False)
        # The stack file written below must be what the service uses.
        mp.delenv("SEGSCORE_REDIS_URL", raising=False)
        mp.delenv("SEGSCORE_KAFKA_BROKER", raising=False)
        for name, value in (extra_env or {}).items():
            mp.setenv(name, value)
        settings = get_settings()

        redis = start_redis(home)
        proc: subprocess.Popen | None = None
        service: LiveService | None = None
        try:
            Stack(redis.address, "127.0.0.1:1", [redis]).save(settings.stack_file)
            apply_repo(feature_store(settings, redis.address))
            tags = save_tiny_models(settings)
            push_known_user(settings, redis.address)

            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = home / "logs" / "bentoml.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            bentoml_cli = Path(sys.executable).with_name("bentoml")
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        str(bentoml_cli),
                        "serve",
                        "serving.service:ScoringService",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    cwd=PROJECT_ROOT,
                    env=dict(os.environ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            _wait_ready(url, proc, log, SERVER_START_TIMEOUT)
            redis_port = urlparse(redis.address).port
            assert redis_port is not None
            service = LiveService(
                url, settings, redis, redis_port, tags, log, server_pid=proc.pid
            )
            yield service
        finally:
            if proc is not None:
                _stop_group(proc)
            # A test may have replaced the first redis-server with a new one.
            stop_pid(service.redis.pid if service else redis.pid)
