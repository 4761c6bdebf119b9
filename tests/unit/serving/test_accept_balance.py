"""Which worker defers a new connection: the shared connection counts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.accept_balance import ConnectionShare, share_path


@pytest.fixture
def other_pid() -> Iterator[int]:
    """A live process standing in for another worker."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_worker_defers_only_to_a_live_worker_holding_fewer(
    tmp_path: Path, other_pid: int
) -> None:
    path = share_path(tmp_path, 123)
    mine = ConnectionShare(path, 0)
    other = ConnectionShare(path, 1, pid=other_pid)
    assert not mine.others_hold_fewer()  # 0 and 0
    mine.changed(1)
    assert mine.others_hold_fewer()
    assert not other.others_hold_fewer()
    other.changed(1)
    assert not mine.others_hold_fewer()  # level again: accept at once
    other.changed(3)
    mine.changed(2)
    assert not mine.others_hold_fewer()
    assert other.others_hold_fewer()


def test_a_gone_worker_is_not_deferred_to(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid no longer runs
    path = share_path(tmp_path, 7)
    mine = ConnectionShare(path, 0)
    ConnectionShare(path, 3, pid=proc.pid)  # left with 0 connections
    mine.changed(5)
    assert not mine.others_hold_fewer()


def test_the_last_worker_out_removes_the_file(tmp_path: Path, other_pid: int) -> None:
    path = share_path(tmp_path, os.getpid())
    mine = ConnectionShare(path, 0)
    other = ConnectionShare(path, 1, pid=other_pid)
    other.close()
    assert path.exists()
    mine.close()
    assert not path.exists()


def test_a_slot_outside_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slot"):
        ConnectionShare(share_path(tmp_path, 1), 64)
