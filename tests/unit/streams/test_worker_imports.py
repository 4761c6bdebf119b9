"""A starting stream worker writes nothing before its engine's imports are done."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import run_python

# What the worker's engine build imports (streams.app._build_engine), and the
# repo config it reads its state layout from.
ENGINE_MODULES = (
    "streams.worker_engine",
    "streams.live_segments",
    "streams.triggers",
    "core.store.feast_config",
    "core.store.key_check",
)


def _loaded(modules: tuple[str, ...], home: Path) -> set[str]:
    code = f"import sys, {', '.join(modules)}\nprint(' '.join(sys.modules))"
    return set(run_python(code, home).split())


def test_the_worker_engine_does_not_import_feast(tmp_path: Path) -> None:
    # import feast took over a second of a restarted worker's time to its first
    # write; the worker writes Feast's layout itself and needs none of it.
    loaded = _loaded(ENGINE_MODULES, tmp_path)
    assert "redis" in loaded  # not vacuous: the modules did load
    assert "feast" not in loaded


def test_the_feature_store_still_gets_the_offline_store_by_its_path() -> None:
    from core.store.asof_offline_store import AsofDuckDBOfflineStore
    from core.store.feast_config import STORE_TYPE

    module, _, name = STORE_TYPE.rpartition(".")
    assert (module, name) == (
        AsofDuckDBOfflineStore.__module__,
        AsofDuckDBOfflineStore.__name__,
    )
