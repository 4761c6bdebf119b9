"""The backlog benches' progress tracker: done only when every state is."""

from __future__ import annotations

from core.store.state_store import StateLayout, save_states
from core.user_state import UserState
from segscore.bench.stream_events import EventFactory
from segscore.bench.stream_progress import BacklogTracker, _resolve
from tests.support.worker_fakes import FakeRedis


def test_the_backlog_is_done_only_when_every_user_is_not_when_each_lane_ends() -> None:
    client, layout = FakeRedis(), StateLayout(project="progress")
    users = ["a", "b", "c", "a"]
    events = EventFactory(1).batch(users, [1_800_000_000.0 + i for i in range(4)])
    # One partition: its last event is a's, and a is written first -- as a batch's
    # users are, in the order they first appear in it -- while b and c are not yet.
    tracker = BacklogTracker(client, layout, events, [0, 0, 0, 0], every=1)

    def write(*indices: int) -> None:
        save_states(
            client,
            layout,
            {events[i].user_id: UserState(last_event_ts=events[i].ts) for i in indices},
        )

    write(3)
    assert tracker.poll() == 4  # the lane's last checkpoint is applied...
    assert not tracker.complete  # ...but b and c are not
    write(1)
    tracker.poll()
    assert not tracker.complete
    write(2)
    tracker.poll()
    assert tracker.complete


def test_a_sample_resolves_once_its_users_state_reaches_its_time() -> None:
    pending = {
        "a": [(10.0, 100.0), (12.0, 102.0)],
        "b": [(11.0, 101.0)],
        "c": [(9.0, 99.0)],
    }
    latencies: list[tuple[float, float]] = []
    # a has reached its first sample only, b all of its, c nothing is stored yet.
    done = _resolve(pending, latencies, ["a", "b", "c"], [10.0, 11.0, None], 103.0)
    assert done == 1  # b: the poller reads the next page only when all are done
    assert sorted(latencies) == [(100.0, 3.0), (101.0, 2.0)]
    assert pending == {"a": [(12.0, 102.0)], "c": [(9.0, 99.0)]}
