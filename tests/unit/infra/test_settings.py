"""The one settings object: unknown variables refused, known ones read, bounds kept."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.settings import (
    PROJECT_ROOT,
    Settings,
    SettingsError,
    get_settings,
    variable_names,
)

# Where a SEGSCORE_ variable can be set or read: code, tests, scripts, docs.
SEARCHED_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".txt"}
VARIABLE = re.compile(r"\bSEGSCORE_[A-Z0-9_]*[A-Z0-9]")


@pytest.fixture(autouse=True)
def clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """No SEGSCORE_ variable but a private home, whatever the shell exported."""
    for name in list(os.environ):
        if name.upper().startswith("SEGSCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SEGSCORE_HOME", str(tmp_path))
    yield


def test_unknown_variable_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEGSCORE_NO_SUCH_THING", "1")
    with pytest.raises(SettingsError) as raised:
        Settings()
    message = str(raised.value)
    assert "SEGSCORE_NO_SUCH_THING" in message
    assert "did you mean" not in message
    assert "\n" not in message


def test_close_name_gets_a_suggestion(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEGSCORE_MAX_BODY_BYTE", "1000")
    monkeypatch.setenv("SEGSCORE_KAFKA_BROKERS", "127.0.0.1:9092")
    with pytest.raises(SettingsError) as raised:
        get_settings()
    message = str(raised.value)
    assert "SEGSCORE_KAFKA_BROKERS (did you mean SEGSCORE_KAFKA_BROKER?)" in message
    assert "SEGSCORE_MAX_BODY_BYTE (did you mean SEGSCORE_MAX_BODY_BYTES?)" in message


def test_names_are_matched_without_regard_to_case(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("segscore_max_body_bytes", "1000")
    assert Settings().max_body_bytes == 1000
    monkeypatch.setenv("Segscore_Trace_Request", "true")
    with pytest.raises(SettingsError, match="Segscore_Trace_Request"):
        Settings()


def test_valid_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("SEGSCORE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SEGSCORE_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("SEGSCORE_BATCH_MAX_EVENTS", "7")
    settings = get_settings()
    assert settings.home == tmp_path
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.max_body_bytes == 1000
    assert settings.batch_max_events == 7


def test_unknown_keyword_is_refused():
    with pytest.raises(ValidationError, match="max_body_byte"):
        Settings(max_body_byte=1000)  # type: ignore[call-arg]


def test_request_timeout_must_exceed_the_body_deadline(
    monkeypatch: pytest.MonkeyPatch,
):
    with pytest.raises(ValidationError, match="must exceed body_timeout_seconds"):
        Settings(body_timeout_seconds=15.0, request_timeout_seconds=15.0)
    assert Settings(body_timeout_seconds=5.0, request_timeout_seconds=6.0)

    monkeypatch.setenv("SEGSCORE_BODY_TIMEOUT_SECONDS", "20")
    with pytest.raises(SettingsError, match="must exceed") as raised:
        get_settings()
    assert "\n" not in str(raised.value)


def test_serving_bounds_name_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEGSCORE_HEADER_TIMEOUT_SECONDS", "31")
    with pytest.raises(SettingsError, match="SEGSCORE_HEADER_TIMEOUT_SECONDS"):
        get_settings()
    with pytest.raises(ValidationError):
        Settings(serve_workers=0)


def _project_files() -> Iterator[Path]:
    for root, dirs, files in os.walk(PROJECT_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and "egg-info" not in d]
        for name in files:
            path = Path(root, name)
            if path.suffix in SEARCHED_SUFFIXES or name == "Makefile":
                yield path


def test_every_variable_the_project_names_is_a_setting():
    known = set(variable_names())
    unknown = {
        f"{path.relative_to(PROJECT_ROOT)}: {name}"
        for path in _project_files()
        if path != Path(__file__)  # the misspellings tested above
        for name in VARIABLE.findall(path.read_text(errors="ignore"))
        if name not in known
    }
    assert not unknown, sorted(unknown)
