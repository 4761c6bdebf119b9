"""Live segments on the real worker, broker and Redis: one change per move, no replays.

A real ``faust`` worker with tiny models pinned places every user its events touch,
and produces each change to its own topic. Every user's first placement is a change
from nobody, to the segment ``/score``'s code gives the stored state. A producer
that sends the same events again (same ids) makes no second change.
"""

from __future__ import annotations

import time

import orjson
import redis

from core.events import Event
from core.registry import load_propensity, load_segmenter
from core.scoring import ScoringModels, place
from core.store.feast_config import feature_store
from core.store.state_store import StateLayout, load_states
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
