"""Names of the Feast objects and paths of the offline store's files, each spelled once.

The feature repo defines its objects under these names; training, the stream
worker's state store, serving and the tools look them up by the same constants, so
a name changes here or nowhere. The offline files are functions of the data
directory: the feature repo resolves them from the settings it imports, the
backfill writes them, and training checks that the registered sources read them.
"""

from __future__ import annotations

from pathlib import Path

PROJECT = "segscore"
# Who answers for the feature views: the project's own team.
OWNER = PROJECT

# The one entity; its join key is the events' ``user_id``.
ENTITY = "user"
JOIN_KEY = "user_id"

# Feature views: stored by the worker and the backfill, and derived at read time.
STREAM_VIEW = "user_stream_features"
HISTORY_VIEW = "user_history_features"
LIVE_VIEW = "user_live_features"

# Data sources: the stored views' Parquet sources, and the push source the worker's
# rows enter the stream view through.
STREAM_SOURCE = "user_stream_features_offline"
HISTORY_SOURCE = "user_history_features_offline"
PUSH_SOURCE = "user_events_push"

# Feature services, one per model, each with an offline twin (offline_service).
SEGMENTATION_SERVICE = "segmentation"
PROPENSITY_SERVICE = "propensity"

# The models by short name: the services' tags and the promotion verdicts.
SEGMENTER_MODEL = "segmenter"
PROPENSITY_MODEL = "propensity"
# The models' names in the BentoML model store.
SEGMENTER_STORE_NAME = "segscore-segmenter"
PROPENSITY_STORE_NAME = "segscore-propensity"

# The offline store's snapshot files, under the data directory.
OFFLINE_DIR = "offline"
STREAM_FILE = "user_stream_features.parquet"
HISTORY_FILE = "user_history_features.parquet"


def offline_service(service: str) -> str:
    """The Feast feature service training reads for the model service ``service``.

    ``service`` itself derives its features from the online ``state`` blob, which
    the offline snapshots do not hold; its ``_offline`` twin names the same
    features in the batch views (see ``feature_repo/feature_services.py``).
    """
    return f"{service}_offline"


def stream_offline_path(data_dir: Path) -> Path:
    """The stream view's snapshot file (its batch source) under ``data_dir``."""
    return data_dir / OFFLINE_DIR / STREAM_FILE


def history_offline_path(data_dir: Path) -> Path:
    """The history view's snapshot file (its batch source) under ``data_dir``."""
    return data_dir / OFFLINE_DIR / HISTORY_FILE


def offline_paths(data_dir: Path) -> tuple[Path, Path]:
    """The stream and history snapshot files under ``data_dir``, in that order."""
    return stream_offline_path(data_dir), history_offline_path(data_dir)
