"""``segscore worker -n 2``: one consumer group of processes, supervised as one unit."""

from __future__ import annotations

import os
import signal

import psutil

from tests.support.processes import eventually
from tests.support.stream_stack import Rig, assert_matches_batch, simulated


def test_a_worker_group_splits_the_partitions_and_dies_with_its_parent(
    rig: Rig,
) -> None:
    lane = rig.lane("group", db=1, batch_max_events=500)
    events = simulated(n_users=300, n_events=8_000, seed=5)
    lane.produce(events)
    group = lane.start_worker_group("grp", 2)
    eventually(
        lambda: len(psutil.Process(group.pid).children()) == 2, 30, "two workers"
    )
    children = psutil.Process(group.pid).children()
    lane.wait_committed(len(events), 150, [group])
    # Each process consumed one of the two partitions, under its own id.
    eventually(
        lambda: lane.messages("grp-1") + lane.messages("grp-2") == len(events),
        10,
        "both workers' metrics",
    )
    assert lane.messages("grp-1") > 0 and lane.messages("grp-2") > 0
    assert_matches_batch(lane, events)

    # The unit killed outright: the kernel sends its processes SIGTERM, so no
    # orphan goes on consuming.
    os.kill(group.pid, signal.SIGKILL)
    group.wait(10)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive


def test_when_one_worker_exits_the_group_stops_and_says_so(rig: Rig) -> None:
    lane = rig.lane("group-exit", db=2)
    group = lane.start_worker_group("grp-exit", 2)
    eventually(
        lambda: len(psutil.Process(group.pid).children()) == 2, 30, "two workers"
    )
    first, second = psutil.Process(group.pid).children()
    first.kill()  # as a crash would
    assert group.wait(40) == 128 + signal.SIGKILL
    assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
