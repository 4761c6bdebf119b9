"""The rules file: what it accepts, and errors that name the line and the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.rules.expressions import ExpressionError, compile_expression
from core.rules.spec import KNOWN_NAMES, RulesError, load_rules, parse_rules


def _problems(text: str) -> list[tuple[int, str]]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "rules.yaml")
    return [(p.line, p.field) for p in caught.value.problems]


def test_the_shipped_rules_load_with_their_kinds() -> None:
    rules = load_rules()
    kinds = {rule.name: rule.kind for rule in rules.rules}
    assert kinds == {
        "cart_abandoned": "timer",
        "repeat_interest": "repeat",
        "hot_lead": "condition",
        "lapsing": "timer",
    }
    cart = rules.named["cart_abandoned"]
    assert cart.after == 1800.0 and cart.unless == {"purchase"}
    assert cart.cooldown == 6 * 3600
    assert rules.needs_propensity
    assert len(rules.version) == 12


def test_each_error_names_its_line_and_field() -> None:
    text = (
        "rules:\n"  # 1
        "  - name: a\n"  # 2
        "    on: add_to_cart\n"  # 3
        "    after: 30 minutes\n"  # 4
        "  - name: b\n"  # 5
        "    when: propensty > 0.5\n"  # 6
        "  - name: c\n"  # 7
        "    on: teleport\n"  # 8
        "    per: product_id\n"  # 9
        "    count: 3\n"  # 10
        "    within: 1 fortnight\n"  # 11
        "    colour: red\n"  # 12
    )
    assert sorted(_problems(text)) == [
        (4, "rules[0].after"),
        (6, "rules[1].when"),
        (8, "rules[2].on"),
        (11, "rules[2].within"),
        (12, "rules[2].colour"),
    ]


def test_messages_say_what_is_wrong() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules("rules:\n  - name: b\n    when: propensty > 0.5\n", "r.yaml")
    text = str(caught.value)
    assert "r.yaml" in text and "line 3: rules[0].when" in text
    assert "did you mean propensity" in text


def test_duplicate_names_point_at_the_first() -> None:
    text = "rules:\n  - name: a\n    when: events_1h > 1\n  - name: a\n    when: 1\n"
    with pytest.raises(RulesError) as caught:
        parse_rules(text)
    (problem,) = caught.value.problems
    assert (problem.line, problem.field) == (4, "rules[1].name")
    assert "line 2" in problem.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("rules: [\n", 2),
        ("- just a list\n", 1),
        ("rules: 3\n", 1),
        ("other: 1\nrules: []\n", 1),
    ],
)
def test_a_file_that_is_not_a_rules_file_is_refused(text: str, line: int) -> None:
    found = _problems(text)
    assert found and found[0][0] == line


def test_kind_specific_fields_are_refused_elsewhere() -> None:
    text = "rules:\n  - name: a\n    when: events_1h > 2\n    unless: [purchase]\n"
    assert _problems(text) == [(4, "rules[0].unless")]
    timer = "rules:\n  - name: t\n    after: 5m\n"
    assert _problems(timer) == [(2, "rules[0].on")]


def test_an_empty_rule_list_is_valid() -> None:
    assert parse_rules("rules: []\n").rules == ()


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "events_1h.real",
        "events_1h[0]",
        "(lambda: 1)()",
        "[x for x in events_1h]",
        "events_1h if 1 else 2",
        "f'{events_1h}'",
        "unknown_feature > 1",
    ],
)
def test_expressions_only_read_values(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text, KNOWN_NAMES)


def test_missing_values_make_an_expression_undecided() -> None:
    expression = compile_expression("purchase_gap_mean_days * 2 * day", KNOWN_NAMES)
    assert expression.evaluate({"purchase_gap_mean_days": 1.5}) == 3 * 86_400
    assert expression.evaluate({"purchase_gap_mean_days": None}) is None
    ratio = compile_expression("events_1h / cart_adds_1h > 1", KNOWN_NAMES)
    assert ratio.evaluate({"events_1h": 3, "cart_adds_1h": 0}) is None


@given(st.text(max_size=40))
def test_any_text_is_compiled_or_refused_never_run(text: str) -> None:
    try:
        expression = compile_expression(text, KNOWN_NAMES)
    except ExpressionError:
        return
    # Whatever compiled evaluates without raising, on any values.
    expression.evaluate({})
