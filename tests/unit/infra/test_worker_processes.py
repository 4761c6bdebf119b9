"""How many stream worker processes a machine runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.processes import worker_process_count
from infra.settings import Settings


@pytest.mark.parametrize(
    ("cores", "partitions", "expected"),
    [(2, 2, 2), (8, 2, 2), (1, 4, 1), (None, 4, 1)],
)
def test_one_process_per_core_and_no_more_than_partitions(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cores: int | None,
    partitions: int,
    expected: int,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    settings = Settings(home=tmp_path, topic_partitions=partitions)
    assert worker_process_count(settings) == expected


def test_the_setting_wins(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, worker_processes=3, topic_partitions=2)
    assert worker_process_count(settings) == 3
