"""The HTTP event collector: ``POST /events`` for sites that cannot speak Kafka.

A body is one event object, a JSON list of them, or ``{"events": [...]}``. Every
event is validated by the stream's own contract (:func:`core.events.parse_event`),
so an event the collector accepts is one the worker accepts. A batch is all or
nothing: one bad event answers 422 listing each bad event by index and field, and
nothing is produced. Accepted events are produced to the events topic, keyed by
``user_id``, and acknowledged by every in-sync replica (``acks=all``) before the
202: what the collector accepted survives the loss of a broker.

A broker that is down or too slow answers 503 with ``Retry-After`` within
``collector_produce_timeout_seconds``. Part of such a batch may have reached the
topic; resending the same events is safe, because the worker drops replays by
``event_id`` (clients must therefore keep an event's id when they retry).

The producer starts on the first ``POST /events`` of a worker process, not at
start-up: scoring must not wait for, or fail with, the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.events import Event, Rejection, parse_event
from infra.local_stack import StackError
from infra.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH = "/events"
# Errors listed in one 422 body; the count says how many there were in all.
MAX_LISTED_ERRORS = 100


@dataclass(frozen=True)
class EventError:
    """One bad event of a request: where it is and why it was refused."""

    index: int
    field: str
    reason: str
    detail: str


@dataclass(frozen=True)
class BadRequest:
    """A body that is not an event, a list of events or ``{"events": [...]}``."""

    status: int
    field: str
    detail: str


def _field_of(rejection: Rejection) -> str:
    """The event field a rejection is about ("" for the event as a whole)."""
    reason = rejection.reason
    if reason.startswith(("missing:", "invalid:")):
        return reason.split(":", 1)[1]
    if reason == "unknown_event_type":
        return "event_type"
    if reason in ("future_ts", "too_old"):
        return "ts"
    return ""


def _items(document: Any, max_events: int) -> tuple[list[Any], bool] | BadRequest:
    """The request's events and whether it was a batch, or why it is no request."""
    if isinstance(document, dict) and set(document) == {"events"}:
        document = document["events"]
        if not isinstance(document, list):
            return BadRequest(422, "events", "events: must be a list of events")
    if isinstance(document, dict):
        return [document], False
    if not isinstance(document, list):
        return BadRequest(
            422,
            "body",
            'body: expected an event object, a list of events or {"events": [...]}',
        )
    if not document:
        return BadRequest(422, "events", "events: at least one event is required")
    if len(document) > max_events:
        return BadRequest(
            413, "events", f"events: at most {max_events} events per request"
        )
    return document, True


def validate_body(
    body: bytes, settings: Settings, now: float | None = None
) -> tuple[list[Event], list[EventError]] | BadRequest:
    """Parse and validate a ``POST /events`` body with the stream's contract.

    Returns:
        The valid events and every bad event's error (a request is accepted only
        without errors), or why the body as a whole is not a request.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BadRequest(400, "body", f"body: not JSON ({exc})")
    found = _items(document, settings.collector_max_events)
    if isinstance(found, BadRequest):
        return found
    items, batch = found
    wall = time.time() if now is None else now
    events: list[Event] = []
    errors: list[EventError] = []
    for index, item in enumerate(items):
        prefix = f"events[{index}]" if batch else ""
        # As the record would reach the worker: its own checks (an object, the
        # size limit, the contract) decide, on the same bytes.
        parsed = parse_event(
            orjson.dumps(item),
            now=wall,
            max_future_seconds=settings.max_future_seconds,
            max_bytes=settings.max_event_bytes,
            min_ts=settings.min_event_time.timestamp(),
        )
        if isinstance(parsed, Rejection):
            name = _field_of(parsed)
            path = ".".join(p for p in (prefix, name) if p) or "event"
            errors.append(EventError(index, path, parsed.reason, parsed.detail))
        else:
            events.append(parsed)
    return events, errors


def error_body(errors: Sequence[EventError]) -> dict[str, Any]:
    """The 422 body: the first error in ``detail``, each one in ``errors``."""
    first = errors[0]
    detail = first.detail
    if first.field and not detail.startswith(first.field):
        detail = f"{first.field}: {detail}"
    return {
        "error": "invalid events",
        "detail": detail,
        "invalid_events": len(errors),
        "errors": [
            {"index": e.index, "field": e.field, "reason": e.reason, "detail": e.detail}
            for e in errors[:MAX_LISTED_ERRORS]
        ],
    }


class BrokerUnavailable(RuntimeError):
    """The events could not be acknowledged by the broker in time."""


class EventSink:
    """Produces validated events to the events topic; one per worker process."""

    def __init__(
        self, broker: Callable[[], str], topic: str, timeout_seconds: float
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._broker(),
                    acks="all",
                    linger_ms=1,
                    request_timeout_ms=int(self._timeout * 1000),
                )
                try:
                    await producer.start()
                except BaseException:
                    await _stop_quietly(producer)
                    raise
                self._producer = producer
            return self._producer

    async def deliver(self, events: Sequence[Event]) -> None:
        """Produce ``events`` and wait until the broker has acknowledged all.

        Raises:
            BrokerUnavailable: The broker did not take them within the timeout
                (some may have been written; a resend is deduplicated).
        """
        try:
            async with asyncio.timeout(self._timeout):
                producer = await self._started()
                pending = [
                    await producer.send(
                        self._topic, value=e.to_json(), key=e.user_id.encode()
                    )
                    for e in events
                ]
                await asyncio.gather(*pending)
        except (KafkaError, OSError, TimeoutError, StackError) as exc:
            await self._reset()
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _reset(self) -> None:
        # A producer that failed may hold a dead connection or a full queue; the
        # next request starts afresh. Stopping waits for its queue, so it is
        # bounded and runs in the background.
        producer, self._producer = self._producer, None
        if producer is not None:
            asyncio.get_running_loop().create_task(_stop_quietly(producer))

    async def close(self) -> None:
        """Flush and stop the producer (service shutdown)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer, timeout: float = 5.0) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await producer.stop()
