"""Writes history (batch) feature rows to the Feast online store.

Stream state is written by :mod:`streams.state_store`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from feast import FeatureStore

from streams.feature_catalog import HISTORY_FEATURES, STATE_FEATURE, STREAM_FEATURES

HISTORY_VIEW = "user_history_features"
STREAM_COLUMNS = tuple(spec.name for spec in STREAM_FEATURES)
HISTORY_COLUMNS = tuple(spec.name for spec in HISTORY_FEATURES)


def feature_frame(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str] = STREAM_COLUMNS
) -> pd.DataFrame:
    """Rows of ``{user_id, event_timestamp (epoch s), features...}`` as a frame."""
    names = [c for c in columns if c != STATE_FEATURE]
    extra = [STATE_FEATURE] if STATE_FEATURE in columns else []
    frame = pd.DataFrame.from_records(
        rows, columns=["user_id", "event_timestamp", *names, *extra]
    )
    frame["event_timestamp"] = pd.to_datetime(
        frame["event_timestamp"], unit="s", utc=True
    )
    frame[names] = frame[names].astype("float64")
    return frame


def write_history_online(
    store: FeatureStore, rows: Sequence[Mapping[str, object]]
) -> None:
    """Write history feature rows straight to the online store."""
    if rows:
        store.write_to_online_store(HISTORY_VIEW, feature_frame(rows, HISTORY_COLUMNS))
