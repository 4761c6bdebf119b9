"""Which models serve: champion or pinned version, validation, hot swap, fast paths.

The model store is BentoML's real on-disk store in a temporary home; the service
side is :class:`core.model_manager.ModelManager` driven by hand (``check()`` is what
the background poll runs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler

from core.model_manager import ModelManager, ModelRefused, wanted_tags
from core.registry import (
    PROPENSITY,
    SEGMENTER,
    promote,
    save_propensity,
    save_segmenter,
)
from core.scoring import ONLINE_FEATURES, ScoringModels
from core.segment_assign import segment_assigner
from infra.settings import Settings
from serving.metrics import observe_many
from tests.support.model_bundles import tiny_bundles

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return Settings(home=tmp_path)


def _save_pair(settings: Settings, seed: int) -> tuple[str, str]:
    segmenter, propensity = tiny_bundles(seed)
    return (
        save_segmenter(segmenter, settings, {"seed": seed}),
        save_propensity(propensity, settings, {"seed": seed}),
    )


def _promote(settings: Settings, tags: tuple[str, str]) -> None:
    promote(SEGMENTER, tags[0], settings)
    promote(PROPENSITY, tags[1], settings)
    # Promotions in one test can fall in the same mtime tick on some
    # filesystems; the manager polls the file's mtime.
    path = settings.home / "champions.json"
    stamp = time.time_ns() + 1_000_000
    os.utime(path, ns=(stamp, stamp))


def _manager(settings: Settings, **serving: str) -> ModelManager:
    return ModelManager(settings.model_copy(update=serving), ONLINE_FEATURES)


def test_follows_the_champion_and_swaps_on_promotion(settings: Settings):
    first, second = _save_pair(settings, 0), _save_pair(settings, 1)
    _promote(settings, first)
    manager = _manager(settings)
    assert manager.current.versions == {"segmenter": first[0], "propensity": first[1]}
    old = manager.current

    assert manager.check() is False  # nothing changed
    _promote(settings, second)
    assert manager.check() is True

    assert manager.current.versions == {
        "segmenter": second[0],
        "propensity": second[1],
    }
    # The pair held by an in-flight request is untouched by the swap.
    assert old.versions == {"segmenter": first[0], "propensity": first[1]}


def test_pinned_version_ignores_promotions(settings: Settings):
    first, second = _save_pair(settings, 0), _save_pair(settings, 1)
    _promote(settings, first)
    version = first[1].split(":", 1)[1]  # a bare version is accepted too
    manager = _manager(settings, propensity_version=version)

    _promote(settings, second)
    manager.check()

    assert manager.current.versions == {
        "segmenter": second[0],  # not pinned: follows the champion
        "propensity": first[1],
    }
    tags = wanted_tags(settings.model_copy(update={"segmenter_version": first[0]}))
    assert tags.segmenter == first[0]


def test_broken_version_is_refused_and_the_last_good_keeps_serving(
    settings: Settings,
):
    good = _save_pair(settings, 0)
    _promote(settings, good)
    manager = _manager(settings)
    reloads: list[str] = []
    manager.on_reload = lambda outcome, detail: reloads.append(outcome)

    segmenter, propensity = tiny_bundles(2)
    # The booster was trained on the catalogue order; a bundle that lists its
    # inputs in another order would feed every value to the wrong split.
    propensity.features = list(reversed(propensity.features))
    broken = (
        save_segmenter(segmenter, settings, {}),
        save_propensity(propensity, settings, {}),
    )
    _promote(settings, broken)

    assert manager.check() is False
    assert manager.current.versions == {"segmenter": good[0], "propensity": good[1]}
    assert reloads == ["refused"]
    # Not retried on every poll: only a new promotion is looked at again.
    assert manager.check() is False
    assert reloads == ["refused"]


def test_a_broken_champion_at_start_is_an_error(settings: Settings):
    segmenter, propensity = tiny_bundles(0)
    propensity.calibration = (float("nan"), 0.0)
    tags = (
        save_segmenter(segmenter, settings, {}),
        save_propensity(propensity, settings, {}),
    )
    _promote(settings, tags)
    with pytest.raises(ModelRefused, match="propensity on defaults is nan"):
        _manager(settings)


def test_missing_version_is_refused(settings: Settings):
    _promote(settings, _save_pair(settings, 0))
    with pytest.raises(ModelRefused, match=r"NotFound|not found"):
        _manager(settings, propensity_version="nosuchversion")


@pytest.mark.parametrize("with_pca", [False, True])
def test_fast_segment_assignment_equals_the_pipeline(with_pca: bool):
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 3.0, size=(2000, 6))
    steps = [
        ("log1p", FunctionTransformer(np.log1p)),
        ("scale", StandardScaler()),
    ]
    if with_pca:
        steps.append(("pca", PCA(n_components=3, random_state=0)))
    steps.append(("kmeans", KMeans(n_clusters=5, n_init=3, random_state=0)))
    pipeline = Pipeline(steps).fit(x[:1000])

    fast = segment_assigner(pipeline)

    held_out = x[1000:]
    assert np.array_equal(fast(held_out), pipeline.predict(held_out))


def test_unknown_pipeline_step_falls_back_to_scikit_learn():
    x = np.random.default_rng(4).random((200, 3))
    pipeline = Pipeline(
        [("scale", MinMaxScaler()), ("kmeans", KMeans(n_clusters=3, n_init=2))]
    ).fit(x)
    assert np.array_equal(segment_assigner(pipeline)(x), pipeline.predict(x))


def test_scoring_models_use_the_checked_fast_assignment():
    models = ScoringModels.from_bundles(*tiny_bundles(0))
    width = len(models.segmenter.features)
    probe = np.random.default_rng(5).gamma(2.0, 2.0, size=(300, width))
    assert np.array_equal(models.assign_segments(probe), models.segmenter.assign(probe))


def test_bulk_histogram_observe_equals_one_by_one():
    values = [0.5, 1.0, 1.5, 10.0, 59.0, 3600.0, 1e9, 7.0]
    bulk = Histogram("bulk", "b", buckets=(1, 10, 60), registry=CollectorRegistry())
    single = Histogram("one", "o", buckets=(1, 10, 60), registry=CollectorRegistry())

    observe_many(bulk, values)
    for value in values:
        single.observe(value)

    def samples(h: Histogram) -> list[tuple[dict[str, str], float]]:
        (metric,) = h.collect()
        return [(s.labels, s.value) for s in metric.samples if "created" not in s.name]

    assert samples(bulk) == samples(single)
