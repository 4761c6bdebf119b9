"""The training pipeline end to end on real Feast (DuckDB offline store) and a real
BentoML model store, in a temporary home."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore
from feast import FeatureStore
from feast.repo_config import RepoConfig

from core import registry
from core.event_files import events_frame
from core.feature_catalog import PROPENSITY_FEATURES, SEGMENTATION_FEATURES
from core.names import PROPENSITY_SERVICE, SEGMENTATION_SERVICE, offline_service
from core.store.feast_config import feature_store, repo_config_dict
from feature_repo.apply import apply_repo
from infra.settings import Settings
from segscore.simulator import simulate
from training.pipeline import TrainResult, data_fingerprint, train
from training.training_set import complete_features, matrix, training_frame

START = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC
DAYS = 24
# Construction needs an online store address; nothing here goes online.
UNUSED_REDIS = "redis://127.0.0.1:1/0"


def _reload_feature_repo() -> None:
    # feature_repo resolves its file paths from the settings at import time.
    from feature_repo import data_sources, feature_services, features, live_features

    for module in (data_sources, features, feature_services, live_features):
        importlib.reload(module)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("training-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGSCORE_HOME", str(root))
        patch.setenv("BENTOML_HOME", str(root / "bentoml"))
        _reload_feature_repo()
        models = root / "bentoml" / "models"
        models.mkdir(parents=True)
        # BentoML resolves its store once per process; other tests may have
        # touched it already under another home.
        with BentoMLContainer.model_store.patch(ModelStore(str(models))):
            yield root
    _reload_feature_repo()


@pytest.fixture(scope="module")
def trained(home: Path):
    settings = Settings()
    assert settings.home == home
    store = feature_store(settings, UNUSED_REDIS)
    apply_repo(store)
    sim = simulate(240, START, START + DAYS * 86_400, seed=5)
    events = events_frame(sim.events)
    result = train(settings, store, events, sim.personas)
    return settings, store, events, sim.personas, result


def test_models_are_stored_promoted_and_loadable(trained) -> None:
    settings, _, _, _, result = trained
    champions = json.loads((settings.home / "champions.json").read_text())
    assert champions == {
        registry.SEGMENTER: {"champion": result.segmenter.tag, "history": []},
        registry.PROPENSITY: {"champion": result.propensity.tag, "history": []},
    }
    assert [d.reason for d in result.decisions] == ["no champion yet"] * 2
    segmenter = registry.load_segmenter(settings)
    propensity = registry.load_propensity(settings)
    assert segmenter.tag == result.segmenter.tag
    assert propensity.tag == result.propensity.tag
    assert segmenter.features == list(SEGMENTATION_FEATURES)
    assert propensity.features == list(PROPENSITY_FEATURES)
    assert [s.name for s in segmenter.segments] == [
        s.name for s in result.segmenter.segments
    ]
    assert propensity.calibration == pytest.approx(result.propensity.calibration)

    # The stored models score exactly like the fitted ones.
    rng = np.random.default_rng(0)
    probe = np.abs(rng.normal(5.0, 3.0, size=(50, len(PROPENSITY_FEATURES))))
    np.testing.assert_allclose(
        propensity.margin(probe), result.propensity.margin(probe), rtol=1e-9
    )
    seg_probe = probe[:, : len(SEGMENTATION_FEATURES)]
    np.testing.assert_array_equal(
        segmenter.assign(seg_probe), result.segmenter.assign(seg_probe)
    )


def test_metadata_carries_metrics_and_provenance(trained) -> None:
    _, _, events, _, result = trained
    for tag, service, features in (
        (result.segmenter.tag, "segmentation", SEGMENTATION_FEATURES),
        (result.propensity.tag, "propensity", PROPENSITY_FEATURES),
    ):
        meta = bentoml.models.get(tag).info.metadata
        assert meta["feature_service"] == service
        assert meta["features"] == list(features)
        assert meta["code_version"]
        assert meta["n_events"] == len(events)
        assert meta["data_fingerprint"] == data_fingerprint(events)
        assert meta["n_rows"] > 0
        assert meta["training_window_start"].startswith("2024-01-01")
    seg_meta = bentoml.models.get(result.segmenter.tag).info.metadata
    assert {"silhouette", "davies_bouldin", "k", "ari_vs_personas"} <= set(seg_meta)
    prop_meta = bentoml.models.get(result.propensity.tag).info.metadata
    assert {"roc_auc", "pr_auc", "brier", "baseline_roc_auc"} <= set(prop_meta)


def test_data_fingerprint_ignores_order_but_not_content(trained) -> None:
    _, _, events, _, _ = trained
    shuffled = events.sample(frac=1.0, random_state=3)
    assert data_fingerprint(shuffled) == data_fingerprint(events)
    assert data_fingerprint(events.iloc[1:]) != data_fingerprint(events)
    changed = events.copy()
    changed.loc[changed.index[0], "ts"] += 1.0
    assert data_fingerprint(changed) != data_fingerprint(events)


def test_feast_training_set_is_point_in_time_correct(trained) -> None:
    _, store, _, _, result = trained
    stream = result.backfill.stream
    snapshot = stream["event_timestamp"].unique()[len(result.snapshots) // 2]
    rows = stream[stream["event_timestamp"] == snapshot].head(40)
    # Half a day after the snapshot Feast must still serve that snapshot's row,
    # with the ages derived at the later instant.
    later = rows[["user_id"]].assign(
        event_timestamp=pd.Timestamp(snapshot) + pd.Timedelta(hours=12)
    )
    got = training_frame(store, later, PROPENSITY_SERVICE).set_index("user_id")
    history = result.backfill.history
    expected_stored = rows.merge(
        history[history["event_timestamp"] == snapshot],
        on=["user_id", "event_timestamp"],
    )
    expected = complete_features(
        expected_stored, PROPENSITY_FEATURES, later["event_timestamp"].to_numpy()
    ).set_index(expected_stored["user_id"])
    pd.testing.assert_frame_equal(
        got.loc[expected.index, list(PROPENSITY_FEATURES)], expected, rtol=1e-9
    )
    assert got.loc[expected.index, "hours_since_last_event"].min() >= 12


def test_result_exposes_states_and_metrics(trained) -> None:
    _, _, events, personas, result = trained
    assert set(result.states) == set(events["user_id"])
    assert result.segmenter.metrics["ari_vs_personas"] > 0.3
    assert result.propensity.metrics["roc_auc"] > 0.75
    assert set(result.timings) >= {"backfill", "propensity_fit", "save"}
    assert len(personas) == 240


def test_retraining_keeps_segment_ids(trained) -> None:
    settings, store, events, _, first = trained
    second: TrainResult = train(settings, store, events, promote=False)
    assert [(s.id, s.name) for s in second.segmenter.segments] == [
        (s.id, s.name) for s in first.segmenter.segments
    ]
    data = matrix(
        training_frame(
            store,
            pd.DataFrame(
                {
                    "user_id": sorted(first.states),
                    "event_timestamp": pd.Timestamp(
                        first.snapshots[-1], unit="s", tz="UTC"
                    ),
                }
            ),
            SEGMENTATION_SERVICE,
        ),
        SEGMENTATION_FEATURES,
    )
    assert np.mean(first.segmenter.assign(data) == second.segmenter.assign(data)) > 0.95
    # Not promoted: the champions are still the first run's.
    assert registry.load_segmenter(settings).tag == first.segmenter.tag


def test_a_challenger_no_better_than_the_champion_is_not_promoted(trained) -> None:
    settings, store, events, _, first = trained
    # Same data, same code: the challenger ties the champion on the same holdout.
    again: TrainResult = train(settings, store, events)
    verdicts = {d.model: d for d in again.decisions}
    assert not verdicts["propensity"].promoted
    assert verdicts["propensity"].champion == first.propensity.tag
    assert verdicts["propensity"].challenger_score == pytest.approx(
        verdicts["propensity"].champion_score
    )
    assert "<=" in verdicts["propensity"].reason
    assert not verdicts["segmenter"].promoted
    assert registry.champion_tag(registry.PROPENSITY, settings) == first.propensity.tag

    # Promote by hand, then roll back to the previous champion.
    registry.promote(registry.PROPENSITY, again.propensity.tag, settings)
    assert registry.load_propensity(settings).tag == again.propensity.tag
    listed = registry.list_models(settings)
    champions = [v.tag for v in listed if v.champion]
    assert again.propensity.tag in champions and first.segmenter.tag in champions
    assert {v.tag for v in listed} >= {first.propensity.tag, again.propensity.tag}
    assert registry.rollback(registry.PROPENSITY, settings) == first.propensity.tag
    assert registry.load_propensity(settings).tag == first.propensity.tag
    with pytest.raises(LookupError, match="no earlier champion"):
        registry.rollback(registry.PROPENSITY, settings)


def test_too_short_history_is_refused_with_a_reason(trained) -> None:
    settings, store, events, _, _ = trained
    short = events[events["ts"] < START + 4 * 86_400]
    with pytest.raises(ValueError, match="label horizon"):
        train(settings, store, short)


def test_the_asof_store_builds_the_same_set_as_feasts_own_duckdb_store(
    trained,
) -> None:
    # The stock store ranks every candidate row with a window query; ours does
    # one ASOF join. Same registry, same files: the training sets must agree,
    # including entity rows between snapshots, before a user's first snapshot,
    # past the views' TTLs and repeated rows.
    settings, store, _, _, result = trained
    stream = result.backfill.stream
    snaps = np.sort(stream["event_timestamp"].unique())  # rows come by user
    users = stream["user_id"].unique()[:60]
    instants = [
        snaps[0] - pd.Timedelta(hours=1),
        snaps[3],
        snaps[5] + pd.Timedelta(hours=13, seconds=1),
        snaps[-1] + pd.Timedelta(days=9),  # beyond both TTLs
    ]
    entities = pd.DataFrame(
        [(u, t) for u in users for t in instants],
        columns=["user_id", "event_timestamp"],
    )
    # Repeats: u0 at all four instants, u1 at the first three.
    entities = pd.concat([entities, entities.iloc[:7]], ignore_index=True)
    entities["label"] = np.arange(len(entities)) % 2
    config = repo_config_dict(settings, UNUSED_REDIS)
    config["offline_store"] = {"type": "duckdb"}
    stock = FeatureStore(
        repo_path=str(settings.feature_repo),
        config=RepoConfig(repo_path=settings.feature_repo, **config),
    )
    for service in (PROPENSITY_SERVICE, SEGMENTATION_SERVICE):
        ours = training_frame(store, entities, service)
        theirs = training_frame(stock, entities, service)
        assert len(ours) == len(entities)
        pd.testing.assert_frame_equal(ours, theirs)
    # The offline twin: the service itself derives from the online state blob.
    features = store.get_feature_service(offline_service(PROPENSITY_SERVICE))
    stored = store.get_historical_features(entities, features).to_df()
    # Rows with nothing to join stay, with missing features.
    early = stored["event_timestamp"] < snaps[0]
    assert early.sum() == 62 and stored.loc[early, "events_7d"].isna().all()
    late = stored["event_timestamp"] > snaps[-1] + pd.Timedelta(days=8)
    assert late.sum() == 61 and stored.loc[late, "events_7d"].isna().all()
    middle = stored["event_timestamp"] == snaps[3]
    assert stored.loc[middle, "events_7d"].notna().any()
