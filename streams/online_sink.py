"""Writes features to the Feast online store: stream rows through the push source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

from streams.feature_catalog import HISTORY_FEATURES, STATE_FEATURE, STREAM_FEATURES

PUSH_SOURCE = "user_events_push"
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


def push_online(store: FeatureStore, rows: Sequence[Mapping[str, object]]) -> None:
    """Push stream feature rows (with the ``state`` blob) to the online store."""
    if rows:
        # PushMode enum, not the string: Feast 0.67 ignores to="online" silently.
        frame = feature_frame(rows, (*STREAM_COLUMNS, STATE_FEATURE))
        store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)


def write_history_online(
    store: FeatureStore, rows: Sequence[Mapping[str, object]]
) -> None:
    """Write history feature rows straight to the online store."""
    if rows:
        store.write_to_online_store(HISTORY_VIEW, feature_frame(rows, HISTORY_COLUMNS))
