"""Writes features to the Feast online store: stream rows through the push source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

from streams.feature_catalog import HISTORY_FEATURES, STREAM_FEATURES

PUSH_SOURCE = "user_events_push"
HISTORY_VIEW = "user_history_features"
STREAM_COLUMNS = tuple(spec.name for spec in STREAM_FEATURES)
HISTORY_COLUMNS = tuple(spec.name for spec in HISTORY_FEATURES)


def feature_frame(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str] = STREAM_COLUMNS
) -> pd.DataFrame:
    """Rows of ``{user_id, event_timestamp (epoch s), features...}`` as a frame."""
    names = list(columns)
    frame = pd.DataFrame.from_records(
        rows, columns=["user_id", "event_timestamp", *names]
    )
    frame["event_timestamp"] = pd.to_datetime(
        frame["event_timestamp"], unit="s", utc=True
    )
    frame[names] = frame[names].astype("float64")
    return frame


def push_online(store: FeatureStore, rows: Sequence[Mapping[str, object]]) -> None:
    """Push stream feature rows to the online store (Redis)."""
    if rows:
        # PushMode enum, not the string: Feast 0.67 ignores to="online" silently.
        store.push(PUSH_SOURCE, feature_frame(rows), to=PushMode.ONLINE)


def write_history_online(
    store: FeatureStore, rows: Sequence[Mapping[str, object]]
) -> None:
    """Write history feature rows straight to the online store."""
    if rows:
        store.write_to_online_store(HISTORY_VIEW, feature_frame(rows, HISTORY_COLUMNS))
