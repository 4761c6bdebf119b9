"""Feature services: per model, one for online reads and one for training sets.

``segmentation`` and ``propensity`` hold the stored features a model's inputs are
made of (the request-time ages are derived from the timestamps among them), read
from :data:`~feature_repo.live_features.user_live_features`: online, only the
``state`` blob is materialised, and that view derives every stream and history
feature from it as of the read, as ``/score`` does. A Feast consumer
(``get_online_features``, ``feast serve``) therefore gets the values scoring uses.

Offline, that view cannot run: it would need ``state`` in the snapshot files,
which hold the materialised stream and history columns (written by the backfill
with the same functions). So each model also has ``<name>_offline``
(:func:`core.names.offline_service`), the same feature names
resolved from the batch views, which training's ``get_historical_features``
reads. Both are built from the model's feature list in the catalogue, so they
cannot name different features.
"""

from feast import FeatureService

from core.feature_catalog import (
    HISTORY_FEATURES,
    PROPENSITY_FEATURES,
    SEGMENTATION_FEATURES,
    stored_features,
)
from core.names import (
    PROPENSITY_MODEL,
    PROPENSITY_SERVICE,
    SEGMENTATION_SERVICE,
    SEGMENTER_MODEL,
    offline_service,
)
from feature_repo.features import user_history_features, user_stream_features
from feature_repo.live_features import user_live_features

_HISTORY = {spec.name for spec in HISTORY_FEATURES}


def _online_projections(model_features: tuple[str, ...]) -> list:
    return [user_live_features[stored_features(model_features)]]


def _offline_projections(model_features: tuple[str, ...]) -> list:
    stored = stored_features(model_features)
    return [
        user_stream_features[[n for n in stored if n not in _HISTORY]],
        user_history_features[[n for n in stored if n in _HISTORY]],
    ]


def _services(
    name: str, model_features: tuple[str, ...], description: str, model: str
) -> tuple[FeatureService, FeatureService]:
    """The online service ``name`` and its offline twin, over the same features."""
    tags = {"model": model, "version": "1"}
    return (
        FeatureService(
            name=name,
            features=_online_projections(model_features),
            description=f"{description} Online: derived from the state when read.",
            tags={**tags, "store": "online"},
        ),
        FeatureService(
            name=offline_service(name),
            features=_offline_projections(model_features),
            description=f"{description} Offline: backfilled snapshots, for "
            "training sets.",
            tags={**tags, "store": "offline"},
        ),
    )


segmentation, segmentation_offline = _services(
    SEGMENTATION_SERVICE,
    SEGMENTATION_FEATURES,
    "Inputs of the KMeans segmenter.",
    SEGMENTER_MODEL,
)

propensity, propensity_offline = _services(
    PROPENSITY_SERVICE,
    PROPENSITY_FEATURES,
    "Inputs of the LightGBM purchase propensity model.",
    PROPENSITY_MODEL,
)
