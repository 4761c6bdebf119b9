"""Event contract v1: what is accepted, and the reason for what is not."""

from __future__ import annotations

import pytest

from core.events import (
    DEFAULT_MIN_TS,
    EPOCH_MS_THRESHOLD,
    MAX_AMOUNT,
    MAX_QUANTITY,
    Event,
    EventType,
    Rejection,
    epoch_seconds,
    parse_event,
)
from infra.settings import Settings

NOW = 1_800_000_000.0


def valid(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "user_id": "u1",
        "event_type": "product_view",
        "ts": "2027-01-15T08:00:00+00:00",
        "price": 12.5,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_iso_and_epoch_ms_give_the_same_time() -> None:
    iso = parse_event(valid(ts="2027-01-15T09:00:00+01:00"), now=NOW)
    epoch = parse_event(valid(ts=1_800_000_000_000), now=NOW)
    assert isinstance(iso, Event) and isinstance(epoch, Event)
    assert iso.ts == epoch.ts == 1_800_000_000.0
    assert iso.event_type is EventType.PRODUCT_VIEW


def test_purchase_revenue_defaults_to_price_times_quantity() -> None:
    event = parse_event(valid(event_type="purchase", price=10.0, quantity=3), now=NOW)
    assert isinstance(event, Event)
    assert event.revenue == 30.0


def test_round_trip_through_the_wire_format() -> None:
    event = parse_event(valid(), now=NOW)
    assert isinstance(event, Event)
    again = parse_event(event.to_json(), now=NOW)
    assert again == event


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"{not json", "malformed_json", ""),
        (b"[1, 2]", "malformed_json", ""),
        (valid(user_id=None), "missing:user_id", "user_id"),
        (valid(user_id=""), "invalid:user_id", "user_id"),
        (valid(user_id="x" * 129), "invalid:user_id", "user_id"),
        (valid(event_type="teleport"), "unknown_event_type", "event_type"),
        (valid(ts="2027-01-15T08:00:00"), "invalid:ts", "ts"),
        (valid(ts="yesterday"), "invalid:ts", "ts"),
        (valid(price=-1), "invalid:price", "price"),
        (valid(quantity=0), "invalid:quantity", "quantity"),
        (valid(quantity="many"), "invalid:quantity", "quantity"),
        (valid(event_type="purchase", price=None), "invalid:revenue", "revenue"),
        (valid(ts=(NOW + 3600) * 1000), "future_ts", "ts"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(
    raw: object, reason: str, field: str
) -> None:
    result = parse_event(raw, now=NOW)  # type: ignore[arg-type]
    assert isinstance(result, Rejection)
    assert result.reason == reason
    if field and reason != "future_ts":
        assert result.detail.startswith(field)


def test_oversized_payload_is_rejected_unparsed() -> None:
    blob = b'{"event_id": "' + b"x" * 20_000 + b'"}'
    result = parse_event(blob, now=NOW, max_bytes=16_384)
    assert isinstance(result, Rejection)
    assert result.reason == "oversized"
    assert len(result.raw) <= 2048


def test_non_finite_event_times_are_invalid() -> None:
    for ts in (float("inf"), float("-inf"), float("nan")):
        raw = {"event_id": "e", "user_id": "u", "event_type": "page_view", "ts": ts}
        result = parse_event(raw, now=1_800_000_000.0)
        assert isinstance(result, Rejection) and result.reason == "invalid:ts"


def test_epoch_seconds_and_milliseconds_are_told_apart_by_size() -> None:
    seconds = parse_event(valid(ts=1_700_000_000), now=NOW)
    millis = parse_event(valid(ts=1_700_000_000_000), now=NOW)
    iso = parse_event(valid(ts="2023-11-14T22:13:20Z"), now=NOW)
    assert isinstance(seconds, Event) and isinstance(millis, Event)
    assert isinstance(iso, Event)
    assert seconds.ts == millis.ts == iso.ts == 1_700_000_000.0
    # The wire form (ms) reads back as the same instant.
    again = parse_event(seconds.to_json(), now=NOW)
    assert isinstance(again, Event) and again.ts == seconds.ts
    assert epoch_seconds(EPOCH_MS_THRESHOLD - 1) == EPOCH_MS_THRESHOLD - 1
    assert epoch_seconds(EPOCH_MS_THRESHOLD) == EPOCH_MS_THRESHOLD / 1000


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00+00:00",
        "1989-12-31T23:59:59.999Z",
        631_151_999,
        0,
        -1,
        100_000_000_000,  # 1e11 is milliseconds: March 1973
        -1e14,
        -1e22,
        -1e308,
    ],
)
def test_times_before_the_floor_are_too_old(ts: object) -> None:
    result = parse_event(valid(ts=ts), now=NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == "too_old"
    assert "1990-01-01T00:00:00+00:00" in result.detail


def test_the_floor_is_a_parameter_and_matches_the_setting() -> None:
    assert Settings().min_event_time.timestamp() == DEFAULT_MIN_TS
    floor = parse_event(valid(ts=DEFAULT_MIN_TS), now=NOW)
    assert isinstance(floor, Event)
    later = 1_700_000_000.0
    result = parse_event(valid(ts=later - 1), now=NOW, min_ts=later)
    assert isinstance(result, Rejection) and result.reason == "too_old"
    assert "2023-11-14T22:13:20+00:00" in result.detail


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        (99_999_999_999, "future_ts"),  # seconds: the year 5138
        (1e300, "future_ts"),
        (2**64 - 1, "future_ts"),
        ("9999-12-31T23:59:59-14:00", "future_ts"),
        ("10000-01-01T00:00:00+00:00", "invalid:ts"),
        (10**400, "invalid:ts"),  # only a Python caller can pass this
        (-(10**400), "invalid:ts"),
        ("1700000000", "invalid:ts"),  # numeric text is not a wire time
        ("1.7e12", "invalid:ts"),
    ],
)
def test_extreme_and_textual_times_are_rejected_cleanly(
    ts: object, reason: str
) -> None:
    result = parse_event(valid(ts=ts), now=NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    if reason == "invalid:ts":
        assert result.detail.startswith("ts")


@pytest.mark.parametrize(
    ("over", "field", "limit"),
    [
        ({"price": MAX_AMOUNT * 1.0001}, "price", "1000000000"),
        ({"price": 1e308}, "price", "1000000000"),
        ({"quantity": MAX_QUANTITY + 1}, "quantity", "1000000"),
        ({"quantity": 10**30}, "quantity", "1000000"),
        ({"event_type": "purchase", "revenue": 1e308}, "revenue", "1000000000"),
        (
            {"event_type": "purchase", "price": 2e5, "quantity": 10_000},
            "revenue",
            "1e+09",
        ),
    ],
)
def test_numbers_above_the_contract_limits_are_invalid(
    over: dict[str, object], field: str, limit: str
) -> None:
    result = parse_event(valid(**over), now=NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == f"invalid:{field}"
    assert result.detail.startswith(field) and limit in result.detail


def test_the_limits_themselves_are_accepted() -> None:
    event = parse_event(
        valid(event_type="purchase", price=1e3, quantity=MAX_QUANTITY), now=NOW
    )
    assert isinstance(event, Event) and event.revenue == MAX_AMOUNT


def test_a_tombstone_and_unrepresentable_mappings_are_rejections() -> None:
    tombstone = parse_event(None, now=NOW)
    assert isinstance(tombstone, Rejection) and tombstone.reason == "tombstone"
    odd = [
        (valid(user_id="\ud800"), "invalid:user_id"),
        (valid(category="a\udc80b"), "invalid:category"),
        (valid(price=object()), "invalid:price"),
        ({**valid(), 1: "x", "price": -1}, "invalid:price"),
    ]
    for raw, reason in odd:
        result = parse_event(raw, now=NOW)  # type: ignore[arg-type]
        assert isinstance(result, Rejection), raw
        assert result.reason == reason
    # On the wire a lone surrogate never decodes.
    wire = parse_event(b'{"event_id": "\\ud800"}', now=NOW)
    assert isinstance(wire, Rejection) and wire.reason == "malformed_json"


class _Millis(int):
    """An int subclass, as a Python caller's enum or numpy-like scalar may be."""


class _Seconds(float):
    """A float subclass (numpy.float64 is one)."""


@pytest.mark.parametrize(
    ("ts", "want"),
    [
        (1_700_000_000_000, 1_700_000_000.0),
        (1_700_000_000.5, 1_700_000_000.5),
        (_Millis(1_700_000_000_000), 1_700_000_000.0),
        (_Seconds(1_700_000_000.25), 1_700_000_000.25),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        (True, None),  # a bool is an int to Python, never a time
        (False, None),
        (None, None),
        ([1_700_000_000], None),
        (b"1700000000", None),
    ],
)
def test_every_kind_of_ts_is_read_or_refused_as_the_contract_says(
    ts: object, want: float | None
) -> None:
    result = parse_event(valid(ts=ts) if ts is not None else {**valid(), "ts": None})
    if want is None:
        assert isinstance(result, Rejection), result
        assert result.reason == "invalid:ts"
        assert result.detail.startswith("ts")
    else:
        assert isinstance(result, Event), result
        assert result.ts == want and type(result.ts) is float
