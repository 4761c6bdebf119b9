"""Event contract v1: what is accepted, and the reason for what is not."""

from __future__ import annotations

import pytest

from streams.events import Event, EventType, Rejection, parse_event

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
