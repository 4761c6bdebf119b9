"""Behavioural triggers in the worker: rules over each batch, timers in Redis.

After a batch is folded into the states (and users placed in live segments), each
touched user's applied events and feature values go through the rules
(:func:`core.rules.engine.on_events`). Fired records go into the user's rule
outbox, written with the state and then produced to the ``triggers`` topic
(:mod:`streams.outbox`), exactly as live segment changes are.

Timers. A pending timer lives in the user's rule state, and the user is indexed by
its earliest due time in a sorted set per source partition
(``segscore:timers:<topic>:<partition>``), written in the same pipeline as the
state: an entry that makes a timer earlier (or new) goes before the state, one that
makes it later or removes it goes after, so a crash between the two can leave an
early or stale entry (found, nothing due, corrected) but never a timer nobody
looks for. The partition's owner looks up due users a few times a second
(:func:`due_users`), and so does the next owner after a rebalance or a crash: the
index is in Redis, not in the worker, and a timer fires by the write that removes
it from the state, so it fires once.

Time. Rules run in event time. A partition's clock is the newest event time
applied from it; when it has had no record for ``timer_idle_seconds``, the wall
clock minus that instead (a quiet shop's carts still get abandoned); never ahead
of the worker's wall clock (a producer's clock running ahead fires nothing
early). So a backlog fires its timers as its own time passes: a purchase later
in the backlog still cancels the cart timer before it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from core.events import Event
from core.feature_catalog import REQUEST_FEATURES, STATE_FEATURE
from core.feature_math import AGE_SOURCES, request_features
from core.rules.engine import fire_due, on_events
from core.rules.spec import DEFAULT_RULES, RulesError, RuleSet, load_rules
from core.scoring import ScoringModels, build_inputs, with_read_time_features
from core.store.guarded_write import WriteGuard
from core.store.state_store import StateLayout, load_states, save_states
from core.user_state import UserState
from infra.settings import Settings
from streams.live_segments import LastPlacement, LiveSegments, recheck, recheck_at
from streams.outbox import pending
from streams.state_cache import StateCache

log = logging.getLogger("segscore.triggers")

TIMERS_PREFIX = b"segscore:timers:"
DUE_PER_TICK = 2000  # due users taken per partition per tick; the rest next tick
_REQUEST = frozenset(spec.name for spec in REQUEST_FEATURES)

Partition = tuple[str, int]
Command = tuple[Any, ...]
# Commands emptying produced outboxes, given a write's states and their keys.
Drain = Callable[[dict[str, UserState], dict[str, bytes]], list[Command]]


def timers_key(tp: Partition) -> bytes:
    """The sorted set indexing the pending timers of users read from ``tp``."""
    return b"%s%s:%d" % (TIMERS_PREFIX, tp[0].encode(), tp[1])


@dataclass
class IndexWrites:
    """Timer-index commands to send before and after the states they follow."""

    first: list[Command] = field(default_factory=list)
    last: list[Command] = field(default_factory=list)

    def move(
        self, tp: Partition, user: str, before: float | None, after: float | None
    ) -> None:
        """Index ``user``'s earliest due time: ``before`` the write, ``after`` it."""
        if before == after:
            return
        key = timers_key(tp)
        if after is None:
            self.last.append((b"ZREM", key, user))
        elif before is None or after < before:
            self.first.append((b"ZADD", key, after, user))
        else:
            self.last.append((b"ZADD", key, after, user))


@dataclass
class Counts:
    """What a round of rule evaluation did."""

    fired: int = 0
    suppressed: int = 0


