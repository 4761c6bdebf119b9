"""Writes history (batch) feature rows to the Feast online store.

Stream state is written by :mod:`core.store.state_store`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from feast import FeatureStore

from core.feature_catalog import HISTORY_NAMES
from core.names import HISTORY_VIEW


def history_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Rows of ``{user_id, event_timestamp (epoch s), history features}`` as a frame."""
    names = list(HISTORY_NAMES)
    frame = pd.DataFrame.from_records(
        rows, columns=["user_id", "event_timestamp", *names]
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
        store.write_to_online_store(HISTORY_VIEW, history_frame(rows))
