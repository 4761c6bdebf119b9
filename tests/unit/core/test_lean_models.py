"""Serving's models without their libraries: the same answers, checked at load.

:mod:`core.lgbm_text` must read LightGBM's text model as ``dump_model()`` gives it,
:mod:`core.tree_predict` must give ``predict(raw_score=True)`` to the bit, and a
model registered with the registry must load lean (no LightGBM, scikit-learn,
SciPy, pandas or pyarrow in the process) and score exactly as the full load does.
A replay that no longer matches what was recorded falls back to the library.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from core import lean_models
from core.lgbm_text import parse_model_text
from core.model_manager import load_models, wanted_tags
from core.registry import (
    PROPENSITY,
    SEGMENTER,
    load_propensity,
    load_segmenter,
    model_store,
    promote,
    save_propensity,
    save_segmenter,
)
from core.scoring import ONLINE_FEATURES, ScoringModels, score
from core.tree_predict import ZERO_THRESHOLD, TreeArrays
from core.tree_shap import TreeShapTables, probe_rows
from infra.settings import PROJECT_ROOT, Settings
from tests.support.model_bundles import tiny_bundles

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# What a lean serving worker must not import (~150 MB each).
HEAVY = ("lightgbm", "sklearn", "scipy", "pandas", "pyarrow")


def _booster(seed: int, **params: Any) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 5))
    x[:60, 2] = np.nan  # a feature with missing values: NaN-typed splits
    x[:, 4] = rng.integers(0, 3, 600)  # ties: thresholds between few values
    y = (x[:, 0] + x[:, 1] * x[:, 4] + rng.normal(size=600) > 0).astype(int)
    base = {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": seed}
    booster = lgb.train({**base, **params}, lgb.Dataset(x, y), num_boost_round=25)
    return booster, x


def _same_keys(parsed: Any, dumped: Any, path: str = "") -> None:
    """Every key the parser gives equals dump_model()'s (linear markers aside)."""
    if isinstance(parsed, dict):
        for key, value in parsed.items():
            if key == "leaf_const":
                assert key in dumped, path
                continue
            assert key in dumped, f"{path}/{key}"
            _same_keys(value, dumped[key], f"{path}/{key}")
    elif isinstance(parsed, list):
        assert len(parsed) == len(dumped), path
        for i, (a, b) in enumerate(zip(parsed, dumped, strict=True)):
            _same_keys(a, b, f"{path}[{i}]")
    else:
        assert parsed == dumped, f"{path}: {parsed!r} != {dumped!r}"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"zero_as_missing": True},
        {"linear_tree": True},
        {"min_data_in_leaf": 400},  # trees that never split: one leaf each
        {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.5},
    ],
)
def test_text_model_reads_as_dump_model(params: dict[str, Any]):
    booster, _ = _booster(0, **params)
    _same_keys(parse_model_text(booster.model_to_string()), booster.dump_model())


@hyp_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 10_000),
    leaves=st.integers(2, 40),
    rows=st.integers(1, 50),
)
def test_tree_arrays_give_lightgbm_raw_scores_to_the_bit(
    seed: int, leaves: int, rows: int
):
    booster, x = _booster(seed, num_leaves=leaves)
    dump = parse_model_text(booster.model_to_string())
    trees = TreeArrays.from_dump(dump)  # raises Unsupported if it cannot
    rng = np.random.default_rng(seed)
    data = np.nan_to_num(x[rng.integers(0, len(x), rows)], nan=0.5)
    data[0, rng.integers(0, 5)] = rng.choice([np.inf, -np.inf, 0.0])
    # LightGBM reads a magnitude at or below its zero threshold as 0.
    near_zero = [1e-36, -1e-36, ZERO_THRESHOLD, -ZERO_THRESHOLD, 2e-35]
    data[-1, rng.integers(0, 5)] = rng.choice(near_zero)
    edges = probe_rows(TreeShapTables.from_dump(dump), rows=rows, seed=seed)
    for matrix in (data, edges):
        want = booster.predict(matrix, raw_score=True, num_threads=1)
        assert np.array_equal(trees.margins(matrix), want)
        # The tables read inputs the same way.
        assert np.allclose(
            TreeShapTables.from_dump(dump).contributions(matrix),
            booster.predict(matrix, pred_contrib=True, num_threads=1),
            rtol=1e-9,
            atol=1e-12,
        )


def test_unsupported_models_are_left_to_lightgbm(tmp_path: Path):
    for params in ({"linear_tree": True}, {"boosting": "rf", "bagging_freq": 1}):
        booster, _ = _booster(1, bagging_fraction=0.5, **params)
        path = tmp_path / "model.txt"
        booster.save_model(str(path))
        assert lean_models.propensity_check(booster, path) is None


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return Settings(home=tmp_path)


def _register(settings: Settings, seed: int = 0) -> tuple[str, str]:
    segmenter, propensity = tiny_bundles(seed)
    tags = (
        save_segmenter(segmenter, settings, {}),
        save_propensity(propensity, settings, {}),
    )
    promote(SEGMENTER, tags[0], settings)
    promote(PROPENSITY, tags[1], settings)
    return tags


