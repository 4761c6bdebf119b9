"""Address resolution: each component asks only for the addresses it needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra import local_stack
from infra.local_stack import Stack, StackError
from infra.settings import Settings, get_settings


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings of an empty home (no stack.json) and no addresses."""
    for name in list(os.environ):
        if name.upper().startswith("SEGSCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SEGSCORE_HOME", str(tmp_path))
    return get_settings()


def test_the_service_needs_only_the_redis_url(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
):
    monkeypatch.setenv("SEGSCORE_REDIS_URL", "redis://10.0.0.5:6379/0")
    settings = get_settings()
    assert not settings.stack_file.exists()
    assert local_stack.current_redis_url(settings) == "redis://10.0.0.5:6379/0"
    with pytest.raises(StackError, match="no Kafka broker address"):
        local_stack.current(settings)


def test_broker_alone_resolves_without_redis(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
):
    monkeypatch.setenv("SEGSCORE_KAFKA_BROKER", "10.0.0.6:9092")
    settings = get_settings()
    assert local_stack.current_broker(settings) == "10.0.0.6:9092"
    with pytest.raises(StackError, match="SEGSCORE_REDIS_URL is unset"):
        local_stack.current_redis_url(settings)


def test_missing_addresses_say_what_to_set(settings: Settings):
    with pytest.raises(StackError) as redis_missing:
        local_stack.current_redis_url(settings)
    assert "SEGSCORE_REDIS_URL" in str(redis_missing.value)
    assert "segscore up" in str(redis_missing.value)
    with pytest.raises(StackError, match="SEGSCORE_KAFKA_BROKER"):
        local_stack.current_broker(settings)
    assert local_stack.status(settings) == {}


def test_recorded_stack_fills_in_what_settings_leave_out(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
):
    Stack("redis://127.0.0.1:7001/0", "127.0.0.1:7002").save(settings.stack_file)
    assert local_stack.current_redis_url(settings) == "redis://127.0.0.1:7001/0"
    assert local_stack.current_broker(settings) == "127.0.0.1:7002"

    monkeypatch.setenv("SEGSCORE_REDIS_URL", "redis://10.0.0.5:6379/0")
    stack = local_stack.current(get_settings())
    assert (stack.redis_url, stack.kafka_broker) == (
        "redis://10.0.0.5:6379/0",
        "127.0.0.1:7002",
    )
