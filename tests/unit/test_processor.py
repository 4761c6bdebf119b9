"""A micro-batch: bad events split off, duplicates ignored, touched users reported."""

from __future__ import annotations

from collections import defaultdict

import orjson

from streams.feature_math import stream_features
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
    assert first.touched == ["u1", "u2"]
    assert stream_features(states["u1"], NOW)["events_1h"] == 2.0
    before = {u: s.to_bytes() for u, s in states.items()}
    again = apply_batch(events, states, lateness_seconds=600)
    assert again.touched == []
    assert again.counts["duplicate"] == 3
    assert {u: s.to_bytes() for u, s in states.items()} == before


def test_offsets_make_replays_duplicates_beyond_the_event_id_window() -> None:
    events = parse_batch([raw("a", "u1", 7200), raw("b", "u1", 30)], now=NOW).events
    states: defaultdict[str, UserState] = defaultdict(UserState)
    apply_batch(events, states, lateness_seconds=10_000, offsets=[4, 5])
    states["u1"].seen.clear()  # as if the ids had aged out of the dedupe window
    again = apply_batch(events, states, lateness_seconds=10_000, offsets=[4, 5])
    assert again.touched == [] and again.counts["duplicate"] == 2
