"""One feature service per model; training and serving both name these."""

from feast import FeatureService

from feature_repo.features import user_history_features, user_stream_features
from streams.feature_catalog import (
    HISTORY_FEATURES,
    PROPENSITY_FEATURES,
    SEGMENTATION_FEATURES,
    stored_features,
)

_HISTORY = {spec.name for spec in HISTORY_FEATURES}


def _projections(model_features: tuple[str, ...]) -> list:
    stored = stored_features(model_features)
    return [
        user_stream_features[[n for n in stored if n not in _HISTORY]],
        user_history_features[[n for n in stored if n in _HISTORY]],
    ]


segmentation = FeatureService(
    name="segmentation",
    features=_projections(SEGMENTATION_FEATURES),
    description="Inputs of the KMeans segmenter.",
    tags={"model": "segmenter", "version": "1"},
)

propensity = FeatureService(
    name="propensity",
    features=_projections(PROPENSITY_FEATURES),
    description="Inputs of the LightGBM purchase propensity model.",
    tags={"model": "propensity", "version": "1"},
)
