"""Property: no input breaks the worker's pure path, and state stays finite.

Random and extreme inputs (JSON-ish objects with odd types and extreme numbers,
undecodable bytes, tombstones, lone surrogates) go through exactly what
:meth:`streams.worker_engine.FeatureEngine` chains for a batch: ``parse_batch`` ->
``apply_batch`` -> ``encode_fields`` / ``decode_fields`` (the state's round trip
through Redis) -> the DLQ record of every rejection. Each input must end up applied
(or deduplicated) or rejected with a reason; nothing may raise; every number in a
stored state, and every stream and history feature read from it, must be finite.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.events import (
    DEFAULT_MIN_TS,
    MAX_AMOUNT,
    MAX_QUANTITY,
    Event,
    EventType,
    Rejection,
    iso,
    parse_event,
)
from core.feature_math import history_values, stream_values
from core.store.state_store import (
    DEDUPE_FIELD,
    StateLayout,
    decode_fields,
    encode_fields,
)
from core.user_state import UserState, source_key
from streams.failures import dlq_record, late_rejection
from streams.processor import apply_batch, parse_batch

NOW = 1_800_000_000.0  # 2027-01-15
LATENESS = 600
MAX_FUTURE = 300
LAYOUT = StateLayout(project="props")

EXTREME_NUMBERS = [
    0, -0.0, 1, -1, 5e-324, 1e-300, 0.5, 1e11, 99_999_999_999, 100_000_000_000,
    946_684_799, 946_684_800, 1_700_000_000, 1_700_000_000_000, NOW, NOW * 1000,
    (NOW + 299) * 1000, (NOW + 301) * 1000, -1e14, -1e22, 1e22, 1e300, -1e300,
    1e308, -1e308, 1.7976931348623157e308, 2**31, 2**53 + 1, 2**63 - 1, 2**63,
    2**64 - 1, -(2**63), 10**30, -(10**30), MAX_AMOUNT, MAX_AMOUNT + 1,
    MAX_QUANTITY, MAX_QUANTITY + 1,
]  # fmt: skip
ODD_TEXT = [
    "NaN", "nan", "Infinity", "-Infinity", "inf", "1e308", "-1e22", "1e400",
    "1700000000", "1700000000000", "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00-01:00", "9999-12-31T23:59:59-14:00",
    "10000-01-01T00:00:00+00:00", "2027-01-15T07:59:00Z", "2027-01-15T08:00:00",
    "1999-12-31T23:59:59Z", "", " ", "\ud800", "a\udfffb", "\x00", "ünïcødé",
]  # fmt: skip

# Any character, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
numbers = st.one_of(
    st.sampled_from(EXTREME_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=NOW - 3 * 86_400, max_value=NOW + 600).map(lambda s: s * 1000),
)
scalars = st.one_of(
    st.none(), st.booleans(), numbers, any_text, st.sampled_from(ODD_TEXT)
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)
    ),
    max_leaves=6,
)
recent_ts = st.floats(min_value=NOW - 7 * 86_400, max_value=NOW + 200)


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values of a field, sometimes anything at all."""
    return st.one_of(good, good, good, anything)


event_dicts = st.fixed_dictionaries(
    {},
    optional={
        "event_id": field(st.text(min_size=1, max_size=6) | any_text),
        # Few users, so that one user's sums grow over many events.
        "user_id": field(st.sampled_from(["u1", "u2", " u3 ", "\u00e9"])),
        "event_type": field(st.sampled_from([*[t.value for t in EventType], "buy"])),
        "ts": field(
            st.one_of(
                recent_ts.map(lambda s: round(s * 1000)),
                recent_ts,  # epoch seconds
                recent_ts.map(iso),  # ISO-8601 with a zone
                numbers,
            )
        ),
        "price": field(st.floats(0, MAX_AMOUNT) | numbers),
        "quantity": field(st.integers(1, 10) | numbers),
        "revenue": field(st.floats(0, MAX_AMOUNT) | numbers),
        "session_id": field(st.sampled_from(["s1", "s2"]) | any_text),
        "category": field(st.sampled_from(["c1", "c2"]) | any_text),
        "product_id": field(any_text),
        "country": field(any_text),
    },
)


