"""The worker's in-memory copy of the user states of the partitions it owns.

Redis holds the authoritative state; this cache only saves re-reading and
re-parsing it for users seen recently. It stays equal to Redis because:

- a user's events all live in one partition, so only the partition's owner writes
  the user's state, and the owner updates the cache only after Redis has the write;
- the worker drops a partition's users when the partition is revoked (another
  worker may write them before it comes back) -- see :meth:`StateCache.drop_partitions`;
- after any failed write the batch's users are evicted (:meth:`StateCache.evict`),
  because the failed attempt may have mutated them; the retry reloads them.

Least recently used users are evicted beyond ``max_users``.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.user_state import UserState

Partition = tuple[str, int]


class StateCache:
    """User id -> (state, Redis key, partition), in least-recently-used order."""

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._entries: dict[str, tuple[UserState, bytes, Partition | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def take(
        self, user_ids: Iterable[str]
    ) -> tuple[dict[str, UserState], dict[str, bytes], list[str]]:
        """Cached states and Redis keys of ``user_ids`` (marked recently used),
        and the ids missing."""
        entries = self._entries
        found: dict[str, UserState] = {}
        keys: dict[str, bytes] = {}
        missing: list[str] = []
        for uid in user_ids:
            entry = entries.pop(uid, None)
            if entry is None:
                missing.append(uid)
            else:
                entries[uid] = entry  # re-insert: most recently used last
                found[uid], keys[uid] = entry[0], entry[1]
        return found, keys, missing

    def peek(self, user_id: str) -> tuple[UserState, bytes] | None:
        """A cached state and its Redis key, without marking it used."""
        entry = self._entries.get(user_id)
        return None if entry is None else (entry[0], entry[1])

    def put(
        self,
        states: dict[str, UserState],
        keys: dict[str, bytes],
        partitions: dict[str, Partition],
    ) -> None:
        """Remember states that Redis now holds; evict the oldest beyond the limit."""
        entries = self._entries
        for uid, state in states.items():
            entries.pop(uid, None)
            entries[uid] = (state, keys[uid], partitions.get(uid))
        excess = len(entries) - self.max_users
        if excess > 0:
            for uid in list(_first(entries, excess)):
                del entries[uid]

    def evict(self, user_ids: Iterable[str]) -> None:
        """Forget these users (their cached state may no longer equal Redis)."""
        for uid in user_ids:
            self._entries.pop(uid, None)

    def drop_partitions(self, partitions: Iterable[Partition]) -> int:
        """Forget every user of these partitions; returns how many were dropped."""
        gone = set(partitions)
        if not gone:
            return 0
        before = len(self._entries)
        self._entries = {
            uid: entry for uid, entry in self._entries.items() if entry[2] not in gone
        }
        return before - len(self._entries)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()


def _first(entries: dict[str, object], n: int) -> Iterable[str]:
    for i, uid in enumerate(entries):
        if i >= n:
            return
        yield uid