class Triggers:
    """The rule set in force (reloaded when its file changes) and its evaluation."""

    def __init__(self, settings: Settings, rules: RuleSet | None = None) -> None:
        self.settings = settings
        self.path = Path(settings.rules_path) if settings.rules_path else DEFAULT_RULES
        self._stamp: tuple[int, int] | str | None = "unread"
        self._next_check = 0.0
        self.refused = 0
        self.rules = rules or RuleSet((), "none")
        if rules is None:
            # A bad file at start-up: no rules until it is fixed (and said so),
            # rather than a worker that does not start.
            self.reload()

    def due(self) -> bool:
        """Whether :meth:`reload` should look at the file (every poll interval)."""
        return time.monotonic() >= self._next_check

    def reload(self) -> bool:
        """Take up a changed rules file; keep the old rules if it has any error.

        Returns:
            Whether new rules are in force.
        """
        self._next_check = time.monotonic() + self.settings.rules_poll_seconds
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            self.refused += 1
            log.error("rules file refused; the old rules keep running. %s", exc)
            return False
        self.rules = rules
        log.info("rules %s in force: %d rule(s)", rules.version, len(rules.rules))
        return True

    def on_batch(
        self,
        applied: Sequence[Event],
        states: dict[str, UserState],
        partitions: dict[str, Partition],
        models: ScoringModels | None,
        placed: LastPlacement | None = None,
    ) -> tuple[IndexWrites, Counts]:
        """Run the rules over a batch's applied events, user by user (in place).

        ``placed``: the batch's live-segment placement, whose feature columns and
        propensity inputs are reused rather than computed again.

        Returns:
            The timer-index writes to send with the states, and the counts.
        """
        rules = self.rules
        writes, counts = IndexWrites(), Counts()
        if not applied or not (rules.rules or placed is not None):
            return writes, counts
        by_user: dict[str, list[Event]] = {}
        for event in applied:
            by_user.setdefault(event.user_id, []).append(event)
        users = list(by_user)
        values = feature_values(rules, users, states, models, placed, by_user)
        placed_users = set(placed.users) if placed is not None else set()
        for user, row in zip(users, values, strict=True):
            state = states[user]
            rule_state = state.rules
            before = rule_state.next_due()
            if rules.rules:
                done = on_events(rules, user, rule_state, by_user[user], row)
                counts.fired += done.fired
                counts.suppressed += done.suppressed
            if user in placed_users:
                _arm_recheck(state)
            writes.move(partitions[user], user, before, rule_state.next_due())
        return writes, counts

    def fire(
        self,
        states: dict[str, UserState],
        owners: dict[str, Partition],
        clocks: dict[Partition, float],
        before_due: dict[str, float | None],
    ) -> tuple[IndexWrites, Counts, list[str]]:
        """Fire the due timers of ``states`` (users found in a timer index).

        ``before_due``: each user's earliest due time as loaded (their segment
        re-check may have moved since, see :func:`fire_timers`).

        Returns:
            The index writes, the counts, and the users whose state changed.
        """
        writes, counts, changed = IndexWrites(), Counts(), []
        for user, state in states.items():
            tp = owners[user]
            rule_state = state.rules
            before = before_due[user]
            done = fire_due(self.rules, user, rule_state, clocks[tp])
            after = rule_state.next_due()
            counts.fired += done.fired
            counts.suppressed += done.suppressed
            if after != before or done.fired or done.suppressed:
                changed.append(user)
            # The entry was due: it moves to the next timer (or goes) after the
            # state is written, which also corrects an entry the state disowns.
            key = timers_key(tp)
            command = (
                (b"ZREM", key, user) if after is None else (b"ZADD", key, after, user)
            )
            writes.last.append(command)
        return writes, counts, changed


def _arm_recheck(state: UserState) -> None:
    """Re-place ``state``'s user an hour after their latest event, unless sooner.

    Only ever earlier: an active user's pending re-check stays where it is (no
    index write per batch) and, once due, moves on from their latest event.
    """
    due = recheck_at(state.last_event_ts, -math.inf)
    current = state.rules.recheck
    if due is not None and (current is None or due < current):
        state.rules.recheck = due


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def feature_values(
    rules: RuleSet,
    users: list[str],
    states: dict[str, UserState],
    models: ScoringModels | None,
    placed: LastPlacement | None = None,
    events: Mapping[str, Sequence[Event]] | None = None,
) -> list[Mapping[str, Any]]:
    """Each user's values of the names the rules read, as of their latest event.

    The same functions as scoring (:func:`core.scoring.with_read_time_features`,
    :func:`core.feature_math.request_features`), so a rule over a feature sees
    the value ``/score`` would show at that instant. With ``placed`` (the same
    users, as of the same instants) its columns are taken instead of recomputed.
    Without models, the values are computed on a rule's first read, for the
    users with ``events`` (each user's batch) of a type that makes a rule read a
    feature, then for the others if one of them reads.
    """
    names = rules.names
    if not names:
        return [{} for _ in users]
    chosen = [states[u] for u in users]
    n = len(users)
    at = [s.last_event_ts or 0.0 for s in chosen]
    inputs: np.ndarray | None = None
    if placed is not None and placed.users == users:
        stored, inputs = placed.placed.stored, placed.placed.propensity_inputs
        models = placed.models
    elif models is None:
        # No model inputs to build: the features are computed only once a rule
        # reads one (most rules read none for most events).
        kinds = rules.feature_kinds
        likely = [
            i
            for i, user in enumerate(users)
            if events is None or any(e.event_type.value in kinds for e in events[user])
        ]
        lazy = _LazyColumns(rules, chosen, at, likely)
        return [_LazyValues(lazy, i, s) for i, s in enumerate(chosen)]
    else:
        stored = with_read_time_features({STATE_FEATURE: chosen}, n, at)
    columns = _read_columns(names, stored, at)
    if "propensity" in names:
        if inputs is None:
            inputs = build_inputs(stored, n, np.asarray(at), models).propensity
        bundle = models.propensity
        columns["propensity"] = bundle.probability(bundle.margin(inputs)).tolist()
    if "segment" in names:
        columns["segment"] = [s.segment for s in chosen]
    return [{k: column[i] for k, column in columns.items()} for i in range(n)]


