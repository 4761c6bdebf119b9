"""Triggers in the feature engine (in-memory fakes): timers indexed, fired once."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from core.events import Event, EventType
from core.rules.spec import parse_rules
from core.store.recent_events import recent_key
from infra.settings import Settings
from streams.triggers import Triggers, timers_key
from tests.support.worker_fakes import (
    CART_RULES,
    NOW,
    EngineRig,
    FakeDlq,
    batch_of,
    event_json,
    make_rig,
)

INDEX = timers_key(("events", 0))


def _rig(tmp_path: Path, text: str = CART_RULES) -> tuple[EngineRig, FakeDlq]:
    rig = make_rig(tmp_path)
    fired = FakeDlq()
    rig.engine.triggers = Triggers(Settings(home=tmp_path), parse_rules(text))
    rig.engine.triggers_topic = fired
    return rig, fired


def test_an_abandoned_cart_fires_once_when_its_partition_passes_the_due_time(
    tmp_path: Path,
) -> None:
    rig, fired = _rig(tmp_path)
    rig.handle(batch_of(event_json("a1", "ann", 3600, "add_to_cart")))
    due = NOW - 3600 + 1800
    assert rig.redis.zsets[INDEX] == {b"ann": due}
    rig.tick()  # the partition's clock is the add's own time: nothing is due
    assert fired.sent == []

    # Another user's event moves the partition's event time past the due time.
    rig.handle(batch_of(event_json("b1", "bob", 0), first_offset=1))
    rig.tick()
    assert [
        (key, record["rule"], record["caused_by"]) for key, record in fired.sent
    ] == [(b"ann", "cart_abandoned", "a1")]
    assert fired.sent[0][1]["at_ts"] == pytest.approx(due)
    assert rig.redis.zsets[INDEX] == {}
    stored = rig.state("ann").rules
    assert stored.outbox == () and stored.timers == {}
    assert "cart_abandoned" in stored.members
    assert rig.engine.counts["triggers"] == 1

    rig.tick()
    rig.handle(batch_of(event_json("a1", "ann", 3600, "add_to_cart")))  # a replay
    rig.tick()
    assert len(fired.sent) == 1


def test_a_purchase_before_the_due_time_cancels_and_unindexes(tmp_path: Path) -> None:
    rig, fired = _rig(tmp_path)
    rig.handle(
        batch_of(
            event_json("a1", "ann", 3600, "add_to_cart"),
            orjson.dumps(
                {
                    "event_id": "a2",
                    "user_id": "ann",
                    "event_type": "purchase",
                    "ts": int((NOW - 3000) * 1000),
                    "revenue": 5.0,
                }
            ),
            event_json("b1", "bob", 0),
        )
    )
    rig.tick()
    assert fired.sent == [] and rig.redis.zsets.get(INDEX, {}) == {}


def test_a_timer_outlives_the_worker_that_armed_it(tmp_path: Path) -> None:
    """A new engine (a restart, or the partition's next owner) fires what is owed."""
    rig, fired = _rig(tmp_path)
    rig.handle(batch_of(event_json("a1", "ann", 3600, "add_to_cart")))
    rig.engine.cache.clear()  # nothing carried over but Redis
    other, fired_again = _rig(tmp_path)
    other.redis.data, other.redis.zsets = rig.redis.data, rig.redis.zsets
    other.handle(batch_of(event_json("b1", "bob", 0), first_offset=1))
    other.tick()
    assert [record["caused_by"] for _, record in fired_again.sent] == ["a1"]
    assert fired.sent == []


def test_recent_events_are_kept_newest_first_and_bounded(tmp_path: Path) -> None:
    rig, _ = _rig(tmp_path)
    rig.engine.settings = Settings(home=tmp_path, profile_recent_events=3)
    rig.handle(batch_of(*(event_json(f"e{i}", "ann", 100 - i) for i in range(5))))
    kept = [orjson.loads(v)["event_id"] for v in rig.redis.lists[recent_key("ann")]]
    assert kept == ["e4", "e3", "e2"]


def test_recent_lists_are_trimmed_now_and_then_never_past_twice_the_bound(
    tmp_path: Path,
) -> None:
    rig, _ = _rig(tmp_path)
    keep = 4
    rig.engine.settings = Settings(home=tmp_path, profile_recent_events=keep)
    key = recent_key("ann")
    lengths: list[int] = []
    for i in range(30):
        rig.handle(batch_of(event_json(f"e{i}", "ann", 100 - i), first_offset=i))
        lengths.append(len(rig.redis.lists[key]))
        newest = [orjson.loads(v)["event_id"] for v in rig.redis.lists[key][:keep]]
        assert newest == [f"e{j}" for j in range(i, max(i - keep, -1), -1)]
    trims = sum(1 for i in range(1, len(lengths)) if lengths[i] <= lengths[i - 1])
    assert max(lengths) <= 2 * keep - 1
    assert 0 < trims < 10, "trimmed about once per keep pushes, not at each"
    # A state loaded afresh (cache dropped) trims at its first push.
    rig.engine.cache.clear()
    rig.handle(batch_of(event_json("e30", "ann", 50), first_offset=30))
    assert len(rig.redis.lists[key]) == keep


def test_a_bad_rules_file_is_refused_and_the_old_rules_keep_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CART_RULES)
    triggers = Triggers(Settings(home=tmp_path, rules_path=path))
    assert [r.name for r in triggers.rules.rules] == ["cart_abandoned"]
    path.write_text(CART_RULES.replace("after: 30m", "after: thirty"))
    with caplog.at_level(logging.ERROR):
        assert not triggers.reload()
    assert "line 5: rules[0].after" in caplog.text
    assert [r.name for r in triggers.rules.rules] == ["cart_abandoned"]
    assert triggers.refused == 1
    path.write_text(CART_RULES.replace("30m", "5m"))
    assert triggers.reload()
    assert triggers.rules.rules[0].after == 300.0


