"""``segscore up / status / down`` start real processes and stop only their own."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from infra import local_stack
from infra.settings import get_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEGSCORE_HOME", str(tmp_path))
    monkeypatch.delenv("SEGSCORE_REDIS_URL", raising=False)
    monkeypatch.delenv("SEGSCORE_KAFKA_BROKER", raising=False)
    return tmp_path


def test_up_is_idempotent_and_down_stops_what_it_started(home: Path) -> None:
    settings = get_settings()
    first = local_stack.up(settings)
    try:
        assert redis.Redis.from_url(first.redis_url).ping()
        assert {s.name for s in first.started} == {"redis", "kafka"}
        second = local_stack.up(settings)
        assert second.redis_url == first.redis_url
        assert [s.pid for s in second.started] == [s.pid for s in first.started]
        state = local_stack.status(settings)
        assert state["redis"]["up"] and state["kafka"]["up"]
    finally:
        stopped = local_stack.down(settings)
    assert {s.pid for s in stopped} == {s.pid for s in first.started}
    assert not any(local_stack.pid_alive(s.pid) for s in first.started)
    assert local_stack.status(settings) == {}


def test_configured_redis_is_used_and_left_running(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    external = local_stack.start_redis(home / "external")
    try:
        monkeypatch.setenv("SEGSCORE_REDIS_URL", external.address)
        settings = get_settings()
        stack = local_stack.up(settings)
        assert stack.redis_url == external.address
        assert [s.name for s in stack.started] == ["kafka"]
        local_stack.down(settings)
        assert local_stack.pid_alive(external.pid)
        assert redis.Redis.from_url(external.address).ping()
    finally:
        local_stack.stop_pid(external.pid)


def test_unreachable_configured_redis_is_a_clear_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = local_stack.free_port()
    monkeypatch.setenv("SEGSCORE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    with pytest.raises(local_stack.StackError, match="not reachable"):
        local_stack.up(get_settings())


def test_the_local_redis_keeps_an_fsynced_aof_compacted_less_often(home: Path) -> None:
    server = local_stack.start_redis(home)
    try:
        config = redis.Redis.from_url(server.address).config_get("*aof*")
        config |= redis.Redis.from_url(server.address).config_get("append*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["auto-aof-rewrite-percentage"] == str(
            local_stack.AOF_REWRITE_PERCENT
        )
        assert int(config["auto-aof-rewrite-min-size"]) == 128 * 1024 * 1024
    finally:
        local_stack.stop_pid(server.pid)
