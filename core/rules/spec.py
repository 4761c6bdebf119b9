"""The rules file: YAML in, checked rules out, every error with its line and field.

```yaml
rules:
  - name: cart_abandoned        # a timer: armed by `on`, fires `after` unless...
    on: add_to_cart
    after: 30m                  # a duration, or an expression in seconds
    unless: [purchase]          # ...one of these comes first; re-armed by `on`
    cooldown: 6h
  - name: repeat_interest       # a repeat: `count` times per `per` within `within`
    on: product_view
    per: product_id
    count: 3
    within: 24h
  - name: hot_lead              # a condition: fires when `when` becomes true
    when: propensity >= 0.6 and events_1h >= 3
    lasts: 30m                  # membership ends this long after it last held
```

Kinds follow from the fields: ``after`` makes a timer, ``per`` a repeat, otherwise
``when`` is a condition. ``when`` is also a guard on a timer's or repeat's ``on``
event. Expressions (:mod:`core.rules.expressions`) read the catalogue's features,
``propensity`` and ``segment``, and the causing event's fields. A file with any
error is refused whole, with every error found: the worker keeps its old rules.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from core.events import EventType
from core.feature_catalog import HISTORY_NAMES, REQUEST_FEATURES, STREAM_NAMES
from core.rules.expressions import Expression, ExpressionError, compile_expression

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
MODEL_NAMES = ("propensity", "segment")
EVENT_FIELDS = (
    "event_type",
    "price",
    "quantity",
    "category",
    "product_id",
    "session_id",
)
KNOWN_NAMES = frozenset(
    (
        *STREAM_NAMES,
        *HISTORY_NAMES,
        *(s.name for s in REQUEST_FEATURES),
        *MODEL_NAMES,
        *EVENT_FIELDS,
    )
)
PER_FIELDS = ("product_id", "category", "session_id")
_FIELDS = frozenset(
    {"name", "description", "on", "when", "after", "unless", "per", "count"}
    | {"within", "cooldown", "lasts"}
)
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86_400.0,
    None: 1.0,
}


@dataclass(frozen=True)
class Problem:
    """One error in a rules file."""

    line: int  # 1-based
    field: str  # e.g. ``rules[2].after``
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class RulesError(ValueError):
    """A rules file that cannot be used; :attr:`problems` names each error."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} error(s)\n{lines}")


