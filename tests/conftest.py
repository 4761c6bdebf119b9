"""Shared fixtures: a real local stack (redis-server + tansu) in a temporary home."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra import local_stack
from infra.settings import Settings, get_settings
from infra.topics import ensure_topics


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose home holds a freshly started Redis and Kafka-protocol broker.

    The environment keeps pointing at this home for the whole session, so that
    child processes (worker, server, CLI) and in-process code agree.
    """
    home = tmp_path_factory.mktemp("segscore-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("SEGSCORE_HOME", str(home))
    patch.setenv("BENTOML_HOME", str(home / "bentoml"))
    patch.delenv("SEGSCORE_REDIS_URL", raising=False)
    patch.delenv("SEGSCORE_KAFKA_BROKER", raising=False)
    settings = get_settings()
    stack = local_stack.up(settings)
    try:
        ensure_topics(stack.kafka_broker, settings)
        yield settings
    finally:
        local_stack.down(settings)
        patch.undo()
