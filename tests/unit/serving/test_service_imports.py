"""The bentoml parent imports the service module only: it must stay light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.settings import PROJECT_ROOT

HEAVY = ("numpy", "lightgbm", "sklearn", "scipy", "pandas", "pyarrow", "feast")


def _imported_after(module: str, home: Path) -> list[str]:
    code = (
        f"import sys, {module}\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "SEGSCORE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


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
