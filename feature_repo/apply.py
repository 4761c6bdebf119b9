"""Register the repository's objects in a store: what ``feast apply`` does here."""

from __future__ import annotations

from feast import FeatureStore


def apply_repo(store: FeatureStore) -> None:
    """Register every object of ``feature_repo`` (what ``feast apply`` does)."""
    from core.store.key_check import record_key_check
    from feature_repo import (
        data_sources,
        entities,
        feature_services,
        features,
        live_features,
    )

    store.apply(
        [
            entities.user,
            data_sources.stream_features_source,
            data_sources.user_events_push,
            data_sources.history_features_source,
            features.user_stream_features,
            features.user_history_features,
            live_features.user_live_features,
            feature_services.segmentation,
            feature_services.propensity,
            feature_services.segmentation_offline,
            feature_services.propensity_offline,
        ]
    )
    # Feast is loaded here anyway: stream workers then need not load it to check
    # their key build (see core.store.key_check).
    record_key_check(store)
