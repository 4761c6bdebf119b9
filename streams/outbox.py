"""The states' outboxes: live segment changes and fired triggers, produced.

A record is written into its user's state in the same ``HSET`` as whatever made
it (see :mod:`streams.live_segments` and :mod:`streams.triggers`), in the hash
field :data:`core.store.state_store.OUTBOX_FIELD`. Here it is produced to its
topic, keyed by user, while the worker goes on with the next batch
(:class:`Outbox` tracks what is in flight, so nothing is sent twice by one
worker). Once the broker has acknowledged a record, it leaves the in-memory
state, and the field is emptied (``HDEL``) or rewritten in the worker's next
write: the next batch's or the next timer tick's, at most
``TIMER_TICK_SECONDS`` later, never with a state rewrite of its own.

So a record is never lost: a crash before its acknowledgement leaves it in the
stored field, and it goes out when the state is next loaded (the replay of the
uncommitted batch loads it: offsets are committed only once every delivery
before them is acknowledged). A crash between the acknowledgement and the
emptying sends it again with the same ``id``, which consumers use to
deduplicate.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from core.store.state_store import OUTBOX_FIELD, outbox_value
from core.user_state import UserState


class Pending(NamedTuple):
    """One record to produce: whose, which topic (trigger or segment change)."""

    user: str
    trigger: bool
    record: dict[str, Any]
    id: str  # the record's id (``<user>:<seq>``, ``<user>:r<seq>``)


def pending(states: dict[str, UserState]) -> dict[str, UserState]:
    """The states holding records not produced yet."""
    return {u: s for u, s in states.items() if s.segment_outbox or s.rules.outbox}


class Outbox:
    """The records in flight to the broker, and those it acknowledged.

    Records are taken (:meth:`take_new`) and acknowledged on the event loop;
    the acknowledgements are drained (:meth:`take_acked`) by the thread that
    writes states, so only that thread changes a state's outbox.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._acked: dict[str, set[str]] = {}

    def take_new(self, states: dict[str, UserState]) -> list[Pending]:
        """Records of ``states`` not in flight nor acknowledged; now in flight."""
        found: list[Pending] = []
        with self._lock:
            in_flight, acked = self._in_flight, self._acked
            for user, state in states.items():
                done = acked.get(user, ())
                for trigger, records in (
                    (False, state.segment_outbox),
                    (True, state.rules.outbox),
                ):
                    for record in records:
                        rid = str(record.get("id"))
                        if rid not in in_flight and rid not in done:
                            in_flight.add(rid)
                            found.append(Pending(user, trigger, record, rid))
        return found

    def acknowledged(self, items: list[Pending]) -> None:
        """The broker has ``items``: they are to leave their states' outboxes."""
        with self._lock:
            for item in items:
                self._in_flight.discard(item.id)
                self._acked.setdefault(item.user, set()).add(item.id)

    def has_acked(self) -> bool:
        """Whether acknowledged records wait to leave their states."""
        return bool(self._acked)

    def take_acked(self) -> dict[str, set[str]]:
        """The acknowledged records' ids by user, handed over (see :meth:`restore`)."""
        with self._lock:
            acked, self._acked = self._acked, {}
        return acked

    def restore(self, acked: dict[str, set[str]]) -> None:
        """Put back what :meth:`take_acked` gave, when the write emptying it failed."""
        with self._lock:
            for user, ids in acked.items():
                self._acked.setdefault(user, set()).update(ids)

    def forget(self) -> None:
        """Drop the acknowledgements not yet drained (the cache was dropped)."""
        with self._lock:
            self._acked.clear()


def drain(
    acked: dict[str, set[str]],
    states: dict[str, UserState],
    peek: Callable[[str], tuple[UserState, bytes] | None],
    key_of: Callable[[str], bytes],
) -> list[tuple[Any, ...]]:
    """Take acknowledged records out of their states; the commands storing that.

    ``states`` are the write's own (loaded or cached); ``peek`` finds other
    cached users. A user in neither is left alone: their stored field may hold
    newer records than this worker knows of, and a record sent twice has the
    same id. The commands go before the write's states (a state written in it
    stores its outbox again, whole).
    """
    commands: list[tuple[Any, ...]] = []
    for user, ids in acked.items():
        state = states.get(user)
        key = None
        if state is None:
            found = peek(user)
            if found is None:
                continue
            state, key = found
        state.segment_outbox = _without(state.segment_outbox, ids)
        state.rules.outbox = _without(state.rules.outbox, ids)
        key = key or key_of(user)
        value = outbox_value(state)
        if value is None:
            commands.append((b"HDEL", key, OUTBOX_FIELD))
        else:
            commands.append((b"HSET", key, OUTBOX_FIELD, value))
    return commands


def _without(
    records: tuple[dict[str, Any], ...], ids: set[str]
) -> tuple[dict[str, Any], ...]:
    return tuple(r for r in records if r.get("id") not in ids)


async def send(items: list[Pending], changes_topic: Any, triggers_topic: Any) -> None:
    """Produce ``items`` in order (Faust-like ``send``), keyed by user; wait for all.

    A record whose topic is None belongs to a feature now off: it is dropped.
    """
    futures = []
    for item in items:
        topic = triggers_topic if item.trigger else changes_topic
        if topic is not None:
            value = orjson.dumps(item.record)
            futures.append(await topic.send(key=item.user.encode(), value=value))
    await asyncio.gather(*futures)