class _LazyColumns:
    """The batch's feature columns, computed for many users on a first read.

    In blocks, not per user: the feature functions work on whole blocks of
    states, and one user's values cost ~300 us against ~10 us each in a block
    of thousands (a rule reading a history feature on every purchase was a
    quarter of the worker's time). The first read of a ``likely`` user computes
    all of them; a read of any other, all users not computed yet. So a rule on
    purchases costs a block of the batch's buyers, not of everyone.
    """

    def __init__(
        self,
        rules: RuleSet,
        states: list[UserState],
        at: list[float],
        likely: list[int],
    ) -> None:
        self.names = rules.names
        self.states, self.at = states, at
        self.likely = dict.fromkeys(likely)  # ordered, and a set
        # Row -> (its block's columns, its position in them).
        self._found: dict[int, tuple[dict[str, Sequence[Any]], int]] = {}

    def value(self, row: int, key: str) -> Any:
        """``key``'s value for the user of ``row`` (None: not a feature read)."""
        found = self._found.get(row)
        if found is None:
            likely = self.likely
            if likely and row in likely:
                self._compute(list(likely))
                self.likely = {}
            else:
                rows = range(len(self.states))
                self._compute([r for r in rows if r not in self._found])
            found = self._found[row]
        columns, position = found
        column = columns.get(key)
        return None if column is None else column[position]

    def _compute(self, rows: list[int]) -> None:
        states, names = [self.states[r] for r in rows], self.names
        at = [self.at[r] for r in rows]
        stored = with_read_time_features({STATE_FEATURE: states}, len(rows), at)
        columns = _read_columns(names, stored, at)
        for position, row in enumerate(rows):
            self._found[row] = (columns, position)


