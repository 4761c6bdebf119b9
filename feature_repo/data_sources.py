"""Offline sources (Parquet files under the data directory) and the push source.

Paths come from settings, so the same definitions serve a laptop, CI and production.
"""

from feast import FileSource, PushSource

from core.names import (
    HISTORY_SOURCE,
    PUSH_SOURCE,
    STREAM_SOURCE,
    history_offline_path,
    stream_offline_path,
)
from infra.settings import get_settings

_data_dir = get_settings().data_dir

stream_features_source = FileSource(
    name=STREAM_SOURCE,
    path=str(stream_offline_path(_data_dir)),
    timestamp_field="event_timestamp",
    description="Backfilled snapshots of the stream features.",
)

user_events_push = PushSource(
    name=PUSH_SOURCE,
    batch_source=stream_features_source,
    description="The Faust worker pushes fresh stream features here.",
)

history_features_source = FileSource(
    name=HISTORY_SOURCE,
    path=str(history_offline_path(_data_dir)),
    timestamp_field="event_timestamp",
    description="Snapshots of the history features (30/90-day and lifetime).",
)
