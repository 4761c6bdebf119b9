"""What the worker does with failures: which errors are outages, DLQ records.

An outage (the store unreachable, loading, read-only, out of memory...) is retried
by the worker until it passes; any other error while writing is deterministic for
the events involved, which become poison and go to the DLQ with their reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from core.events import Event, Rejection
from streams.processor import Parsed, parse_batch

log = logging.getLogger("segscore.worker")

PROCESSING_ERROR = "processing_error"

# Errors that say "the store cannot take this now", not "this input is bad".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # incl. BusyLoadingError (LOADING), auth, max clients
    redis.TimeoutError,
    redis.exceptions.InvalidResponse,  # a garbled reply; the connection is redone
    redis.exceptions.ClusterError,  # incl. CLUSTERDOWN, MASTERDOWN
    redis.exceptions.ReadOnlyError,  # READONLY: a replica during failover
    redis.exceptions.OutOfMemoryError,  # OOM: maxmemory reached; frees up
    redis.exceptions.NoPermissionError,  # NOPERM: configuration, fixed by ops
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # incl. MOVED: resharding
    OSError,  # incl. TimeoutError, ConnectionResetError
    MemoryError,
)
# Server replies redis-py has no class for that also pass by themselves.
_TRANSIENT_REPLIES = frozenset({"MISCONF", "BUSY", "NOREPLICAS", "NOTREADY"})
_PIPELINE_ERROR = "caused error: "  # how redis-py annotates a pipeline's error


def is_transient(error: BaseException) -> bool:
    """Whether retrying can fix ``error`` (an outage), as opposed to bad input.

    The write path retries transient errors forever; any other error there is
    deterministic for the events involved and makes them poison (DLQ).
    """
    if isinstance(error, _TRANSIENT_ERRORS):
        return True
    if isinstance(error, redis.ResponseError):
        reply = str(error).split(_PIPELINE_ERROR, 1)[-1]
        return reply.split(" ", 1)[0] in _TRANSIENT_REPLIES
    return False


class PoisonBatch(Exception):
    """Writing this batch failed in a way no retry can fix: some event is poison."""


def dlq_record(
    rejection: Rejection, partition: int | None, offset: int | None
) -> bytes:
    """The DLQ message for a rejected event: reason, detail, the raw input, origin."""
    return orjson.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "raw": rejection.raw,
            "partition": partition,
            "offset": offset,
            "rejected_at": time.time(),
        }
    )


def late_rejection(event: Event, lateness_seconds: int) -> Rejection:
    """A rejection for an event beyond the allowed lateness."""
    return Rejection(
        reason="late",
        detail=f"more than {lateness_seconds}s older than the user's newest event",
        raw=event.to_json().decode(),
    )


def poison_rejection(event: Event, error: BaseException) -> Rejection:
    """A rejection for a valid event the feature step could not process."""
    return Rejection(
        reason=PROCESSING_ERROR,
        detail=f"{type(error).__name__}: {error}"[:1000],
        raw=event.to_json().decode(),
    )


def parse_isolating(values: list[bytes | None], **limits: Any) -> Parsed:
    """:func:`streams.processor.parse_batch`, which must not raise; if it does
    anyway, the batch is parsed message by message and whatever raises is a
    ``processing_error`` rejection, rather than a stopped worker.
    """
    try:
        return parse_batch(values, **limits)
    except Exception:
        log.exception("parse_batch raised; parsing the batch one by one")
    parsed = Parsed()
    for index, value in enumerate(values):
        try:
            one = parse_batch([value], **limits)
        except Exception as exc:
            text = bytes(value or b"")[:2048].decode("utf-8", "replace")
            rejection = Rejection(
                reason=PROCESSING_ERROR,
                detail=f"{type(exc).__name__}: {exc}"[:1000],
                raw=text,
            )
            parsed.rejections.append((index, rejection))
            continue
        parsed.events.extend(one.events)
        parsed.rejections.extend((index, r) for _, r in one.rejections)
    return parsed


@dataclass
class DeadLetter:
    """A DLQ record to produce, keyed as the original (or by user)."""

    key: bytes | None
    value: bytes
    reason: str


def dead_letter(
    source: Any, rejection: Rejection, event: Event | None = None
) -> DeadLetter:
    """The DLQ record of ``rejection`` for the Kafka record ``source`` (if known)."""
    if source is not None:
        key = source.key
    else:
        key = event.user_id.encode() if event is not None else None
    record = dlq_record(
        rejection,
        getattr(source, "partition", None),
        getattr(source, "offset", None),
    )
    return DeadLetter(key=key, value=record, reason=rejection.reason)


async def send_letters(dlq_topic: Any, letters: list[DeadLetter]) -> None:
    """Send every DLQ record and wait until the broker has them all."""
    futures = [
        await dlq_topic.send(key=letter.key, value=letter.value) for letter in letters
    ]
    await asyncio.gather(*futures)
