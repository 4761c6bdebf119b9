"""A micro-batch: bad events split off, duplicates ignored, features per user."""

from __future__ import annotations

from collections import defaultdict

import orjson

from streams.processor import apply_batch, parse_batch
from streams.user_state import UserState

NOW = 1_800_000_000.0


def raw(event_id: str, user: str, offset_s: float, etype: str = "page_view") -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "event_type": etype,
            "ts": int((NOW - offset_s) * 1000),
        }
    )


def test_batch_splits_bad_events_and_keeps_their_position() -> None:
    values = [raw("a", "u1", 10), b"{oops", raw("b", "u2", 5), b'{"user_id": "u3"}']
    parsed = parse_batch(values, now=NOW)
    assert [e.event_id for e in parsed.events] == ["a", "b"]
    assert [(i, r.reason) for i, r in parsed.rejections] == [
        (1, "malformed_json"),
        (3, "missing:event_id"),
    ]


def test_replayed_batch_changes_nothing() -> None:
    values = [raw("a", "u1", 100), raw("b", "u1", 50), raw("c", "u2", 20)]
    events = parse_batch(values, now=NOW).events
    states: defaultdict[str, UserState] = defaultdict(UserState)
    first = apply_batch(events, states, lateness_seconds=600)
    assert {r["user_id"]: r["events_1h"] for r in first.rows} == {"u1": 2.0, "u2": 1.0}
    again = apply_batch(events, states, lateness_seconds=600)
    assert again.rows == []
    assert again.counts["duplicate"] == 3


def test_features_are_taken_as_of_the_newest_event_of_each_user() -> None:
    events = parse_batch([raw("a", "u1", 7200), raw("b", "u1", 30)], now=NOW).events
    result = apply_batch(events, defaultdict(UserState), lateness_seconds=10_000)
    (row,) = result.rows
    assert row["event_timestamp"] == NOW - 30
    assert row["events_1h"] == 1.0
    assert row["events_24h"] == 2.0
