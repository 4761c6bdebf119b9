"""Live segments on the real worker, broker and Redis: one change per move, no replays.

A real ``faust`` worker with tiny models pinned places every user its events touch,
and produces each change to its own topic. Every user's first placement is a change
from nobody, to the segment ``/score``'s code gives the stored state. A producer
that sends the same events again (same ids) makes no second change. A user who
sends nothing more is re-placed as time passes, by whichever worker owns the
partition then, once.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import orjson
import redis

from core.events import Event
from core.registry import load_propensity, load_segmenter
from core.scoring import ScoringModels, place
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, encode_fields, load_states
from core.user_state import DAY, HOUR
from segscore.producer import read_topic
from tests.support.model_bundles import save_tiny_models
from tests.support.stream_stack import Rig, log_tail

USERS = [f"live-{i}" for i in range(6)]
KINDS = ["page_view", "product_view", "add_to_cart", "purchase"]


def _events(now: float) -> list[Event]:
    events = []
    for u, user in enumerate(USERS):
        for i in range(u + 1):
            kind = KINDS[(u + i) % len(KINDS)]
            events.append(
                Event(
                    event_id=f"{user}-{i}",
                    user_id=user,
                    event_type=kind,
                    ts=(now - 600 + 60 * i) * 1000,
                    session_id=f"s-{user}",
                    price=12.0,
                    revenue=30.0 * (u + 1) if kind == "purchase" else None,
                )
            )
    return events


def test_each_user_enters_a_segment_once_and_replays_change_nothing(
    rig: Rig,
) -> None:
    changes_topic = "live.segment-changes"
    lane = rig.lane("live", db=9, segment_changes_topic=changes_topic)
    segmenter_tag, propensity_tag = save_tiny_models(lane.settings)
    worker = lane.start_worker(
        "live-w1",
        extra_env={
            "SEGSCORE_SEGMENT_CHANGES_TOPIC": changes_topic,
            "SEGSCORE_SEGMENTER_VERSION": segmenter_tag,
            "SEGSCORE_PROPENSITY_VERSION": propensity_tag,
        },
    )
    events = _events(time.time())
    lane.produce(events)

    records = read_topic(rig.broker, changes_topic, len(USERS), timeout=90.0)
    assert len(records) == len(USERS), log_tail(rig)
    changes = {
        orjson.loads(value)["user_id"]: orjson.loads(value) for _, value in records
    }
    assert set(changes) == set(USERS)
    assert {key for key, _ in records} == {u.encode() for u in USERS}

    # The segment each record names is the one /score's code gives the state.
    models = ScoringModels.from_bundles(
        load_segmenter(lane.settings, segmenter_tag),
        load_propensity(lane.settings, propensity_tag),
    )
    layout = StateLayout.of(feature_store(lane.settings, lane.redis_url))
    client = redis.Redis.from_url(lane.redis_url)
    lane.wait_committed(len(events), 60.0, [worker])
    states = load_states(client, layout, USERS)
    expected = place(
        [states[u] for u in USERS], [states[u].last_event_ts for u in USERS], models
    ).segments
    for user, segment in zip(USERS, expected, strict=True):
        change = changes[user]
        assert (change["from"], change["to"], change["seq"]) == (None, segment, 1)
        assert change["caused_by"] == f"{user}-{USERS.index(user)}"
        assert change["model_version"] == segmenter_tag
        assert states[user].segment == segment and states[user].segment_outbox == ()

    # The same events again, as a producer retrying would send them.
    lane.produce(events)
    lane.wait_committed(2 * len(events), 60.0, [worker])
    again = read_topic(rig.broker, changes_topic, len(USERS) + 1, timeout=5.0)
    assert len(again) == len(USERS)
    assert worker.poll() is None, log_tail(rig)


def test_time_alone_moves_a_quiet_user_once_after_a_kill_9(rig: Rig) -> None:
    """A re-check armed by one worker is fired by its successor, with the reason."""
    changes_topic = "drift.segment-changes"
    lane = rig.lane("drift", db=12, segment_changes_topic=changes_topic)
    segmenter_tag, propensity_tag = save_tiny_models(lane.settings)
    env = {
        "SEGSCORE_SEGMENT_CHANGES_TOPIC": changes_topic,
        "SEGSCORE_SEGMENTER_VERSION": segmenter_tag,
        "SEGSCORE_PROPENSITY_VERSION": propensity_tag,
        # Held at the event's own time: the re-check an hour later is not due.
        "SEGSCORE_TIMER_IDLE_SECONDS": str(3 * HOUR),
    }
    first = lane.start_worker("drift-w1", extra_env=env)
    last = time.time() - 2 * HOUR
    user = "drift-0"
    event = Event(
        event_id="drift-0-0",
        user_id=user,
        event_type="purchase",
        ts=last * 1000,
        session_id="s-drift",
        price=12.0,
        revenue=30.0,
    )
    lane.produce([event])
    placed = read_topic(rig.broker, changes_topic, 1, timeout=90.0)
    assert len(placed) == 1, log_tail(rig)
    assert orjson.loads(placed[0][1])["cause"] == "event"
    lane.wait_committed(1, 60.0, [first])
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)

    # Stored in another segment than the one time has taken the user to, so the
    # re-check must move them whatever the tiny models make of two hours.
    models = ScoringModels.from_bundles(
        load_segmenter(lane.settings, segmenter_tag),
        load_propensity(lane.settings, propensity_tag),
    )
    layout = StateLayout.of(feature_store(lane.settings, lane.redis_url))
    client = redis.Redis.from_url(lane.redis_url)
    state = load_states(client, layout, [user])[user]
    assert state.last_event_ts is not None
    assert state.rules.recheck == state.last_event_ts + HOUR
    now = place([state], [time.time()], models).segments[0]
    state.segment = next(s.id for s in models.segmenter.segments if s.id != now)
    client.hset(layout.key(user), mapping=encode_fields(layout, state))

    second = lane.start_worker(
        "drift-w2", extra_env={**env, "SEGSCORE_TIMER_IDLE_SECONDS": "1"}
    )
    records = read_topic(rig.broker, changes_topic, 2, timeout=90.0)
    assert len(records) == 2, log_tail(rig)
    change = orjson.loads(records[1][1])
    assert (change["cause"], change["caused_by"]) == ("time", None)
    at = datetime.fromisoformat(change["at"]).timestamp()
    assert at > state.last_event_ts + HOUR
    assert change["from"] == state.segment
    assert change["to"] == place([state], [at], models).segments[0]
    time.sleep(3.0)  # a second firing would be in the topic by now
    assert len(read_topic(rig.broker, changes_topic, 3, timeout=3.0)) == 2
    stored = load_states(client, layout, [user])[user]
    assert stored.segment == change["to"] and stored.segment_outbox == ()
    assert stored.rules.recheck == state.last_event_ts + DAY
    assert second.poll() is None, log_tail(rig)
