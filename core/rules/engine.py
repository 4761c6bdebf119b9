"""Rule evaluation, pure: events and feature values in, rule state and records out.

Called by the stream worker for each user a batch touched (:func:`on_events`, with
the user's applied events in event-time order and their feature values as of the
latest one) and for each user with a timer due (:func:`fire_due`, at the
partition's stream time). Everything happens in event time, so a backlog replayed
hours later fires the same triggers at the same ``at`` as it would have live, and
a purchase in the backlog still cancels the cart timer it came before.

A record fired goes into the rule state's outbox (written with the state, then
produced; see :mod:`streams.triggers`):
``{"id": "<user>:r<seq>", "rule", "kind", "user_id", "seq", "at", "at_ts",
"caused_by", "values", "rules_version"}`` where ``values`` are what made it fire.
A rule in its cool-down does not fire (its membership still starts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.events import Event, iso
from core.rules.spec import EVENT_FIELDS, Rule, RuleSet
from core.rules.state import MAX_REPEAT_KEYS, Membership, RuleState, Timer

_EVENT_FIELDS = frozenset(EVENT_FIELDS)


class _Env(Mapping[str, Any]):
    """Feature values, with the causing event's own fields on top."""

    __slots__ = ("event", "values")

    def __init__(self, values: Mapping[str, Any], event: Event | None) -> None:
        self.values = values
        self.event = event

    def __getitem__(self, key: str) -> Any:
        if key in _EVENT_FIELDS:
            if self.event is None:
                return None
            value = getattr(self.event, key)
            return value.value if key == "event_type" else value
        return self.values.get(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """``self[key]``, which never raises: Mapping.get's try/except is a call
        layer more on every name an expression reads."""
        return self[key]

    def __iter__(self) -> Any:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def _picked(rule: Rule, env: Mapping[str, Any]) -> dict[str, Any]:
    return {name: env.get(name) for name in rule.picked}


class Evaluation:
    """Applies a rule set to one user's rule state; counts what it did."""

    def __init__(self, rules: RuleSet, user_id: str, state: RuleState) -> None:
        self.rules = rules
        self.user = user_id
        self.state = state
        self.fired = 0
        self.suppressed = 0  # would have fired, but in the cool-down

    def fire(
        self, rule: Rule, at: float, caused_by: str, values: dict[str, Any]
    ) -> None:
        """Start the membership; add a record to the outbox unless cooling down."""
        state = self.state
        until = at + rule.lasts if rule.lasts is not None else None
        state.members[rule.name] = Membership(at, until)
        last = state.fired.get(rule.name)
        if last is not None and at - last < rule.cooldown:
            self.suppressed += 1
            return
        state.fired[rule.name] = at
        state.seq += 1
        state.outbox += (
            {
                "id": f"{self.user}:r{state.seq}",
                "rule": rule.name,
                "kind": rule.kind,
                "user_id": self.user,
                "seq": state.seq,
                "at": iso(at),
                "at_ts": at,
                "caused_by": caused_by,
                "values": values,
                "rules_version": self.rules.version,
            },
        )
        self.fired += 1

    def due(self, clock: float) -> None:
        """Fire the timers due at or before ``clock``, earliest first."""
        timers = self.state.timers
        if not timers:
            return
        rules = self.rules.named
        for name, timer in sorted(timers.items(), key=lambda item: item[1].due):
            if timer.due > clock:
                break
            del timers[name]
            rule = rules.get(name)
            if rule is None or rule.kind != "timer":
                continue  # the rule was removed or changed kind since it was armed
            values = {
                **timer.values,
                "armed_at": iso(timer.armed_at),
                "after_seconds": timer.due - timer.armed_at,
            }
            self.fire(rule, timer.due, timer.cause, values)

    def event(self, event: Event, values: Mapping[str, Any]) -> None:
        """Apply one event: timers due before it, cancels, arms, repeats."""
        self.due(event.ts)
        kind = event.event_type.value
        state = self.state
        env = _Env(values, event)
        for rule in self.rules.rules:
            if rule.kind == "timer":
                if kind in rule.unless:
                    timer = state.timers.get(rule.name)
                    if timer is not None and timer.armed_at <= event.ts:
                        del state.timers[rule.name]
                    self._end(rule.name, event.ts)
                if kind in rule.on and _holds(rule, env):
                    self._arm(rule, event, env)
            elif rule.kind == "repeat" and kind in rule.on and _holds(rule, env):
                self._repeat(rule, event)

    def conditions(
        self, latest: Event, kinds: set[str], values: Mapping[str, Any]
    ) -> None:
        """Evaluate condition rules as of the user's latest event in the batch."""
        env = _Env(values, latest)
        at = latest.ts
        for rule in self.rules.rules:
            if rule.kind != "condition" or (rule.on and not rule.on & kinds):
                continue
            assert rule.when is not None
            if rule.when.evaluate(env):
                member = self.state.members.get(rule.name)
                if member is not None and (member.until is None or at < member.until):
                    if rule.lasts is not None:  # still holds: extend it
                        self.state.members[rule.name] = Membership(
                            member.since, at + rule.lasts
                        )
                    continue
                self.fire(rule, at, latest.event_id, _picked(rule, env))
            else:
                self._end(rule.name, at)

    def _end(self, name: str, at: float) -> None:
        member = self.state.members.get(name)
        if member is not None and (member.until is None or member.until > at):
            self.state.members[name] = Membership(member.since, max(at, member.since))

    def _arm(self, rule: Rule, event: Event, env: _Env) -> None:
        after = rule.after
        delay = (
            after
            if isinstance(after, float)
            else (after.evaluate(env) if after is not None else None)
        )
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay <= 0:
            return  # undecidable (no data yet): not armed
        # Re-armed by each `on` event: the timer counts from the latest one.
        self.state.timers[rule.name] = Timer(
            due=event.ts + float(delay),
            armed_at=event.ts,
            cause=event.event_id,
            values=_picked(rule, env),
        )

    def _repeat(self, rule: Rule, event: Event) -> None:
        key = getattr(event, rule.per or "", None)
        if key is None:
            return
        keys = self.state.repeats.setdefault(rule.name, {})
        low = event.ts - rule.within
        times = (*tuple(t for t in keys.pop(key, ()) if t > low), event.ts)
        if len(times) >= rule.count:
            values = {
                rule.per or "": key,
                "count": len(times),
                "within_seconds": rule.within,
            }
            self.fire(rule, event.ts, event.event_id, values)
            times = ()
        if times:
            keys[key] = times[-rule.count :]
        # Bounded: forget keys seen only before the window, then the stalest.
        if len(keys) > MAX_REPEAT_KEYS:
            for stale in [k for k, v in keys.items() if v[-1] <= low]:
                del keys[stale]
            while len(keys) > MAX_REPEAT_KEYS:
                del keys[min(keys, key=lambda k: keys[k][-1])]
        if not keys:
            del self.state.repeats[rule.name]

    def forget_removed(self) -> None:
        """Drop timers, repeat counts and memberships of rules no longer in the set."""
        state = self.state
        names = self.rules.named
        for table in (state.timers, state.repeats, state.members):
            if table:  # mostly empty: most users are in no rule
                for gone in [name for name in table if name not in names]:
                    del table[gone]


def _holds(rule: Rule, env: Mapping[str, Any]) -> bool:
    return rule.when is None or bool(rule.when.evaluate(env))


def on_events(
    rules: RuleSet,
    user_id: str,
    state: RuleState,
    events: Iterable[Event],
    values: Mapping[str, Any],
) -> Evaluation:
    """Apply a batch's applied events of one user (any order) to their rule state.

    Args:
        rules: The rule set in force.
        user_id: Whose state it is.
        state: Their rule state (changed in place).
        events: Their events this batch applied (not duplicates or late ones).
        values: Their feature values (and ``propensity``, ``segment``) as of their
            latest event.

    Returns:
        The evaluation, with how many records fired and were suppressed.
    """
    evaluation = Evaluation(rules, user_id, state)
    ordered = sorted(events, key=lambda e: e.ts)
    if not ordered:
        return evaluation
    evaluation.forget_removed()
    for event in ordered:
        evaluation.event(event, values)
    kinds = {e.event_type.value for e in ordered}
    evaluation.conditions(ordered[-1], kinds, values)
    return evaluation


def fire_due(
    rules: RuleSet, user_id: str, state: RuleState, clock: float
) -> Evaluation:
    """Fire ``state``'s timers due by ``clock`` (a partition's stream time)."""
    evaluation = Evaluation(rules, user_id, state)
    evaluation.forget_removed()
    evaluation.due(clock)
    return evaluation
