"""How far the stream worker got, read from what it wrote, never from broker offsets.

The backlog's progress and the final check come from the per-user states in Redis
(:class:`BacklogTracker`, :func:`verify_states`); freshness from a poller process
reading sampled users back through Feast (:func:`freshness_poller`); a crashed
task of the worker, which Faust logs and outlives, from the worker's log
(:class:`CrashWatch`). The bundled tansu reports end offsets behind records it has
acknowledged, so "caught up" decided from them would be wrong.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from core.events import Event
from core.names import STREAM_VIEW
from core.store.state_store import StateLayout, load_states
from core.user_state import UserState

# The state blob the worker writes, as Feast serves it.
FEATURE = f"{STREAM_VIEW}:state"
CHECKPOINT_EVERY = 200
POLL_WINDOW = 32
POLL_PAGE_USERS = 32
# Event times travel as epoch milliseconds; compare with half a millisecond of slack.
TS_TOLERANCE = 0.0005


@dataclass(frozen=True)
class _Checkpoint:
    user_id: str
    ts: float
    applied: int  # events of its partition applied once this one is


class BacklogTracker:
    """Cheap progress of a produced backlog, read from per-user state in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        layout: StateLayout,
        events: Sequence[Event],
        partitions: Sequence[int],
        every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.client = client
        self.layout = layout
        lanes: dict[int, list[int]] = {}
        for index, partition in enumerate(partitions):
            lanes.setdefault(partition, []).append(index)
        self.lanes: list[list[_Checkpoint]] = []
        for _, indices in sorted(lanes.items()):
            positions = list(range(0, len(indices), every))
            if positions[-1] != len(indices) - 1:
                positions.append(len(indices) - 1)
            self.lanes.append(
                [
                    _Checkpoint(
                        events[indices[p]].user_id,
                        events[indices[p]].ts,
                        p + 1,
                    )
                    for p in positions
                ]
            )
        self.next = [0] * len(self.lanes)
        self.applied = [0] * len(self.lanes)
        self._last = last_times(events)
        self._settled = False

    @property
    def complete(self) -> bool:
        """Whether every user's state ends at their last event.

        Checked only once the last event of every partition is applied, and
        needed on top of that: a batch's users are written in chunks in the order
        they first appear in it, so the state of a partition's last event can be
        readable before other users of its batch are.
        """
        return self._settled

    def _lanes_done(self) -> bool:
        return all(
            n >= len(lane) for n, lane in zip(self.next, self.lanes, strict=True)
        )

    def poll(self, window: int = POLL_WINDOW) -> int:
        """Read the next checkpoints; returns a lower bound of the events applied."""
        for lane_no, lane in enumerate(self.lanes):
            start = self.next[lane_no]
            if start >= len(lane):
                continue
            chunk = lane[start : start + window]
            # A user may appear twice in a window: load_states takes distinct ids.
            users = dict.fromkeys(c.user_id for c in chunk)
            states = load_states(self.client, self.layout, users)
            done = -1
            for j, checkpoint in enumerate(chunk):
                last = states[checkpoint.user_id].last_event_ts
                if last is not None and last >= checkpoint.ts - TS_TOLERANCE:
                    done = j
            if done >= 0:
                self.next[lane_no] = start + done + 1
                self.applied[lane_no] = chunk[done].applied
        if not self._settled and self._lanes_done():
            self._settled = not wrong_states(self.client, self.layout, self._last)
        return sum(self.applied)


def last_times(events: Sequence[Event]) -> dict[str, float]:
    """Each user's last event time."""
    return {event.user_id: event.ts for event in events}


def verify_states(
    client: redis.Redis, layout: StateLayout, events: Sequence[Event]
) -> int:
    """How many users' states do NOT end at the last event produced for them."""
    return wrong_states(client, layout, last_times(events))


def wrong_states(
    client: redis.Redis, layout: StateLayout, expected: dict[str, float]
) -> int:
    """How many users' states do NOT end at ``expected[user]``."""
    users = list(expected)
    wrong = 0
    for start in range(0, len(users), 5000):
        states = load_states(client, layout, users[start : start + 5000])
        for uid, state in states.items():
            last = state.last_event_ts
            if last is None or abs(last - expected[uid]) > TS_TOLERANCE:
                wrong += 1
    return wrong


