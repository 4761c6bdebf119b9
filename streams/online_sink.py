"""Writes features to the Feast online store.

The worker's hot path (:class:`OnlineWriter`) hands protobuf rows straight to the
Feast provider's ``online_write_batch`` -- the call ``store.push`` ends in after
building a pandas frame and an Arrow table from the rows and converting them back.
Same code writing the same Redis layout, minus two conversions per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from streams.feature_catalog import HISTORY_FEATURES, STATE_FEATURE, STREAM_FEATURES

PUSH_SOURCE = "user_events_push"
STREAM_VIEW = "user_stream_features"
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


class OnlineWriter:
    """Writes stream feature rows for the worker, bypassing the DataFrame round trip."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self._provider = store._get_provider()
        self._view = store.get_feature_view(STREAM_VIEW)

    def write(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Write rows of ``{user_id, event_timestamp, features..., state}``."""
        if not rows:
            return
        data = []
        for row in rows:
            values: dict[str, Value] = {}
            for name in STREAM_COLUMNS:
                value = row[name]
                values[name] = Value() if value is None else Value(double_val=value)
            values[STATE_FEATURE] = Value(bytes_val=row[STATE_FEATURE])
            key = EntityKey(
                join_keys=["user_id"], entity_values=[Value(string_val=row["user_id"])]
            )
            stamp = datetime.fromtimestamp(row["event_timestamp"], tz=UTC)
            data.append((key, values, stamp, None))
        self._provider.online_write_batch(
            self._store.config, self._view, data, progress=None
        )
