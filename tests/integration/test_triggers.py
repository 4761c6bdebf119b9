"""Triggers on the real worker, broker and Redis: timers that outlive workers.

Real ``faust`` workers run a rules file with a cart-abandonment timer. Timers
pending when a worker is killed with SIGKILL fire once, from the worker that
takes over; timers pending when a second worker joins fire once, each from the
partition's new owner; events replayed arm nothing; a rules file with an error
is refused with its line named, and the old rules keep running.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import redis

from core.events import Event
from segscore.producer import read_topic
from streams.metrics import sample_sum
from streams.triggers import TIMERS_PREFIX
from tests.support.model_bundles import save_tiny_models
from tests.support.processes import eventually
from tests.support.stream_stack import Lane, Rig, log_tail

AFTER = 22  # seconds of event time from an add to its trigger
# A second worker's join takes a few seconds alone but up to ~20 s while the
# suite's other process loads the machine: the moved timers must still be pending.
AFTER_MOVE = 45
RULES = f"""
rules:
  - name: cart_abandoned
    on: add_to_cart
    after: {AFTER}s
    unless: [purchase]
"""


def _lane(
    rig: Rig, name: str, db: int, rules: Path, after: int = AFTER
) -> tuple[Lane, dict[str, str]]:
    rules.write_text(RULES.replace(f"after: {AFTER}s", f"after: {after}s"))
    topic = f"{name}.triggers"
    lane = rig.lane(name, db=db, triggers_topic=topic)
    env = {
        "SEGSCORE_TRIGGERS_TOPIC": topic,
        "SEGSCORE_RULES_PATH": str(rules),
        "SEGSCORE_RULES_POLL_SECONDS": "0.5",
        "SEGSCORE_TIMER_IDLE_SECONDS": "1",
        "SEGSCORE_LIVE_SEGMENTS": "false",
    }
    return lane, env


def _event(user: str, n: int, kind: str, ts: float) -> Event:
    return Event(
        event_id=f"{user}-{n}",
        user_id=user,
        event_type=kind,
        ts=ts * 1000,
        price=9.0 if kind == "add_to_cart" else None,
        revenue=20.0 if kind == "purchase" else None,
    )


def _carts(users: list[str], buyers: set[str], now: float) -> list[Event]:
    events = []
    for user in users:
        events.append(_event(user, 0, "add_to_cart", now))
        if user in buyers:
            events.append(_event(user, 1, "purchase", now + 1))
    return events


def _pending(lane: Lane) -> set[str]:
    client = redis.Redis.from_url(lane.redis_url)
    found: set[str] = set()
    for key in client.scan_iter(match=TIMERS_PREFIX + b"*"):
        found |= {m.decode() for m in client.zrange(key, 0, -1)}
    return found


def _warm_up(lane: Lane, worker: list) -> None:
    """One event through, so the worker has joined before the timed events."""
    lane.produce([_event("warm-up", 0, "page_view", time.time())])
    lane.wait_committed(1, 90.0, worker)


def _triggers(rig: Rig, lane: Lane, expect: int, timeout: float) -> list[dict]:
    topic = lane.settings.triggers_topic
    return [orjson.loads(v) for _, v in read_topic(rig.broker, topic, expect, timeout)]


def test_timers_pending_at_a_kill_9_fire_once_from_the_restarted_worker(
    rig: Rig, tmp_path: Path
) -> None:
    lane, env = _lane(rig, "trig-kill", 10, tmp_path / "rules.yaml")
    first = lane.start_worker("trig-kill-1", extra_env=env)
    _warm_up(lane, [first])
    users = [f"cart-{i}" for i in range(8)]
    buyers = set(users[:3])
    now = time.time()
    events = _carts(users, buyers, now)
    lane.produce(events)
    lane.wait_committed(1 + len(events), 60.0, [first])
    abandoned = set(users) - buyers
    assert _pending(lane) == abandoned
    assert time.time() < now + AFTER, "too slow to kill before the timers are due"

    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    second = lane.start_worker("trig-kill-2", extra_env=env)

    fired = _triggers(rig, lane, len(abandoned), timeout=AFTER + 60.0)
    assert {r["user_id"] for r in fired} == abandoned, log_tail(rig)
    for record in fired:
        assert record["rule"] == "cart_abandoned"
        assert record["caused_by"] == f"{record['user_id']}-0"
        assert abs(record["at_ts"] - (now + AFTER)) < 0.01
    time.sleep(3.0)  # anything fired twice would be in the topic by now
    again = _triggers(rig, lane, len(abandoned) + 1, timeout=3.0)
    assert len(again) == len(abandoned)
    assert len({r["id"] for r in again}) == len(abandoned)
    assert _pending(lane) == set()

    # The same events again (a producer's retry): duplicates arm nothing.
    lane.produce(events)
    lane.wait_committed(1 + 2 * len(events), 60.0, [second])
    assert _pending(lane) == set()

    # A rules file with an error is refused, line named; the old rules run on.
    (tmp_path / "rules.yaml").write_text(RULES.replace(f"{AFTER}s", "soon"))
    eventually(
        lambda: "line 5: rules[0].after" in log_tail(rig, 400),
        30.0,
        "the refusal in the worker's log",
    )
    lane.produce([_event("late-cart", 0, "add_to_cart", time.time())])
    total = 2 + 2 * len(events)
    lane.wait_committed(total, 60.0, [second])
    assert _pending(lane) == {"late-cart"}
    assert second.poll() is None, log_tail(rig)

    # The whole partition replayed (a new group reads it from the start, with
    # live segments on): nothing is applied again, so nothing is emitted again.
    rig.stop_workers()
    changes = lane.settings.segment_changes_topic
    placed = len(read_topic(rig.broker, changes, 10**6, timeout=3.0))
    segmenter, propensity = save_tiny_models(lane.settings)
    replay = {
        **env,
        "SEGSCORE_CONSUMER_GROUP": "trig-kill-replay",
        "SEGSCORE_LIVE_SEGMENTS": "true",
        "SEGSCORE_SEGMENT_CHANGES_TOPIC": changes,
        "SEGSCORE_SEGMENTER_VERSION": segmenter,
        "SEGSCORE_PROPENSITY_VERSION": propensity,
    }
    third = lane.start_worker("trig-kill-3", extra_env=replay)
    eventually(
        lambda: lane.messages("trig-kill-3") >= total,
        90.0,
        "the replay of every record",
    )
    assert (
        sample_sum(
            lane.metrics("trig-kill-3"),
            "segscore_worker_events_total",
            outcome="applied",
        )
        == 0
    )
    assert len(_triggers(rig, lane, len(abandoned) + 1, timeout=3.0)) == len(abandoned)
    assert len(read_topic(rig.broker, changes, 10**6, timeout=3.0)) == placed
    assert third.poll() is None, log_tail(rig)


def test_a_rebalance_hands_pending_timers_to_the_new_owner(
    rig: Rig, tmp_path: Path
) -> None:
    lane, env = _lane(rig, "trig-move", 11, tmp_path / "rules.yaml", AFTER_MOVE)
    first = lane.start_worker("trig-move-1", extra_env=env)
    _warm_up(lane, [first])
    users = [f"move-{i}" for i in range(16)]
    now = time.time()
    events = _carts(users, set(), now)
    lane.produce(events)
    lane.wait_committed(1 + len(events), 60.0, [first])
    assert _pending(lane) == set(users)

    second = lane.start_worker("trig-move-2", extra_env=env)

    def both_assigned() -> bool:
        name = "segscore_worker_assigned_partitions"
        return all(
            sample_sum(lane.metrics(w), name) == 1
            for w in ("trig-move-1", "trig-move-2")
        )

    eventually(both_assigned, 60.0, "one partition per worker")
    assert time.time() < now + AFTER_MOVE, "the rebalance took longer than the timers"

    fired = _triggers(rig, lane, len(users), timeout=AFTER_MOVE + 60.0)
    assert sorted(r["user_id"] for r in fired) == sorted(users), log_tail(rig)
    time.sleep(3.0)
    assert len(_triggers(rig, lane, len(users) + 1, timeout=3.0)) == len(users)

    def by_worker(worker: str) -> float:
        samples = lane.metrics(worker)
        return sample_sum(samples, "segscore_worker_activations_total", kind="trigger")

    counts = eventually(
        lambda: (
            (c := (by_worker("trig-move-1"), by_worker("trig-move-2")))
            and sum(c) == len(users)
            and c
        ),
        10.0,
        "each worker's count of the triggers it fired",
    )
    assert counts[0] > 0 and counts[1] > 0  # the new owner fired the moved ones
    assert first.poll() is None and second.poll() is None, log_tail(rig)