@dataclass(frozen=True)
class Rule:
    """One checked rule. Times are in seconds."""

    name: str
    kind: str  # "condition" | "timer" | "repeat"
    line: int
    on: frozenset[str] = frozenset()  # event types; empty: any
    when: Expression | None = None
    after: float | Expression | None = None
    unless: frozenset[str] = frozenset()
    per: str | None = None
    count: int = 0
    within: float = 0.0
    cooldown: float = 0.0
    lasts: float | None = None
    description: str = ""

    def names(self) -> frozenset[str]:
        """Every name the rule's expressions read."""
        return frozenset(self.picked)

    @cached_property
    def picked(self) -> tuple[str, ...]:
        """The names the rule's expressions read, sorted: the values a fired
        record carries (computed once: every fire and arm reads them)."""
        found: set[str] = set()
        for expression in (self.when, self.after):
            if isinstance(expression, Expression):
                found |= expression.names
        return tuple(sorted(found))


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, and what evaluating them needs."""

    rules: tuple[Rule, ...]
    version: str  # a hash of the file's text
    source: str = ""
    names: frozenset[str] = field(default=frozenset())

    @property
    def needs_propensity(self) -> bool:
        """Whether some rule reads the propensity (the model must run)."""
        return "propensity" in self.names

    @cached_property
    def named(self) -> dict[str, Rule]:
        """Rules by name (built once per rule set: evaluation asks per user)."""
        return {rule.name: rule for rule in self.rules}

    @cached_property
    def feature_kinds(self) -> frozenset[str]:
        """Event types on which a rule with ``on`` types reads a feature (a name
        other than the event's fields, ``segment`` and ``propensity``); computed
        once per rule set, asked once per batch."""
        own = {*EVENT_FIELDS, "segment", "propensity"}
        return frozenset().union(
            *(rule.on for rule in self.rules if rule.on and rule.names() - own)
        )


def load_rules(path: Path | None = None) -> RuleSet:
    """Read and check a rules file (the shipped defaults without ``path``).

    Raises:
        RulesError: The file cannot be read, is not YAML, or has invalid rules.
    """
    path = path or DEFAULT_RULES
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), [Problem(1, "file", str(exc))]) from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Check the rules in YAML ``text``; every problem is collected before raising.

    Raises:
        RulesError: With each problem's line and field.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise RulesError(
            source, [Problem(line, "file", f"not YAML: {reason}")]
        ) from None
    problems: list[Problem] = []
    rules: list[Rule] = []
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        problems.append(Problem(line, "file", "expected a mapping with `rules:`"))
        raise RulesError(source, problems)
    top = _mapping(root)
    for key, (key_node, _) in top.items():
        if key != "rules":
            problems.append(Problem(_line(key_node), key, "unknown key (only `rules`)"))
    entry = top.get("rules")
    if entry is None:
        problems.append(Problem(_line(root), "rules", "missing"))
    elif not isinstance(entry[1], yaml.SequenceNode):
        problems.append(Problem(_line(entry[1]), "rules", "expected a list of rules"))
    else:
        seen: dict[str, int] = {}
        for index, node in enumerate(entry[1].value):
            rule = _rule(node, f"rules[{index}]", problems)
            if rule is None:
                continue
            if rule.name in seen:
                problems.append(
                    Problem(
                        rule.line,
                        f"rules[{index}].name",
                        f"{rule.name!r} is already the name of the rule "
                        f"on line {seen[rule.name]}",
                    )
                )
            seen[rule.name] = rule.line
            rules.append(rule)
    if problems:
        raise RulesError(source, sorted(problems, key=lambda p: p.line))
    names = frozenset().union(*(rule.names() for rule in rules))
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return RuleSet(tuple(rules), version, source, names)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    return {str(k.value): (k, v) for k, v in node.value}


def _rule(node: yaml.Node, where: str, problems: list[Problem]) -> Rule | None:
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(_line(node), where, "expected a mapping"))
        return None
    fields = _mapping(node)
    before = len(problems)

    reported: set[str] = set()

    def problem(name: str, message: str) -> None:
        if name in reported:  # one error per field: the first is the cause
            return
        reported.add(name)
        at = fields[name][1] if name in fields else node
        problems.append(Problem(_line(at), f"{where}.{name}", message))

    for key in fields:
        if key not in _FIELDS:
            problem(key, f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    values = {key: _value(value) for key, (_, value) in fields.items()}

    name = values.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problem("name", "required: lowercase letters, digits, _ or -, at most 64")
    on = _event_types(values, "on", problem)
    unless = _event_types(values, "unless", problem)
    when = _expression(values, "when", problem)
    cooldown = _duration(values, "cooldown", problem, default=0.0)
    lasts = _duration(values, "lasts", problem, default=None)
    after: float | Expression | None = None
    per, count, within = None, 0, 0.0
    if "after" in values and "per" in values:
        problem("per", "a rule has `after` (a timer) or `per` (a repeat), not both")
    if "after" in values:
        kind = "timer"
        raw = values["after"]
        after = _as_duration(raw)
        if after is None:
            try:
                after = compile_expression(raw, KNOWN_NAMES)
            except ExpressionError as exc:
                problem(
                    "after",
                    "neither a duration (90s, 30m, 6h, 1d) nor an expression "
                    f"in seconds ({exc})",
                )
        elif after <= 0:
            problem("after", "must be more than 0")
        if not on:
            problem("on", "a timer needs the event type(s) that arm it")
    elif "per" in values:
        kind = "repeat"
        per = values["per"]
        if per not in PER_FIELDS:
            problem("per", f"{per!r} is not one of {', '.join(PER_FIELDS)}")
        count = values.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            problem("count", "required: a whole number of at least 2")
            count = 0
        within = _duration(values, "within", problem, default=None) or 0.0
        if not within:
            problem("within", "required: a duration such as 24h")
        if not on:
            problem("on", "a repeat needs the event type(s) it counts")
        lasts = within if lasts is None else lasts
    else:
        kind = "condition"
        if when is None and "when" not in values:
            problem("when", "required for a condition (or give `after` or `per`)")
    for extra in ("unless",) if kind != "timer" else ():
        if extra in values:
            problem(extra, "only a timer (a rule with `after`) has this")
    for extra in ("count", "within") if kind != "repeat" else ():
        if extra in values:
            problem(extra, "only a repeat (a rule with `per`) has this")
    if len(problems) > before:
        return None
    return Rule(
        name=str(name),
        kind=kind,
        line=_line(node),
        on=on,
        when=when,
        after=after,
        unless=unless,
        per=per,
        count=count,
        within=within,
        cooldown=cooldown or 0.0,
        lasts=lasts,
        description=str(values.get("description") or ""),
    )


def _value(node: yaml.Node) -> Any:
    """A node's plain value (scalars typed as YAML types them)."""
    return yaml.load(yaml.serialize(node), Loader=yaml.SafeLoader)


def _event_types(values: dict[str, Any], key: str, problem: Any) -> frozenset[str]:
    raw = values.get(key)
    if raw is None:
        return frozenset()
    items = raw if isinstance(raw, list) else [raw]
    accepted = [t.value for t in EventType]
    bad = [item for item in items if item not in accepted]
    if bad or not items:
        problem(key, f"{bad or items!r}: each must be one of {', '.join(accepted)}")
        return frozenset()
    return frozenset(items)


def _expression(values: dict[str, Any], key: str, problem: Any) -> Expression | None:
    if key not in values:
        return None
    try:
        return compile_expression(values[key], KNOWN_NAMES)
    except ExpressionError as exc:
        problem(key, str(exc))
        return None


def _as_duration(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str) and (match := _DURATION.fullmatch(raw)):
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return None


def _duration(
    values: dict[str, Any], key: str, problem: Any, default: float | None
) -> float | None:
    if key not in values:
        return default
    seconds = _as_duration(values[key])
    if seconds is None or seconds < 0:
        problem(key, f"{values[key]!r} is not a duration (e.g. 90s, 30m, 6h, 1d)")
        return default
    return seconds