def _stored(seed: int, n: int, features: tuple[str, ...]) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    columns: dict[str, list[Any]] = {
        name: rng.gamma(2.0, 3.0, n).tolist() for name in features
    }
    columns[features[0]][0] = None  # a missing value (filled, not NaN, in scoring)
    return columns


def test_lean_load_scores_exactly_as_the_full_load(settings: Settings):
    _register(settings)
    full = ScoringModels.from_bundles(
        load_segmenter(settings), load_propensity(settings)
    )
    lean = load_models(settings, wanted_tags(settings), ONLINE_FEATURES)
    assert isinstance(lean.propensity.booster, lean_models.LeanBooster)
    assert isinstance(lean.segmenter.pipeline, lean_models.LeanPipeline)

    users = [f"u{i}" for i in range(40)]
    stored = _stored(1, len(users), full.stored_features)
    for explain in (True, False):
        want = score(users, stored, 1e9, full, explain=explain, top_k=50)
        got = score(users, stored, 1e9, lean, explain=explain, top_k=50)
        for w, g in zip(want["scores"], got["scores"], strict=True):
            assert g["segment"] == w["segment"]
            assert g["propensity"] == pytest.approx(w["propensity"], rel=1e-12)
            assert g["base_value"] == pytest.approx(w["base_value"], rel=1e-12)
            assert [c["feature"] for c in g["explanation"]] == [
                c["feature"] for c in w["explanation"]
            ]
            assert np.allclose(
                [c["contribution"] for c in g["explanation"]],
                [c["contribution"] for c in w["explanation"]],
                rtol=1e-9,
                atol=1e-12,
            )
        if not explain:  # the raw score path is LightGBM's to the bit
            assert [s["propensity"] for s in got["scores"]] == [
                s["propensity"] for s in want["scores"]
            ]

    # A NaN (only a direct caller sends one) is LightGBM's own answer.
    row = np.full((1, len(full.propensity.features)), np.nan)
    assert np.array_equal(
        lean.propensity.booster.predict(row, raw_score=True),
        full.propensity.booster.predict(row, raw_score=True),
    )


def test_a_lean_worker_imports_no_model_library(settings: Settings):
    _register(settings)
    program = (
        "import json, sys\n"
        "from core.model_manager import load_models, wanted_tags\n"
        "from core.scoring import ONLINE_FEATURES, score\n"
        "from infra.settings import Settings\n"
        f"settings = Settings(home={str(settings.home)!r})\n"
        "models = load_models(settings, wanted_tags(settings), ONLINE_FEATURES)\n"
        "payload = score(['a', 'b'], {}, 1e9, models, explain=True)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'n': len(payload['scores'])}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**_env(), "BENTOML_HOME": str(settings.home / "bentoml")},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"heavy": [], "n": 2}


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SEGSCORE_")}


def _model_dir(settings: Settings, tag: str) -> Path:
    return Path(model_store(settings).get(tag).path)


def test_a_replay_that_no_longer_matches_falls_back_to_the_library(
    settings: Settings, caplog: pytest.LogCaptureFixture
):
    segmenter_tag, propensity_tag = _register(settings)
    # Recorded answers that the files no longer give: a changed leaf value, a
    # changed centre.
    check_file = _model_dir(settings, propensity_tag) / lean_models.PROPENSITY_CHECK
    check = json.loads(check_file.read_text())
    check["margins"][0] += 1e-9
    check_file.write_text(json.dumps(check))
    replay_file = _model_dir(settings, segmenter_tag) / lean_models.SEGMENTER_REPLAY
    replay = json.loads(replay_file.read_text())
    replay["params"]["centers"] = replay["params"]["centers"][::-1]
    replay_file.write_text(json.dumps(replay))

    models = load_models(settings, wanted_tags(settings), ONLINE_FEATURES)
    assert isinstance(models.propensity.booster, lgb.Booster)
    assert not isinstance(models.segmenter.pipeline, lean_models.LeanPipeline)
    assert "raw scores differ" in caplog.text
    assert "segmenter replay differs" in caplog.text


def test_a_model_registered_before_the_replays_loads_with_its_library(
    settings: Settings,
):
    segmenter_tag, propensity_tag = _register(settings)
    (_model_dir(settings, propensity_tag) / lean_models.PROPENSITY_CHECK).unlink()
    (_model_dir(settings, segmenter_tag) / lean_models.SEGMENTER_REPLAY).unlink()
    models = load_models(settings, wanted_tags(settings), ONLINE_FEATURES)
    assert isinstance(models.propensity.booster, lgb.Booster)
    assert models.shap_tables is not None  # checked against the booster as before


def test_a_batch_scorer_can_ask_for_the_libraries(settings: Settings):
    # The stream worker and batch scoring score thousands of rows at a time,
    # where LightGBM's predictor is faster than the replay's walk.
    _register(settings)
    models = load_models(settings, wanted_tags(settings), ONLINE_FEATURES, lean=False)
    assert isinstance(models.propensity.booster, lgb.Booster)
    assert not isinstance(models.segmenter.pipeline, lean_models.LeanPipeline)