def test_a_bad_file_at_start_means_no_rules_until_it_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: x\n    when: nonsense(\n")
    triggers = Triggers(Settings(home=tmp_path, rules_path=path))
    assert triggers.rules.rules == () and triggers.refused == 1
    path.write_text(CART_RULES)
    assert triggers.reload() and len(triggers.rules.rules) == 1


def test_values_read_one_by_one_equal_the_batch_columns(tmp_path: Path) -> None:
    """Without models, rules read each user's values lazily: the same values as
    the columns scoring computes for the same states and instants, whether a
    user's block is the likely users' (a purchase, which the shipped lapsing
    rule reads features on) or the rest's."""
    from core.feature_math import request_features
    from core.rules.spec import RuleSet, load_rules
    from core.scoring import with_read_time_features
    from streams.triggers import feature_values

    rig, _ = _rig(tmp_path)
    adds = (event_json(f"a{i}", "ann", 5000 - 700 * i, "add_to_cart") for i in range(6))
    purchase = {
        "event_id": "p1",
        "user_id": "ann",
        "event_type": "purchase",
        "ts": int((NOW - 100) * 1000),
        "revenue": 12.0,
    }
    rig.handle(batch_of(*adds, orjson.dumps(purchase), event_json("b1", "bob", 10)))
    users = ["ann", "bob"]
    states = {u: rig.state(u) for u in users}
    names = ("events_24h", "cart_adds_7d", "orders_90d", "tenure_days")
    shipped = load_rules()
    rules = RuleSet(shipped.rules, shipped.version, names=frozenset(names))
    kinds = {"ann": [Event.model_construct(event_type=EventType.PURCHASE)], "bob": []}
    lazy = feature_values(rules, users, states, None, events=kinds)
    at = [states[u].last_event_ts for u in users]
    eager = with_read_time_features({"state": [states[u] for u in users]}, 2, at)
    for row in range(2):
        ages = request_features({k: eager[k][row] for k in eager}, at[row])
        assert not isinstance(lazy[row], dict)  # computed on read
        for name in names[:3]:
            assert lazy[row][name] == eager[name][row], name
        assert lazy[row]["tenure_days"] == ages["tenure_days"]
        assert lazy[row]["propensity"] is None
    assert lazy[0]["cart_adds_7d"] == 6
