"""Event contract v1: the typed, validated shape of one user event.

The same parser serves the stream worker, the file importer and the simulator's
self-check, so an event is valid in one place exactly when it is valid in all.

Limits (docs/events.md is the user-facing copy of these rules):

* ``ts`` is ISO-8601 text with a zone, or an epoch number: ``|ts| < 1e11`` is
  epoch *seconds*, anything larger epoch *milliseconds*. No accepted instant is
  ambiguous: 1e11 seconds is the year 5138 and 1e11 milliseconds March 1973, both
  outside the accepted range. Numeric text (``"1700000000"``) is not a time on the
  wire (JSON has numbers for that); only CSV, which has no types, reads digits as
  numbers.
* Accepted times lie between a floor (setting ``min_event_time``, default
  1990-01-01 UTC; earlier is ``too_old``) and ``max_future_seconds`` after now
  (later is ``future_ts``).
* ``price`` and ``revenue`` lie in ``[0, MAX_AMOUNT]``, ``quantity`` in
  ``[1, MAX_QUANTITY]``, and a purchase's revenue derived as price x quantity
  must not exceed ``MAX_AMOUNT`` either: every sum a user's state keeps stays
  finite, whatever the stream sends.
"""

from __future__ import annotations

import math
import re
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

# |ts| below this is epoch seconds, at or above it epoch milliseconds (see above).
EPOCH_MS_THRESHOLD = 1e11
# The default floor of event time (1990-01-01T00:00:00Z), as Settings.min_event_time.
DEFAULT_MIN_TS = 631_152_000.0
# Largest price or revenue of one event: far above any real order, far below the
# ~1.8e308 at which a user's sums would overflow to inf.
MAX_AMOUNT = 1e9
# Largest quantity of one event.
MAX_QUANTITY = 1_000_000
# Numeric text as a wire ts: refused with its own message (see the module doc).
_NUMERIC_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def epoch_seconds(number: float) -> float:
    """An epoch number as seconds: ``|number| < 1e11`` is seconds, else milliseconds."""
    return number if abs(number) < EPOCH_MS_THRESHOLD else number / 1000.0


class EventType(StrEnum):
    """The closed set of behaviours the contract knows."""

    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    CHECKOUT = "checkout"
    PURCHASE = "purchase"

    # Hashed as the text it equals, in C: Enum's own hash is a Python call on
    # the name (every event's type is looked up in tables several times), and
    # disagrees with ``==`` on the text.
    __hash__ = str.__hash__


_PURCHASE = EventType.PURCHASE

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
    price: float | None = Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False)
    quantity: int | None = Field(default=None, ge=1, le=MAX_QUANTITY)
    revenue: float | None = Field(
        default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False
    )
    device: OptionalText = None
    channel: OptionalText = None
    country: OptionalText = None

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> float:
        """ISO-8601 with a zone, or an epoch number (seconds below 1e11, else ms)."""
        kind = type(value)
        # The wire's usual form (a JSON number) skips the checks for the others.
        if kind is not int and kind is not float:
            if isinstance(value, bool):
                raise ValueError(_TS_FORMS)
            if isinstance(value, str):
                return _parse_ts_text(value)
            if not isinstance(value, int | float):
                raise ValueError(_TS_FORMS)
        try:
            number = float(value)
        except OverflowError as exc:  # a JSON-less caller's giant int
            raise ValueError("ts is out of range") from exc
        if not math.isfinite(number):
            raise ValueError("ts must be a finite number")
        return epoch_seconds(number)

    @model_validator(mode="after")
    def _purchase_revenue(self) -> Event:
        # Checked per event: the revenue test first, and the member as a global
        # (an enum class attribute is slower to reach).
        if self.revenue is None and self.event_type is _PURCHASE:
            if self.price is None:
                raise ValueError("revenue: required for purchase events")
            # A purchase that only states price and quantity still has a revenue.
            revenue = self.price * (self.quantity or 1)
            if revenue > MAX_AMOUNT:
                raise ValueError(
                    f"revenue: price x quantity = {revenue:g} is above the limit "
                    f"{MAX_AMOUNT:g}"
                )
            object.__setattr__(self, "revenue", revenue)
        return self

    def to_json(self) -> bytes:
        """Serialize back to the wire format (ts as epoch milliseconds).

        The same bytes as ``model_dump(mode="json", exclude_none=True)`` would
        give (a test holds them equal), from the fields directly: half the cost,
        and the worker writes every event it applies into the user's recent list.
        """
        payload = {k: v for k, v in self.__dict__.items() if v is not None}
        payload["ts"] = round(self.ts * 1000)
        return orjson.dumps(payload)


