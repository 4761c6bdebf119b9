"""The backfill's final states, kept as the worker processes sent them until used.

A worker process returns its chunks' states pickled; unpickled on arrival they
were the largest thing the training run held (~7 KB of objects per user, ~700 MB
at 100k users, against ~1.2 KB pickled) and their decoding competed with the
replay for the parent's interpreter. Building training sets never reads them:
only seeding the online store does, after the sets. :class:`BackfillStates` is a
read-only mapping that decodes every part on first use (and keeps the objects,
so changes to them stay); its length needs no decoding.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping, Sequence

from core.user_state import UserState
from training.replay import collector_paused


class BackfillStates(Mapping[str, UserState]):
    """User id -> final state; parts are state lists or their pickles, in order."""

    def __init__(
        self, user_ids: Sequence[str], parts: Sequence[list[UserState] | bytes]
    ) -> None:
        """``user_ids`` in the order of the parts' states, concatenated."""
        self._ids = list(user_ids)
        self._parts: list[list[UserState] | bytes] | None = list(parts)
        self._states: dict[str, UserState] | None = None

    def _decoded(self) -> dict[str, UserState]:
        if self._states is None:
            states: list[UserState] = []
            # Millions of acyclic objects: a collection midway finds nothing.
            with collector_paused():
                for part in self._parts or ():
                    if isinstance(part, bytes):
                        part = pickle.loads(part)
                    states.extend(part)
            if len(states) != len(self._ids):
                raise ValueError(f"{len(states)} states for {len(self._ids)} users")
            self._states = dict(zip(self._ids, states, strict=True))
            self._parts = None
        return self._states

    @property
    def decoded(self) -> bool:
        """Whether the states have been decoded (read) yet."""
        return self._states is not None

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __getitem__(self, user_id: str) -> UserState:
        return self._decoded()[user_id]
