"""Point-in-time training sets from the Feast offline store.

Stored features come from ``get_historical_features`` with a model's feature
service (the same service serving reads online); request-time ages are derived
per row with :func:`streams.feature_math.request_features` -- the function the
scoring path calls -- as of the entity's timestamp.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from feast import FeatureStore

from streams.feature_catalog import (
    PROPENSITY_FEATURES,
    REQUEST_SOURCES,
    SEGMENTATION_FEATURES,
    TIMESTAMP_FEATURES,
    stored_features,
)
from streams.feature_math import request_features

log = logging.getLogger(__name__)

ENTITY_KEYS = ("user_id", "event_timestamp")

MODEL_FEATURES: dict[str, tuple[str, ...]] = {
    "segmentation": SEGMENTATION_FEATURES,
    "propensity": PROPENSITY_FEATURES,
}


def model_features(service: str) -> tuple[str, ...]:
    """The model input columns, in order, of a feature service."""
    try:
        return MODEL_FEATURES[service]
    except KeyError:
        raise ValueError(
            f"service: unknown feature service {service!r}; "
            f"expected one of {sorted(MODEL_FEATURES)}"
        ) from None


def complete_features(
    stored: pd.DataFrame, features: tuple[str, ...], as_of: pd.Series | np.ndarray
) -> pd.DataFrame:
    """Model input columns from stored features, adding the request-time ages.

    A missing stored value (NaN) means the user had no row in the view at that
    time: window counts become 0 and timestamps stay unknown, which
    ``request_features`` turns into the age cap -- the same reading serving gives
    an unseen user.

    Args:
        stored: One row per entity with every stored feature ``features`` needs.
        features: Model input names, in output order.
        as_of: Read instant of each row, epoch seconds or UTC datetimes.

    Returns:
        A float64 frame with exactly ``features`` as columns, aligned on
        ``stored``'s index.
    """
    needed = stored_features(features)
    absent = [n for n in needed if n not in stored]
    if absent:
        raise KeyError(f"stored: missing feature columns {absent}")
    sources = [n for n in needed if n in TIMESTAMP_FEATURES]
    columns = [
        [None if v != v else v for v in stored[n].to_numpy(np.float64).tolist()]
        for n in sources
    ]
    instants = _epoch_seconds(as_of).tolist()
    derived = (
        [
            request_features(dict(zip(sources, row, strict=True)), as_of=t)
            for row, t in zip(zip(*columns, strict=True), instants, strict=True)
        ]
        if sources
        else [{}] * len(stored)
    )
    out = pd.DataFrame(index=stored.index)
    for name in features:
        if name in REQUEST_SOURCES:
            out[name] = np.array([d[name] for d in derived], dtype=np.float64)
        else:
            out[name] = stored[name].astype(np.float64).fillna(0.0).to_numpy()
    return out


def _epoch_seconds(values: pd.Series | np.ndarray) -> np.ndarray:
    series = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(series):
        stamps = pd.to_datetime(series, utc=True)
        return stamps.dt.as_unit("us").astype("int64").to_numpy() / 1e6
    return series.to_numpy(dtype=np.float64)


def _chunks_by_instant(entity_df: pd.DataFrame, rows: int) -> list[pd.DataFrame]:
    """``entity_df`` cut between instants into pieces of about ``rows`` rows.

    Whole instants stay together, so every piece is an ordinary point-in-time
    request; one join over millions of rows peaked at 6.7 GB where pieces of
    a few hundred thousand stay within a fraction of that.
    """
    if len(entity_df) <= rows:
        return [entity_df]
    counts = entity_df.groupby("event_timestamp", sort=True).size()
    chunks: list[pd.DataFrame] = []
    batch: list[pd.Timestamp] = []
    size = 0
    for instant, n in counts.items():
        if batch and size + n > rows:
            chunks.append(entity_df[entity_df["event_timestamp"].isin(batch)])
            batch, size = [], 0
        batch.append(instant)
        size += n
    if batch:
        chunks.append(entity_df[entity_df["event_timestamp"].isin(batch)])
    return chunks


def training_frame(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    service: str,
    chunk_rows: int = 250_000,
) -> pd.DataFrame:
    """A point-in-time correct model matrix for ``entity_df``.

    Args:
        store: A Feast store whose repo has been applied and whose offline files
            hold the backfilled snapshots.
        entity_df: ``user_id`` and ``event_timestamp`` (UTC) plus any extra
            columns (e.g. ``label``), which are carried through.
        service: Feature service name: ``"segmentation"`` or ``"propensity"``.
        chunk_rows: Entity rows per Feast request (whole instants per request).

    Returns:
        The entity columns followed by the model features in the model's order,
        rows sorted by ``event_timestamp`` then ``user_id``.
    """
    features = model_features(service)
    extras = [c for c in entity_df.columns if c not in ENTITY_KEYS]
    if entity_df.empty:
        empty = entity_df.copy()
        for name in features:
            empty[name] = pd.Series(dtype=np.float64)
        return empty
    started = time.perf_counter()
    feature_service = store.get_feature_service(service)
    joined = pd.concat(
        [
            store.get_historical_features(
                entity_df=chunk, features=feature_service
            ).to_df()
            for chunk in _chunks_by_instant(entity_df, chunk_rows)
        ],
        ignore_index=True,
    )
    joined = joined.sort_values(
        ["event_timestamp", "user_id"], kind="stable"
    ).reset_index(drop=True)
    model = complete_features(joined, features, joined["event_timestamp"])
    frame = pd.concat([joined[[*ENTITY_KEYS, *extras]], model], axis=1)
    log.info(
        "training set %r: %d rows x %d features in %.1fs",
        service,
        len(frame),
        len(features),
        time.perf_counter() - started,
    )
    return frame


def latest_population(snapshots: pd.DataFrame) -> pd.DataFrame:
    """``user_id`` and ``event_timestamp`` of every user at the newest snapshot."""
    latest = snapshots["event_timestamp"].max()
    return snapshots.loc[
        snapshots["event_timestamp"] == latest, list(ENTITY_KEYS)
    ].reset_index(drop=True)


def latest_per_user(frame: pd.DataFrame) -> pd.DataFrame:
    """Each user's row with the latest ``event_timestamp``."""
    ordered = frame.sort_values(["user_id", "event_timestamp"], kind="stable")
    return ordered.drop_duplicates("user_id", keep="last").reset_index(drop=True)


def matrix(frame: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    """The model input matrix (float64, columns in ``features`` order)."""
    return frame[list(features)].to_numpy(dtype=np.float64)
