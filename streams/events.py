"""Event contract v1: the typed, validated shape of one user event.

The same parser serves the Kafka agent, the file importer and the simulator's
self-check, so an event is valid in one place exactly when it is valid in all.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class EventType(StrEnum):
    """The closed set of behaviours the contract knows."""

    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    CHECKOUT = "checkout"
    PURCHASE = "purchase"


OptionalText = Annotated[str | None, Field(default=None, max_length=256)]


class Event(BaseModel):
    """One validated user event. ``ts`` is event time as epoch seconds (UTC)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    event_type: EventType
    ts: float
    session_id: OptionalText = None
    product_id: OptionalText = None
    category: OptionalText = None
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    quantity: int | None = Field(default=None, ge=1)
    revenue: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    device: OptionalText = None
    channel: OptionalText = None
    country: OptionalText = None

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> float:
        """Accept ISO-8601 with a zone, or epoch milliseconds."""
        if isinstance(value, bool):
            raise ValueError("ts must be ISO-8601 with zone or epoch milliseconds")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError("ts must be a finite number")
            return float(value) / 1000.0
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("ts is not ISO-8601") from exc
            if parsed.tzinfo is None:
                raise ValueError("ts must carry a time zone")
            return parsed.timestamp()
        raise ValueError("ts must be ISO-8601 with zone or epoch milliseconds")

    @model_validator(mode="after")
    def _purchase_revenue(self) -> Event:
        if self.event_type is EventType.PURCHASE and self.revenue is None:
            if self.price is None:
                raise ValueError("revenue: required for purchase events")
            # A purchase that only states price and quantity still has a revenue.
            object.__setattr__(self, "revenue", self.price * (self.quantity or 1))
        return self

    def to_json(self) -> bytes:
        """Serialize back to the wire format (ts as epoch milliseconds)."""
        payload = self.model_dump(mode="json", exclude_none=True)
        payload["ts"] = round(self.ts * 1000)
        return orjson.dumps(payload)


class Rejection(BaseModel):
    """Why an input could not become an :class:`Event`; what the DLQ carries."""

    reason: str
    detail: str
    raw: str


def _describe(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "event"
    message = first["msg"]
    if first["type"] == "missing":
        return f"missing:{field}", f"{field}: field required"
    if field == "event_type":
        return "unknown_event_type", f"event_type: {message}"
    if not first["loc"] and message.startswith("Value error, "):
        field = message.removeprefix("Value error, ").split(":", 1)[0]
    return f"invalid:{field}", f"{field}: {message}"


def parse_event(
    raw: bytes | str | dict[str, Any],
    *,
    now: float | None = None,
    max_future_seconds: int = 300,
    max_bytes: int = 16_384,
) -> Event | Rejection:
    """Validate one raw event; never raises for bad input.

    Args:
        raw: The message value (JSON bytes or text) or an already decoded mapping.
        now: Wall clock in epoch seconds, for the future-timestamp rule.
        max_future_seconds: How far ahead of ``now`` an event time may lie.
        max_bytes: Payloads larger than this are rejected unread.

    Returns:
        The event, or a :class:`Rejection` naming the reason.
    """
    if isinstance(raw, dict):
        data: Any = raw
        blob = b""
    else:
        blob = raw.encode() if isinstance(raw, str) else raw
        if len(blob) > max_bytes:
            return Rejection(
                reason="oversized",
                detail=f"{len(blob)} bytes > {max_bytes}",
                raw=_excerpt(blob),
            )
        try:
            data = orjson.loads(blob)
        except orjson.JSONDecodeError as exc:
            return Rejection(
                reason="malformed_json", detail=str(exc), raw=_excerpt(blob)
            )
    if not isinstance(data, dict):
        return Rejection(
            reason="malformed_json",
            detail="event must be a JSON object",
            raw=_excerpt(blob),
        )
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        reason, detail = _describe(exc)
        return Rejection(reason=reason, detail=detail, raw=_excerpt(blob or data))
    wall = time.time() if now is None else now
    if event.ts > wall + max_future_seconds:
        ahead = event.ts - wall
        return Rejection(
            reason="future_ts",
            detail=f"ts is {ahead:.0f}s in the future (max {max_future_seconds}s)",
            raw=_excerpt(blob or data),
        )
    return event


def _excerpt(raw: bytes | dict[str, Any]) -> str:
    """The start of a rejected input, as text for the DLQ record (built only then)."""
    if isinstance(raw, dict):
        return orjson.dumps(raw).decode()
    return raw[:2048].decode("utf-8", "replace")


def iso(ts: float) -> str:
    """Epoch seconds to an ISO-8601 UTC string."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()
