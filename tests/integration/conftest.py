"""Fixtures of the integration tests that run the worker on a private stream stack.

A module that asks for ``rig`` gets its own stack (:mod:`tests.support.stream_stack`),
started once for the module; a module may override ``stream_stack`` to build it on
another broker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra import local_stack
from tests.support.stream_stack import Rig


@pytest.fixture(scope="module")
def stream_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A tansu broker (in memory) and a persistent redis-server for one module."""
    home = tmp_path_factory.mktemp("stream-stack-home")
    tansu = local_stack.start_tansu(home)
    rig = Rig(home, tansu.address, tansu.pid, local_stack.free_port())
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def rig(stream_stack: Rig) -> Iterator[Rig]:
    """The module's stream stack; the workers a test starts are stopped after it."""
    yield stream_stack
    stream_stack.stop_workers()
