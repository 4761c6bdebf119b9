"""The direct key build's check against Feast, remembered per Feast release."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from core.store.key_check import checked_layout
from core.store.state_store import StateLayout
from tests.support.processes import run_python


def _entry(layout: StateLayout) -> str:
    release = version("feast")
    return f"feast {release}, v{layout.serialization_version}, {layout.project}"


def test_the_first_check_compares_with_feast_and_records_the_verdict(
    tmp_path: Path,
) -> None:
    verdicts = tmp_path / "checks" / "key_checks.json"
    layout = checked_layout(StateLayout(project="p"), verdicts)
    assert layout.direct_key is True
    assert json.loads(verdicts.read_text()) == {_entry(layout): True}
    assert layout.key("u1") == layout.feast_key("u1")


def test_a_recorded_verdict_is_used_without_importing_feast(tmp_path: Path) -> None:
    verdicts = tmp_path / "key_checks.json"
    # A verdict Feast would not give: proves the file, not a check, decided.
    verdicts.write_text(json.dumps({_entry(StateLayout(project="p")): False}))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from core.store.key_check import checked_layout\n"
        "from core.store.state_store import StateLayout\n"
        f"layout = checked_layout(StateLayout(project='p'), Path({str(verdicts)!r}))\n"
        "print(layout.direct_key, 'feast' in sys.modules)\n"
    )
    assert run_python(code, tmp_path).split() == ["False", "False"]


def test_another_release_or_a_broken_file_means_checking_again(
    tmp_path: Path,
) -> None:
    verdicts = tmp_path / "key_checks.json"
    other = "feast 0.0.1, v3, p"
    verdicts.write_text(json.dumps({other: False}))
    layout = checked_layout(StateLayout(project="p"), verdicts)
    assert layout.direct_key is True
    assert json.loads(verdicts.read_text()) == {other: False, _entry(layout): True}

    verdicts.write_text("{not json")
    assert checked_layout(StateLayout(project="p"), verdicts).direct_key is True
    assert json.loads(verdicts.read_text()) == {_entry(layout): True}


def test_a_layout_already_checked_is_left_as_it_is(tmp_path: Path) -> None:
    verdicts = tmp_path / "key_checks.json"
    layout = StateLayout(project="p", direct_key=False)
    assert checked_layout(layout, verdicts) is layout
    assert not verdicts.exists()


def test_registering_the_repo_records_the_verdict_a_worker_reads(
    tmp_path: Path,
) -> None:
    from core.store.feast_config import feature_store
    from core.store.key_check import VERDICTS, record_key_check
    from infra.settings import Settings

    settings = Settings(home=tmp_path)
    store = feature_store(settings, "redis://127.0.0.1:1/0")  # no connection made
    layout = record_key_check(store)
    assert layout.direct_key is True
    # Where a worker of the same home looks (streams.app.state_layout).
    verdicts = settings.data_dir / VERDICTS
    assert json.loads(verdicts.read_text()) == {_entry(layout): True}