class CrashWatch:
    """Spots a crashed task in the worker log (Faust logs it; the process lives on)."""

    MARK = b"Crashed reason="

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = 0

    def crashed(self) -> str | None:
        """The first crash line written since the last call, if any."""
        start = max(0, self.offset - len(self.MARK))  # a mark split across reads
        try:
            with self.log.open("rb") as f:
                f.seek(start)
                chunk = f.read()
        except OSError:
            return None
        self.offset = start + len(chunk)
        at = chunk.find(self.MARK)
        if at < 0:
            return None
        end = chunk.find(b"\n", at)
        return chunk[at : end if end > 0 else None][:500].decode(errors="replace")


def _resolve(
    pending: dict[str, list[tuple[float, float]]],
    latencies: list[tuple[float, float]],
    uids: list[str],
    values: list[float | None],
    seen: float,
) -> int:
    """Move the samples now visible from ``pending`` to ``latencies``.

    Returns:
        How many of ``uids`` have no sample left pending.
    """
    done = 0
    for uid, value in zip(uids, values, strict=True):
        if value is None:
            continue
        waiting = [s for s in pending[uid] if value < s[0] - TS_TOLERANCE]
        visible = [sent for ts, sent in pending[uid] if ts <= value + TS_TOLERANCE]
        latencies.extend((sent, seen - sent) for sent in visible)
        if waiting:
            pending[uid] = waiting
        else:
            del pending[uid]
            done += 1
    return done


def freshness_poller(
    home: str,
    redis_url: str,
    inbox: Any,
    outbox: Any,
    poll_seconds: float,
    drain_seconds: float,
) -> None:
    """Child process: read sampled events back through Feast until visible."""
    os.environ["SEGSCORE_HOME"] = home
    from core.store.feast_config import feature_store
    from infra.settings import get_settings

    store = feature_store(get_settings(), redis_url)
    store.get_online_features(features=[FEATURE], entity_rows=[{"user_id": "warm"}])
    outbox.put({"ready": True})

    pending: dict[str, list[tuple[float, float]]] = {}
    latencies: list[tuple[float, float]] = []  # (sent at, seconds to visible)
    read_seconds: list[float] = []
    cycles: list[float] = []
    deadline: float | None = None
    last_cycle = time.time()
    while True:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                deadline = time.time() + drain_seconds
            else:
                uid, ts, sent_at = item
                pending.setdefault(uid, []).append((ts, sent_at))
        if deadline is not None and (not pending or time.time() > deadline):
            break
        if not pending:
            time.sleep(0.005)
            continue
        # Pages of the oldest pending samples, the next page only while every
        # sample of the last one was seen: a read costs ~0.1 ms of CPU per user
        # through Feast, so reading all pending samples of a lagging worker would
        # take it a core and make it lag further. This bounds the poller's cost
        # to one page per cycle plus the samples it resolves.
        t_read = time.time()
        while pending:
            uids = list(itertools.islice(pending, POLL_PAGE_USERS))
            t_page = time.time()
            blobs = store.get_online_features(
                features=[FEATURE], entity_rows=[{"user_id": u} for u in uids]
            ).to_dict()["state"]
            values = [UserState.from_bytes(b).last_event_ts for b in blobs]
            seen = time.time()
            read_seconds.append(seen - t_page)
            if _resolve(pending, latencies, uids, values, seen) < len(uids):
                break
        cycles.append(seen - last_cycle)
        last_cycle = seen
        time.sleep(max(0.0, poll_seconds - (time.time() - t_read)))
    end = time.time()
    outbox.put(
        {
            "latencies": latencies,
            # Never seen: how long they had waited when the poller gave up.
            "unresolved": [
                (sent, end - sent) for v in pending.values() for _, sent in v
            ],
            "read_ms_mean": 1000 * float(np.mean(read_seconds)) if read_seconds else 0,
            "cycle_ms_mean": 1000 * float(np.mean(cycles[1:]))
            if len(cycles) > 1
            else 0,
        }
    )
