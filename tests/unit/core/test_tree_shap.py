"""TreeSHAP look-up tables give LightGBM's own SHAP values, or are not used."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.tree_shap import TreeShapTables, Unsupported, checked_tables, probe_rows


def _booster(
    seed: int, rows: int = 400, features: int = 4, leaves: int = 15, **params: object
) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Few distinct values per feature: thresholds are hit exactly by the data,
    # and few features make paths that split the same feature again.
    x = rng.integers(0, 6, size=(rows, features)).astype(np.float64)
    y = (x[:, 0] + rng.normal(0, 1.5, rows) > 2.5).astype(int)
    categorical = params.pop("categorical_feature", "auto")
    data = lgb.Dataset(x, y, params={"verbose": -1}, categorical_feature=categorical)
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": leaves,
            "min_data_in_leaf": 3,
            "verbose": -1,
            "seed": seed,
            **params,
        },
        data,
        num_boost_round=25,
    )
    return booster, x


def _assert_same(booster: lgb.Booster, tables: TreeShapTables, x: np.ndarray) -> None:
    want = booster.predict(x, pred_contrib=True)
    np.testing.assert_allclose(tables.contributions(x), want, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    features=st.integers(1, 6),
    leaves=st.integers(2, 40),
)
def test_tables_give_lightgbms_values_on_data_and_at_every_threshold(
    seed: int, features: int, leaves: int
) -> None:
    booster, x = _booster(seed, features=features, leaves=leaves)
    tables = TreeShapTables.from_dump(booster.dump_model())
    _assert_same(booster, tables, x)
    _assert_same(booster, tables, probe_rows(tables, rows=50, seed=seed))


def test_values_and_expected_value_add_up_to_the_raw_margin() -> None:
    booster, x = _booster(3)
    tables = TreeShapTables.from_dump(booster.dump_model())
    contrib = tables.contributions(x)
    np.testing.assert_allclose(
        contrib.sum(axis=1), booster.predict(x, raw_score=True), atol=1e-10
    )
    assert tables.expected_value == pytest.approx(
        booster.predict(x[:1], pred_contrib=True)[0, -1], abs=1e-12
    )


def test_far_outside_values_and_no_rows() -> None:
    booster, x = _booster(5)
    tables = TreeShapTables.from_dump(booster.dump_model())
    extreme = np.array([[-1e300, 1e300, -np.inf, np.inf], [0.0, -0.0, 5.0, 1e-300]])
    _assert_same(booster, tables, extreme)
    assert tables.contributions(x[:0]).shape == (0, x.shape[1] + 1)


def test_single_leaf_trees_only_add_to_the_expected_value() -> None:
    x = np.zeros((50, 2))
    y = np.r_[np.zeros(25), np.ones(25)]
    booster = lgb.train(
        {"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), num_boost_round=3
    )
    tables = TreeShapTables.from_dump(booster.dump_model())
    _assert_same(booster, tables, x[:3])


def test_categorical_splits_are_left_to_lightgbm() -> None:
    booster, _ = _booster(7, categorical_feature=[0], min_data_per_group=2)
    with pytest.raises(Unsupported, match="split"):
        TreeShapTables.from_dump(booster.dump_model())
    assert checked_tables(booster) is None


def test_zero_as_missing_splits_are_left_to_lightgbm() -> None:
    booster, _ = _booster(11, zero_as_missing=True)
    assert checked_tables(booster) is None


def test_checked_tables_are_used_for_a_plain_model() -> None:
    booster, x = _booster(13)
    tables = checked_tables(booster)
    assert tables is not None
    _assert_same(booster, tables, x)


def test_paths_or_tables_over_the_limits_are_left_to_lightgbm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    booster, _ = _booster(17, features=5, leaves=30)
    monkeypatch.setattr("core.tree_shap.MAX_PATH_FEATURES", 2)
    with pytest.raises(Unsupported, match="distinct features"):
        TreeShapTables.from_dump(booster.dump_model())
    monkeypatch.setattr("core.tree_shap.MAX_PATH_FEATURES", 12)
    monkeypatch.setattr("core.tree_shap.MAX_TABLE_BYTES", 1024)
    assert checked_tables(booster) is None


def test_linear_trees_are_left_to_lightgbm() -> None:
    booster, _ = _booster(19, linear_tree=True)
    with pytest.raises(Unsupported, match="linear"):
        TreeShapTables.from_dump(booster.dump_model())
    assert checked_tables(booster) is None
