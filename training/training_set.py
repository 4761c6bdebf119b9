"""Point-in-time training sets from the Feast offline store.

Stored features come from ``get_historical_features`` with the offline twin of a
model's feature service (the same feature names it serves online); request-time
ages are derived with :func:`core.feature_math.request_features` -- the
function the scoring path calls -- as of each entity's timestamp, all rows at once.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from feast import FeatureStore

from core.feature_catalog import (
    PROPENSITY_FEATURES,
    REQUEST_SOURCES,
    SEGMENTATION_FEATURES,
    TIMESTAMP_FEATURES,
    stored_features,
)
from core.feature_math import request_features
from core.names import (
    JOIN_KEY,
    PROPENSITY_SERVICE,
    SEGMENTATION_SERVICE,
    offline_service,
)

log = logging.getLogger(__name__)

ENTITY_KEYS = (JOIN_KEY, "event_timestamp")

MODEL_FEATURES: dict[str, tuple[str, ...]] = {
    SEGMENTATION_SERVICE: SEGMENTATION_FEATURES,
    PROPENSITY_SERVICE: PROPENSITY_FEATURES,
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
    ``request_features`` reads as "never" (see there) -- the same reading serving gives
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
    derived = request_features(
        {n: stored[n].to_numpy(np.float64) for n in sources}, _epoch_seconds(as_of)
    )
    # Column-major, so each column is written contiguously and pandas keeps
    # the matrix as its one float block without copying it.
    matrix = np.empty((len(stored), len(features)), dtype=np.float64, order="F")
    for j, name in enumerate(features):
        if name in REQUEST_SOURCES:
            matrix[:, j] = derived[name]
        else:
            values = stored[name].to_numpy(np.float64)
            np.copyto(matrix[:, j], np.where(np.isnan(values), 0.0, values))
    return pd.DataFrame(matrix, columns=list(features), index=stored.index)


def _epoch_seconds(values: pd.Series | np.ndarray) -> np.ndarray:
    series = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(series):
        stamps = pd.to_datetime(series, utc=True)
        return stamps.dt.as_unit("us").astype("int64").to_numpy() / 1e6
    return series.to_numpy(dtype=np.float64)


_ROW = "__entity_row"  # carried through the join to put rows back in order


def training_frame(
    store: FeatureStore, entity_df: pd.DataFrame, service: str
) -> pd.DataFrame:
    """A point-in-time correct model matrix for ``entity_df``.

    Args:
        store: A Feast store whose repo has been applied and whose offline files
            hold the backfilled snapshots.
        entity_df: ``user_id`` and ``event_timestamp`` (UTC) plus any extra
            columns (e.g. ``label``), which are carried through.
        service: A model's feature service: ``SEGMENTATION_SERVICE`` or
            ``PROPENSITY_SERVICE`` (:mod:`core.names`).

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
    # Sorting the few entity columns is cheap; sorting the joined frame was not.
    entities = entity_df.sort_values(list(ENTITY_KEYS), kind="stable")
    entities = entities.reset_index(drop=True)
    entities[_ROW] = np.arange(len(entities), dtype=np.int64)
    # The model's own service derives its features from the online state blob;
    # its offline twin names the same features in the backfilled snapshots.
    job = store.get_historical_features(
        entity_df=entities,
        features=store.get_feature_service(offline_service(service)),
    )
    # One block per column, Arrow buffers released as they convert: no 2M-row
    # consolidation copy (what ``to_df`` does).
    joined = job.to_arrow().to_pandas(split_blocks=True, self_destruct=True)
    order = joined[_ROW].to_numpy()
    if (np.diff(order) < 0).any():
        # Feast does not promise an order (our ASOF store keeps the entity's).
        joined = joined.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    frame = complete_features(joined, features, joined["event_timestamp"])
    for position, name in enumerate((*ENTITY_KEYS, *extras)):
        frame.insert(position, name, joined[name].array)
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
    ordered = frame.sort_values(list(ENTITY_KEYS), kind="stable")
    return ordered.drop_duplicates(JOIN_KEY, keep="last").reset_index(drop=True)


def matrix(frame: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    """The model input matrix (float64, columns in ``features`` order)."""
    return frame[list(features)].to_numpy(dtype=np.float64)
