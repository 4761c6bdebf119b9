"""``segscore rules check``: the rules a file holds, or its errors by line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from segscore.cli import app


def test_check_lists_the_shipped_rules() -> None:
    result = CliRunner().invoke(app, ["rules", "check"])
    assert result.exit_code == 0, result.output
    for name in ("cart_abandoned", "repeat_interest", "hot_lead", "lapsing"):
        assert name in result.output


def test_check_names_each_error_by_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: a\n"
        "    on: add_to_cart\n"
        "    after: 30 mins\n"
        "  - name: b\n"
        "    when: sesions_1h > 0\n"
    )
    result = CliRunner().invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 2
    assert "line 4: rules[0].after" in result.output
    assert "line 6: rules[1].when" in result.output
    assert "sessions_1h" in result.output  # the suggestion
