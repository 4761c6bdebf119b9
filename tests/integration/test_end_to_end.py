"""The walking skeleton on real components: redis-server, tansu, a Faust worker
process and the BentoML server, talked to over Kafka and HTTP only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from core.store.feast_config import feature_store
from infra import local_stack, processes
from infra.settings import PROJECT_ROOT, Settings
from segscore.producer import produce_events, produce_raw, read_topic
from segscore.simulator import live_session
from tests.support.processes import eventually, feature_repo_yaml, run_cli


@dataclass
class LiveSystem:
    settings: Settings
    url: str
    broker: str
    personas: dict[str, str]

    def score(self, *user_ids: str) -> dict[str, dict]:
        response = httpx.post(
            f"{self.url}/score",
            json={"user_ids": list(user_ids), "explain": True, "top_k": 5},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return {s["user_id"]: s for s in response.json()["scores"]}


@pytest.fixture(scope="module")
def live(stack_settings: Settings) -> Iterator[LiveSystem]:
    """History simulated and trained through the CLI, then worker and server up."""
    settings = stack_settings
    run_cli(settings, "simulate", "--users", "160", "--days", "21", "--seed", "3")
    run_cli(settings, "train")
    personas = json.loads((settings.data_dir / "events.personas.json").read_text())
    worker = processes.start_worker(settings)
    port = local_stack.free_port()
    server = processes.start_server(settings, port)
    try:
        url = f"http://127.0.0.1:{port}"
        processes.wait_ready(f"{url}/readyz", server)
        broker = local_stack.current(settings).kafka_broker
        yield LiveSystem(settings, url, broker, personas)
    finally:
        processes.stop(server)
        processes.stop(worker)


def _session_ending_now(uid: str, persona: str, seed: int) -> list:
    session = live_session(uid, persona, 0.0, seed=seed, buy=True)
    shift = time.time() - 2 - session[-1].ts
    return [e.model_copy(update={"ts": e.ts + shift}) for e in session]


def test_feast_apply_works_against_the_running_stack(stack_settings: Settings) -> None:
    yaml_path = feature_repo_yaml(stack_settings)
    feast = [str(Path(sys.executable).parent / "feast"), "-c", "feature_repo", "-f"]
    for args in (["apply"], ["feature-services", "list"]):
        result = subprocess.run(
            [*feast, str(yaml_path), *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    assert "segmentation" in result.stdout
    assert "propensity" in result.stdout


def test_live_events_change_the_score_over_http(live: LiveSystem) -> None:
    uid = next(u for u, p in sorted(live.personas.items()) if p == "window_shopper")
    before = live.score(uid)[uid]
    assert before["cold_start"] is False
    events = _session_ending_now(uid, "window_shopper", seed=5)
    produce_events(live.broker, live.settings.events_topic, events)

    def updated() -> dict | None:
        now = live.score(uid)[uid]
        age = now["feature_age_seconds"]
        return now if age is not None and age < 60 else None

    after = eventually(updated, 60, "the worker to write the live features")
    assert after["propensity"] != pytest.approx(before["propensity"], abs=1e-9)
    assert len(after["explanation"]) == 5
    store = feature_store(live.settings, local_stack.current(live.settings).redis_url)
    # What a Feast consumer reads: windows derived from the state as of the read.
    online = store.get_online_features(
        features=["user_live_features:events_1h"], entity_rows=[{"user_id": uid}]
    ).to_dict()
    assert online["events_1h"][0] >= len(events)


def test_malformed_event_goes_to_dlq_and_worker_goes_on(live: LiveSystem) -> None:
    marker = f"not-json-{time.time_ns()}"
    fresh_user = f"fresh-{time.time_ns()}"
    assert live.score(fresh_user)[fresh_user]["cold_start"] is True
    produce_raw(live.broker, live.settings.events_topic, [(b"k", marker.encode())])
    events = _session_ending_now(fresh_user, "loyal_buyer", seed=9)
    produce_events(live.broker, live.settings.events_topic, events)

    def dead_letter() -> dict | None:
        records = read_topic(live.broker, live.settings.dlq_topic, 10_000, timeout=2)
        for _, value in records:
            record = orjson.loads(value)
            if record["raw"] == marker:
                return record
        return None

    record = eventually(dead_letter, 60, "the malformed event in events-dlq")
    assert record["reason"] == "malformed_json"
    assert record["detail"]
    assert record["offset"] is not None

    def scored() -> dict | None:
        result = live.score(fresh_user)[fresh_user]
        return result if not result["cold_start"] else None

    result = eventually(scored, 60, "the valid event after the bad one to be scored")
    assert result["feature_age_seconds"] < 60
