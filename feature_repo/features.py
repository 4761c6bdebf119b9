"""Feature views, generated from the feature catalogue."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Bytes, Float64

from core.feature_catalog import (
    HISTORY_FEATURES,
    STATE_FEATURE,
    STREAM_FEATURES,
    FeatureSpec,
)
from core.names import HISTORY_VIEW, OWNER, STREAM_VIEW
from feature_repo.data_sources import history_features_source, user_events_push
from feature_repo.entities import user


def _fields(specs: tuple[FeatureSpec, ...]) -> list[Field]:
    return [
        Field(
            name=spec.name,
            dtype=Float64,
            description=f"{spec.description} ({spec.window or 'latest'}, {spec.unit})",
        )
        for spec in specs
    ]


user_stream_features = FeatureView(
    name=STREAM_VIEW,
    entities=[user],
    ttl=timedelta(days=8),
    schema=[
        *_fields(STREAM_FEATURES),
        Field(
            name=STATE_FEATURE,
            dtype=Bytes,
            description="Bucketed per-user state; windows are summed from it at "
            "read time, so they are right when read, not only when written.",
        ),
    ],
    source=user_events_push,
    online=True,
    description="Sliding-window behaviour, kept fresh by the stream worker.",
    owner=OWNER,
    tags={"group": "stream"},
)

user_history_features = FeatureView(
    name=HISTORY_VIEW,
    entities=[user],
    ttl=timedelta(days=3),
    schema=_fields(HISTORY_FEATURES),
    source=history_features_source,
    online=True,
    description="Purchase history (30/90-day and lifetime); offline: backfilled "
    "snapshots, online: derived from the state when read (user_live_features).",
    owner=OWNER,
    tags={"group": "history"},
)
