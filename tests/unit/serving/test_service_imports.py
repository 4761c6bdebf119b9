"""The bentoml parent imports the service module only: it must stay light."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import run_python

HEAVY = ("numpy", "lightgbm", "sklearn", "scipy", "pandas", "pyarrow", "feast")


def _imported_after(module: str, home: Path) -> list[str]:
    code = (
        f"import sys, {module}\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    return run_python(code, home).split()


def test_the_service_module_loads_no_model_or_feature_store_library(
    tmp_path: Path,
) -> None:
    assert _imported_after("serving.service", tmp_path) == []


def test_the_engine_loads_numpy_but_no_model_or_feature_store_library(
    tmp_path: Path,
) -> None:
    # Not vacuous: the engine, which each worker imports, does load numpy. The
    # models load as numpy replays (tests/unit/core/test_lean_models.py).
    assert _imported_after("serving.engine", tmp_path) == ["numpy"]