class _LazyValues(Mapping[str, Any]):
    """One user's values as of their latest event, from the batch's columns.

    Computed only once a rule reads a feature (:class:`_LazyColumns`), with the
    functions :func:`core.scoring.with_read_time_features` runs, so the values
    are the same. No propensity: there is no model pair (it reads None).
    """

    def __init__(self, batch: _LazyColumns, row: int, state: UserState) -> None:
        self.batch, self.row = batch, row
        self._known: dict[str, Any] = {"segment": state.segment, "propensity": None}

    def __getitem__(self, key: str) -> Any:
        known = self._known
        if key in known:
            return known[key]
        return self.batch.value(self.row, key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """``self[key]``, which never raises (as ``_Env.get`` in core.rules.engine)."""
        return self[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def _read_columns(
    names: frozenset[str], stored: Mapping[str, Sequence[Any]], at: list[float]
) -> dict[str, Sequence[Any]]:
    """The stored and derived columns the rules read, with the request-time ages."""
    columns: dict[str, Sequence[Any]] = {k: v for k, v in stored.items() if k in names}
    if names & _REQUEST:
        columns.update(_ages(names, stored, at))
    return columns


def _ages(
    names: frozenset[str], stored: Mapping[str, Sequence[Any]], at: list[float]
) -> dict[str, list[float]]:
    stamps = {
        k: np.array([np.nan if v is None else v for v in stored[k]], dtype=float)
        for k in AGE_SOURCES
    }
    ages = request_features(stamps, np.asarray(at, dtype=float))
    return {k: v.tolist() for k, v in ages.items() if k in names}


def due_users(
    client: redis.Redis, clocks: dict[Partition, float]
) -> dict[str, Partition]:
    """Users with a timer due by their partition's clock (one round trip)."""
    if not clocks:
        return {}
    pipe = client.pipeline(transaction=False)
    order = list(clocks)
    for tp in order:
        pipe.zrangebyscore(
            timers_key(tp), "-inf", clocks[tp], start=0, num=DUE_PER_TICK
        )
    found: dict[str, Partition] = {}
    for tp, users in zip(order, pipe.execute(), strict=True):
        for raw in users:
            found[raw.decode()] = tp
    return found


class StreamClocks:
    """Each partition's stream time: newest event time, or the wall clock when idle."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.newest: dict[Partition, float] = {}
        self.heard: dict[Partition, float] = {}  # monotonic time of the last record

    def assigned(self, partitions: Iterable[Partition]) -> None:
        """New partitions: quiet from now on, until their records arrive."""
        now = time.monotonic()
        for tp in partitions:
            self.heard.setdefault(tp, now)

    def revoked(self, partitions: Iterable[Partition]) -> None:
        """Partitions gone to another worker: their clocks go with them."""
        for tp in partitions:
            self.newest.pop(tp, None)
            self.heard.pop(tp, None)

    def records(self, tp: Partition, newest_ts: float | None) -> None:
        """Records came from ``tp``; ``newest_ts`` is the newest event time applied."""
        self.heard[tp] = time.monotonic()
        if newest_ts is not None and newest_ts > self.newest.get(tp, -math.inf):
            self.newest[tp] = newest_ts

    def batch(
        self, records: Iterable[Any], applied: Iterable[tuple[Any, float]]
    ) -> None:
        """A batch's records came in; ``applied``: (record, event time) applied."""
        newest: dict[Partition, float] = {}
        for record, ts in applied:
            tp = (record.topic, record.partition)
            if ts > newest.get(tp, -math.inf):
                newest[tp] = ts
        for tp in {(r.topic, r.partition) for r in records}:
            self.records(tp, newest.get(tp))

    def now(self, wall: float | None = None) -> dict[Partition, float]:
        """Every known partition's clock.

        Never ahead of ``wall`` (this worker's clock): an event stamped by a
        producer whose clock runs ahead is accepted (up to ``max_future_seconds``)
        but must not make its partition's timers fire early.
        """
        wall = time.time() if wall is None else wall
        quiet = time.monotonic() - self.idle_seconds
        clocks = {}
        for tp, heard in self.heard.items():
            clock = min(self.newest.get(tp, -math.inf), wall)
            if heard <= quiet:
                clock = max(clock, wall - self.idle_seconds)
            if clock > -math.inf:
                clocks[tp] = clock
        return clocks


def fire_timers(
    triggers: Triggers,
    client: redis.Redis,
    layout: StateLayout,
    cache: StateCache,
    check_store: Callable[[], None],
    clocks: dict[Partition, float],
    guard: WriteGuard | None = None,
    drain: Drain | None = None,
    live: LiveSegments | None = None,
) -> tuple[dict[str, UserState], int]:
    """Fire the timers due by ``clocks``: load, fire, write (blocking).

    Users whose segment re-check is due are placed again first, with ``live``'s
    models (without them, the re-checks are dropped).

    ``guard`` fences the write as a batch's (:mod:`streams.fencing`). ``drain``
    gives the commands emptying produced outboxes (:func:`streams.outbox.drain`)
    from the loaded states; they are written even when no timer is due.

    States come from the worker's cache where it has them, else from Redis (after
    ``check_store``, as a batch would); on any error the users are evicted from
    the cache, since Redis may not have what their cached states hold.

    Returns:
        The states with records to deliver, and how many fires the cool-downs
        suppressed.
    """
    owners = due_users(client, clocks)
    if not owners:
        cleared = drain({}, {}) if drain is not None else []
        save_states(client, layout, {}, first=cleared, guard=guard)
        return {}, 0
    states, keys, missing = cache.take(owners)
    try:
        if missing:
            check_store()
            states.update(load_states(client, layout, missing, keys))
        cleared = drain(states, keys) if drain is not None else []
        before = {u: s.rules.next_due() for u, s in states.items()}
        rechecked = recheck(
            states,
            {u: clocks[tp] for u, tp in owners.items()},
            live.models if live is not None else None,
        )
        writes, fired, changed = triggers.fire(states, owners, clocks, before)
        changed_states = {u: states[u] for u in (*changed, *rechecked)}
        save_states(
            client,
            layout,
            changed_states,
            keys,
            first=[*cleared, *writes.first],
            last=writes.last,
            guard=guard,
        )
    except BaseException:
        cache.evict(owners)
        raise
    cache.put(states, keys, owners)
    return pending(changed_states), fired.suppressed
