"""A micro-batch: bad events split off, duplicates ignored, touched users reported."""

from __future__ import annotations

from collections import defaultdict

import orjson

from core.feature_math import stream_features
from core.user_state import UserState
from streams.processor import apply_batch, parse_batch

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
    positions = [("events:0", 4), ("events:0", 5)]
    apply_batch(events, states, lateness_seconds=10_000, positions=positions)
    states["u1"].seen.clear()  # as if the ids had aged out of the dedupe window
    again = apply_batch(events, states, lateness_seconds=10_000, positions=positions)
    assert again.touched == [] and again.counts["duplicate"] == 2


def test_offsets_are_compared_per_partition_only() -> None:
    # One user's events from two partitions: offset 3 on partition 1 is no replay
    # of offset 9 on partition 0 (a single offset per user would count it a
    # duplicate).
    values = [raw(f"e{i}", "u1", 100 - i) for i in range(4)]
    events = parse_batch(values, now=NOW).events
    states: defaultdict[str, UserState] = defaultdict(UserState)
    positions = [("ev:0", 9), ("ev:1", 3), ("ev:0", 10), ("ev:1", 4)]
    result = apply_batch(events, states, 600, positions=positions)
    assert result.counts == {"applied": 4}
    assert states["u1"].offsets == {"ev:0": 10, "ev:1": 4}
    states["u1"].seen.clear()
    again = apply_batch(events, states, 600, positions=positions)
    assert again.counts == {"duplicate": 4}


def test_the_old_single_offset_format_reads_as_no_offsets() -> None:
    old = orjson.dumps({"s": {"e1": NOW}, "o": 41})
    state = UserState.from_bytes(None, old)
    assert state.offsets == {} and state.seen == {"e1": NOW}
    event = parse_batch([raw("e2", "u1", 5)], now=NOW).events[0]
    states = {"u1": state}
    assert apply_batch([event], states, 600, positions=[("ev:0", 3)]).touched == ["u1"]
    assert UserState.from_bytes(None, state.dedupe_bytes()).offsets == {"ev:0": 3}


def test_a_tombstone_is_rejected_with_its_own_reason() -> None:
    parsed = parse_batch([None, raw("a", "u1", 5)], now=NOW)
    assert [e.event_id for e in parsed.events] == ["a"]
    [(index, rejection)] = parsed.rejections
    assert (index, rejection.reason) == (0, "tombstone")


def test_counts_name_each_outcome_that_happened_and_late_events_come_back() -> None:
    values = [
        raw("a", "u1", 30),
        raw("a", "u1", 30),  # the same id again: a duplicate
        raw("b", "u1", 5_000),  # far older than u1's newest event: late
        raw("c", "u2", 10),
    ]
    events = parse_batch(values, now=NOW).events
    states: defaultdict[str, UserState] = defaultdict(UserState)
    result = apply_batch(events, states, lateness_seconds=600)
    assert result.counts == {"applied": 2, "duplicate": 1, "late": 1}
    assert [e.event_id for e in result.late] == ["b"]
    assert result.touched == ["u1", "u2"]