def wire(event: Any, ascii_only: bool = True) -> bytes:
    """What a producer that is not ours might send: stdlib JSON, NaN and all.

    ASCII JSON escapes a lone surrogate (``\\ud800``); raw UTF-8 carries it as
    bytes that are no UTF-8 at all.
    """
    text = json.dumps(event, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


messages = st.one_of(
    event_dicts.map(wire),
    event_dicts.map(wire),
    event_dicts.map(lambda e: wire(e, ascii_only=False)),
    anything.map(wire),
    st.binary(max_size=40),
    st.none(),  # a tombstone
)
batches = st.lists(st.lists(messages, max_size=12), min_size=1, max_size=4)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def assert_state_finite(state: UserState) -> None:
    """Every number a state holds is finite (None only where a time is unknown)."""
    for buckets in (state.minutes, state.hours, state.days):
        for index, counts in buckets.items():
            assert isinstance(index, int)
            assert all(_finite(c) for c in counts), counts
    for span in state.sessions.values():
        assert all(_finite(t) for t in span), span
    numbers_held = [
        *state.categories.values(),
        *state.cart_adds,
        *state.purchases,
        *state.seen.values(),
        state.engagement,
    ]
    assert all(_finite(n) for n in numbers_held), numbers_held
    for ts in (
        state.engagement_ts,
        state.first_seen_ts,
        state.last_event_ts,
        state.last_purchase_ts,
    ):
        assert ts is None or _finite(ts), ts


def assert_features_finite(state: UserState, as_of: float) -> None:
    for value in (*stream_values(state, as_of), *history_values(state, as_of)):
        assert value is None or _finite(value), value


def assert_within_contract(event: Event) -> None:
    assert DEFAULT_MIN_TS <= event.ts <= NOW + MAX_FUTURE
    for amount in (event.price, event.revenue):
        assert amount is None or 0 <= amount <= MAX_AMOUNT
    assert event.quantity is None or 1 <= event.quantity <= MAX_QUANTITY


def run_batches(batches: list[list[bytes | None]]) -> dict[str, dict[bytes, bytes]]:
    """The worker's pure path over ``batches``; returns the stored hash fields."""
    stored: dict[str, dict[bytes, bytes]] = {}
    offset = 0  # records alternate between two partitions, as a topic's would
    for values in batches:
        positions = [
            (source_key("events", (offset + i) % 2), offset + i)
            for i in range(len(values))
        ]
        offset += len(values)
        parsed = parse_batch(
            values, now=NOW, max_future_seconds=MAX_FUTURE, min_ts=DEFAULT_MIN_TS
        )
        assert len(parsed.events) + len(parsed.rejections) == len(values)
        rejected = [index for index, _ in parsed.rejections]
        assert len(set(rejected)) == len(rejected)
        for index, rejection in parsed.rejections:
            assert 0 <= index < len(values)
            assert isinstance(rejection, Rejection)
            assert rejection.reason and rejection.detail
            orjson.loads(dlq_record(rejection, 0, index))  # the DLQ record encodes
        for event in parsed.events:
            assert_within_contract(event)

        states: defaultdict[str, UserState] = defaultdict(UserState)
        for uid in {e.user_id for e in parsed.events}:
            fields = stored.get(uid, {})
            states[uid] = decode_fields(
                fields.get(LAYOUT.state_field), fields.get(DEDUPE_FIELD)
            )
        valid = [i for i in range(len(values)) if i not in set(rejected)]
        result = apply_batch(
            parsed.events, states, LATENESS, [positions[i] for i in valid]
        )
        assert sum(result.counts.values()) == len(parsed.events)
        for event in result.late:  # late events become DLQ records too
            orjson.loads(dlq_record(late_rejection(event, LATENESS), 0, 0))
        for uid in result.touched:
            assert_state_finite(states[uid])
            stored[uid] = encode_fields(LAYOUT, states[uid])
    return stored


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batches)
@example(  # finding 3: two purchases of revenue 1e308
    [[wire({"event_id": f"p{i}", "user_id": "u1", "event_type": "purchase",
            "ts": NOW * 1000, "revenue": 1e308}) for i in range(2)]]
)  # fmt: skip
@example(  # finding 1 and 4: ts -1e22, year 1, -1e14; epoch seconds
    [[wire({"event_id": f"t{i}", "user_id": "u1", "event_type": "page_view",
            "ts": ts}) for i, ts in enumerate(
                [-1e22, "0001-01-01T00:00:00+00:00", -1e14, NOW, 1e300])]]
)  # fmt: skip
@example([[None, b"", b"null", b"\xff\xfe", b'{"user_id": "\\ud800"}']])
def test_every_input_is_applied_or_rejected_and_state_stays_finite(
    batches: list[list[bytes | None]],
) -> None:
    stored = run_batches(batches)
    for fields in stored.values():
        state = decode_fields(fields[LAYOUT.state_field], fields[DEDUPE_FIELD])
        assert_state_finite(state)
        assert state.last_event_ts is not None
        for as_of in (NOW, state.last_event_ts, NOW + 90 * 86_400):
            assert_features_finite(state, as_of)


@settings(max_examples=150, deadline=None)
@given(st.one_of(event_dicts, st.dictionaries(any_text, anything, max_size=4)))
def test_mappings_from_python_callers_never_raise(raw: dict[str, Any]) -> None:
    # The importer's and simulator's path: already decoded mappings, which may hold
    # what JSON bytes never can (giant ints, NaN, lone surrogates, odd keys).
    result = parse_event(raw, now=NOW, max_future_seconds=MAX_FUTURE)
    if isinstance(result, Rejection):
        assert result.reason and result.detail
        orjson.loads(dlq_record(result, None, None))
        return
    assert_within_contract(result)
    state = UserState()
    apply_batch([result], {result.user_id: state}, LATENESS)
    fields = encode_fields(LAYOUT, state)
    again = decode_fields(fields[LAYOUT.state_field], fields[DEDUPE_FIELD])
    assert_state_finite(again)
    assert_features_finite(again, NOW)


@settings(max_examples=200, deadline=None)
@given(event_dicts)
def test_the_wire_form_is_pydantics_own_dump(raw: dict[str, Any]) -> None:
    # to_json builds the bytes from the fields directly (it runs for every event
    # the worker applies); they must stay what model_dump would give.
    result = parse_event(raw, now=NOW, max_future_seconds=MAX_FUTURE)
    if isinstance(result, Rejection):
        return
    reference = result.model_dump(mode="json", exclude_none=True)
    reference["ts"] = round(result.ts * 1000)
    assert result.to_json() == orjson.dumps(reference)
