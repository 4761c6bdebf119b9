"""Offline sources (Parquet files under the data directory) and the push source.

Paths come from settings, so the same definitions serve a laptop, CI and production.
"""

from feast import FileSource, PushSource

from infra.settings import get_settings

_data_dir = get_settings().data_dir

stream_features_source = FileSource(
    name="user_stream_features_offline",
    path=str(_data_dir / "offline" / "user_stream_features.parquet"),
    timestamp_field="event_timestamp",
    description="Backfilled snapshots of the stream features.",
)

user_events_push = PushSource(
    name="user_events_push",
    batch_source=stream_features_source,
    description="The Faust worker pushes fresh stream features here.",
)

history_features_source = FileSource(
    name="user_history_features_offline",
    path=str(_data_dir / "offline" / "user_history_features.parquet"),
    timestamp_field="event_timestamp",
    description="Daily snapshots of the 90-day history features.",
)