_TS_FORMS = "ts must be ISO-8601 with a zone, or epoch seconds or milliseconds"


def _parse_ts_text(value: str) -> float:
    """A text ``ts``: ISO-8601 with a zone (numeric text is refused, see above)."""
    if _NUMERIC_TEXT.fullmatch(value):
        raise ValueError("ts: an epoch time must be a JSON number, not text")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("ts is not ISO-8601") from exc
    if parsed.tzinfo is None:
        raise ValueError("ts must carry a time zone")
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError) as exc:  # an offset past year 9999
        raise ValueError("ts is out of range") from exc


class Rejection(BaseModel):
    """Why an input could not become an :class:`Event`; what the DLQ carries."""

    reason: str
    detail: str
    raw: str


def _describe(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "event"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        return f"missing:{field}", f"{field}: field required"
    if field == "event_type":
        # The value itself: "Input should be ..." alone leaves a producer guessing
        # which of its names was refused. Capped, it may be any length.
        given = repr(first.get("input"))[:80]
        choices = ", ".join(EventType)
        return "unknown_event_type", f"event_type: {given} is not one of {choices}"
    if not first["loc"]:
        field = message.split(":", 1)[0]
    if message.startswith(f"{field}:") or message.startswith(f"{field} "):
        return f"invalid:{field}", message  # it names the field already
    return f"invalid:{field}", f"{field}: {message}"


def parse_event(
    raw: bytes | str | dict[str, Any] | None,
    *,
    now: float | None = None,
    max_future_seconds: int = 300,
    max_bytes: int = 16_384,
    min_ts: float = DEFAULT_MIN_TS,
) -> Event | Rejection:
    """Validate one raw event; never raises for bad input.

    Args:
        raw: The message value (JSON bytes or text) or an already decoded mapping;
            ``None`` is a Kafka tombstone (a record without a value).
        now: Wall clock in epoch seconds, for the future-timestamp rule.
        max_future_seconds: How far ahead of ``now`` an event time may lie.
        max_bytes: Payloads larger than this are rejected unread.
        min_ts: The floor of event time in epoch seconds (``Settings.min_event_time``):
            earlier events are rejected as ``too_old``.

    Returns:
        The event, or a :class:`Rejection` naming the reason.
    """
    if raw is None:
        return Rejection(
            reason="tombstone",
            detail="null message value (a tombstone) is not an event",
            raw="",
        )
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
    if not blob:
        # A mapping from a Python caller may hold text JSON cannot carry (a lone
        # surrogate); decoded JSON never does. It would break the state's encoding.
        broken = _unencodable_text(event)
        if broken is not None:
            return Rejection(
                reason=f"invalid:{broken}",
                detail=f"{broken}: not valid Unicode text (a lone surrogate)",
                raw=_excerpt(data),
            )
    if event.ts < min_ts:
        return Rejection(
            reason="too_old",
            detail=(
                f"ts {_when(event.ts)} is before {_when(min_ts)}, the earliest event "
                "time accepted (setting min_event_time)"
            ),
            raw=_excerpt(blob or data),
        )
    wall = time.time() if now is None else now
    if event.ts > wall + max_future_seconds:
        ahead = event.ts - wall
        return Rejection(
            reason="future_ts",
            detail=f"ts is {ahead:.6g}s in the future (max {max_future_seconds}s)",
            raw=_excerpt(blob or data),
        )
    return event


def _unencodable_text(event: Event) -> str | None:
    """The first text field of ``event`` that has no UTF-8 form, if any."""
    for name, value in event:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return name
    return None


def _when(ts: float) -> str:
    """An epoch time for a message: ISO-8601 where datetime can show it."""
    try:
        return iso(ts)
    except (OverflowError, ValueError, OSError):
        return f"{ts:g} (epoch seconds)"


def _excerpt(raw: bytes | dict[str, Any]) -> str:
    """The start of a rejected input, as text for the DLQ record (built only then)."""
    if isinstance(raw, dict):
        try:
            return orjson.dumps(raw).decode()[:2048]
        except (orjson.JSONEncodeError, TypeError):  # odd keys, objects, surrogates
            return repr(raw)[:2048]
    return raw[:2048].decode("utf-8", "replace")


def iso(ts: float) -> str:
    """Epoch seconds to an ISO-8601 UTC string."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()
