"""Rule expressions: a small, safe subset of Python over features and the event.

``propensity >= 0.6 and events_1h >= 3``, ``2 * purchase_gap_mean_days * day``,
``event_type == "purchase" or price > 100``. Allowed: numbers, strings, true/false,
names, ``and``/``or``/``not``, comparisons, ``+ - * / %`` and unary minus.
Anything else (calls, attributes, subscripts, lambdas, comprehensions...) is
refused when the rules file is loaded, with what was found and where, so a rule
can only read values, never run code. Checked expressions are compiled once.

At evaluation a missing value (``None``: a feature the user has no data for) makes
a comparison or arithmetic false/None instead of raising: a rule that cannot be
decided does not fire.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import CodeType
from typing import Any

# Duration constants, so delays read naturally: ``30 * minute``.
UNITS: dict[str, float] = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86_400.0,
}

_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.Compare,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Eq,
    ast.NotEq,
    ast.Name,
    ast.Load,
    ast.Constant,
)


class ExpressionError(ValueError):
    """An expression that is not allowed, or names something unknown."""


@dataclass(frozen=True)
class Expression:
    """A checked, compiled expression and the names it reads."""

    text: str
    names: frozenset[str]
    code: CodeType

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The value for ``values`` (name -> value); None if it cannot be decided."""
        try:
            return eval(self.code, {"__builtins__": {}}, _Scope(values))
        except (TypeError, ZeroDivisionError, ArithmeticError):
            # None in a comparison or a sum, a division by zero: undecided.
            return None


class _Scope(dict[str, Any]):
    """Names for eval: the given values, then the duration units."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__()
        self.values = values

    def __missing__(self, key: str) -> Any:
        if key in UNITS:
            return UNITS[key]
        return self.values.get(key)


def compile_expression(text: Any, known: frozenset[str]) -> Expression:
    """Check and compile ``text``.

    Args:
        text: The expression as written (a number is accepted as its text).
        known: Names a rule may read (features, model outputs, event fields).

    Raises:
        ExpressionError: Not an expression, a construct not allowed, or an
            unknown name (with the closest known ones).
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ExpressionError(f"expected an expression, got {type(text).__name__}")
    source = str(text).strip()
    if not source:
        raise ExpressionError("empty expression")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an expression: {exc.msg} in {source!r}") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(
                f"{type(node).__name__.lower()} is not allowed in {source!r} "
                "(only values, names, and/or/not, comparisons and + - * / %)"
            )
        if isinstance(node, ast.Constant) and not isinstance(
            node.value, int | float | str | bool
        ):
            raise ExpressionError(f"constant {node.value!r} is not allowed")
        if isinstance(node, ast.Name):
            if node.id not in known and node.id not in UNITS:
                raise ExpressionError(_unknown(node.id, known))
            if node.id not in UNITS:
                names.add(node.id)
    code = compile(tree, "<rule>", "eval")
    return Expression(source, frozenset(names), code)


def _unknown(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown name {name!r}{hint}"
