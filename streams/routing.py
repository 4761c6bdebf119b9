"""Which partition owns a user, and whether a record sits where its owner reads it.

Why: a user's state must have one writer. Workers cache the states of the users
of the partitions they own (:mod:`streams.state_cache`) and write them back
whole; two workers applying events of one user from two partitions would each
write their own copy and one would overwrite the other (a lost update). So every
user has one *canonical* partition of the events topic -- the one Kafka's default
partitioner picks for the key ``user_id``: ``murmur2(user_id) % partitions``
(aiokafka's and the Java client's; librdkafka's default is CRC32 unless the
producer sets ``partitioner=murmur2_random``) -- and only the worker owning it
applies the user's events.

A record is *misrouted* when its key is not exactly the payload's ``user_id``
(no key, a key that differs even by spaces, another id) or when it is not on
the user's canonical partition (an explicit partition, another partitioner, or a
topic that gained partitions since it was written). The worker does not apply a
misrouted record where it finds it: it produces the original value again to the
events topic, key = ``user_id``, to the canonical partition (explicitly), waits
until the broker has it, and only then lets the original's offset be committed.
The copy is applied by the owner like any other record.

Why nothing is lost or counted twice:
- Lost: the original's offset is committed only after the copy is acknowledged;
  a crash in between replays the original, which is re-routed again.
- Twice: such a crash can leave two copies (same ``event_id``) on the canonical
  partition. The second is a duplicate by event id while the first is within
  the allowed lateness of the user's newest event; if it is older than that, it
  is refused as ``late`` (a DLQ record, never a second count). Copies are new
  records with their own offsets, so per-partition offsets
  (:attr:`core.user_state.UserState.offsets`) never mistake a copy for a
  replay, nor an original on another partition for one.
- A topic that gains partitions changes some users' canonical partition. Their
  records still on the old partition are re-routed to the new one; the state
  keeps one offset per partition, so replay detection stays right on both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2

# Beyond this many users the cache starts again (a few hundred bytes per user).
MAX_CACHED_USERS = 500_000


def canonical_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key ``user_id``."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


class Router:
    """Canonical partitions (and record keys) of users, cached per user.

    murmur2 is pure Python in aiokafka (a few microseconds); the cache makes the
    per-record check a dictionary lookup and two comparisons.
    """

    def __init__(self, max_users: int = MAX_CACHED_USERS) -> None:
        self.max_users = max_users
        self._partitions = 0
        self._owners: dict[str, tuple[bytes, int]] = {}

    def owner(self, user_id: str, partitions: int) -> tuple[bytes, int]:
        """The record key and canonical partition of ``user_id``."""
        if partitions != self._partitions:
            # The topic changed size: every canonical partition may have moved.
            self._owners = {}
            self._partitions = partitions
        found = self._owners.get(user_id)
        if found is None:
            if len(self._owners) >= self.max_users:
                self._owners = {}
            found = self._owners[user_id] = (
                user_id.encode(),
                canonical_partition(user_id, partitions),
            )
        return found

    def misrouted(
        self, user_id: str, key: bytes | None, partition: int, partitions: int
    ) -> bool:
        """Whether a record of ``user_id`` with this key, on this partition, must
        be re-routed (see the module docstring)."""
        want_key, want_partition = self.owner(user_id, partitions)
        return partition != want_partition or key != want_key


@dataclass
class Move:
    """A misrouted record, to be produced again to its user's own partition."""

    key: bytes
    value: bytes
    partition: int


async def send_moves(events_topic: Any, moves: list[Move]) -> None:
    """Produce misrouted records to their users' partitions; wait for all."""
    futures = [
        await events_topic.send(key=m.key, value=m.value, partition=m.partition)
        for m in moves
    ]
    await asyncio.gather(*futures)
