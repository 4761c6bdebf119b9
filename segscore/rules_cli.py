"""``segscore rules``: check a triggers' rules file before a worker takes it up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.rules.expressions import Expression
from core.rules.spec import DEFAULT_RULES, Rule, RulesError, load_rules
from infra.settings import get_settings

app = typer.Typer(help="The behavioural triggers' rules file.", no_args_is_help=True)
console = Console()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _what(rule: Rule) -> str:
    on = "/".join(sorted(rule.on)) or "any event"
    when = f" if {rule.when.text}" if rule.when is not None else ""
    if rule.kind == "timer":
        after = rule.after.text if isinstance(rule.after, Expression) else None
        wait = after or _duration(rule.after if isinstance(rule.after, float) else 0)
        unless = "/".join(sorted(rule.unless)) or "nothing"
        return f"{on}{when}, then {wait} without {unless}"
    if rule.kind == "repeat":
        return f"{rule.count} x {on} of one {rule.per} within {_duration(rule.within)}"
    return f"on {on}: {rule.when.text if rule.when else ''}"


@app.command()
def check(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="The file (default: SEGSCORE_RULES_PATH, else the shipped one)."
        ),
    ] = None,
) -> None:
    """Check a rules file; print its rules, or every error with its line (exit 2)."""
    path = path or get_settings().rules_path or DEFAULT_RULES
    try:
        rules = load_rules(path)
    except RulesError as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table(title=f"{path} (version {rules.version})")
    for column in ("line", "rule", "kind", "fires", "cool-down", "lasts"):
        table.add_column(column, overflow="fold")
    for rule in rules.rules:
        table.add_row(
            str(rule.line),
            rule.name,
            rule.kind,
            _what(rule),
            _duration(rule.cooldown) if rule.cooldown else "",
            _duration(rule.lasts),
        )
    console.print(table)
