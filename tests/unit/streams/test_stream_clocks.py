"""Partition clocks for timers: event time, the wall clock when idle, never ahead."""

from __future__ import annotations

import time
from typing import NamedTuple

from streams.triggers import StreamClocks

WALL = 1_800_000_000.0
TP = ("events", 0)


class _Record(NamedTuple):
    topic: str
    partition: int


def _clocks(newest_ts: float, idle_seconds: float = 3.0) -> StreamClocks:
    clocks = StreamClocks(idle_seconds)
    clocks.assigned([TP])
    record = _Record(*TP)
    clocks.batch([record], [(record, newest_ts)])
    return clocks


def test_a_partition_runs_on_the_newest_event_time_it_applied() -> None:
    assert _clocks(WALL - 600).now(WALL) == {TP: WALL - 600}


def test_a_producer_clock_ahead_does_not_move_timers_early() -> None:
    # Accepted (within max_future_seconds), but the clock stops at the wall clock:
    # a timer due 30 s from now does not fire on a 2-minute-ahead stamp.
    assert _clocks(WALL + 120).now(WALL) == {TP: WALL}


def test_a_quiet_partition_follows_the_wall_clock_less_the_idle_time() -> None:
    clocks = _clocks(WALL - 600, idle_seconds=0.01)
    time.sleep(0.02)
    assert clocks.now(WALL) == {TP: WALL - 0.01}
    clocks.revoked([TP])
    assert clocks.now(WALL) == {}
