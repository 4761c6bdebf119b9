"""The scoring path as pure functions: stored features in, response payload out.

Nothing here does I/O. The service reads the online store and the clock and hands
the values to :func:`score`; everything else (model inputs, segments, propensity,
TreeSHAP explanations, cold start, feature age) is decided here, so it is testable
without Redis, Feast or BentoML.

Stored features arrive column-wise, as ``OnlineResponse.to_dict()`` returns them: a
mapping from feature name to one value per user, ``None`` where the store has
nothing. Timestamp columns, when present, are named ``<feature>__ts`` (epoch
seconds, 0 or ``None`` when missing), as ``to_dict(include_event_timestamps=True)``
names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.feature_catalog import STATE_FEATURE, STREAM_FEATURES, stored_features
from streams.feature_math import request_features, stream_features
from streams.user_state import UserState
from training.registry import PropensityBundle, SegmenterBundle

TIMESTAMP_SUFFIX = "__ts"

# LightGBM and scikit-learn ship separate OpenMP runtimes. Alternating between them
# leaves one runtime's idle threads spinning while the other works: a single-row
# request measured ~8 ms instead of ~0.4 ms. The trees are small, so LightGBM
# predicts on the calling thread.
LGBM_PREDICT_PARAMS: dict[str, Any] = {"num_threads": 1}

StoredColumns = Mapping[str, Sequence[Any]]

REALTIME_FEATURES = tuple(spec.name for spec in STREAM_FEATURES)
_REALTIME = frozenset(REALTIME_FEATURES)


def online_columns(model_stored: Sequence[str]) -> tuple[str, ...]:
    """What to read online: the state blob instead of the stream features.

    Stream features stored online are as of their write; the blob lets every window
    be computed as of the request instead.
    """
    return (STATE_FEATURE, *(n for n in model_stored if n not in _REALTIME))


def with_read_time_features(
    stored: StoredColumns, n_users: int, as_of: float
) -> StoredColumns:
    """Add the stream feature columns computed from each user's state at ``as_of``.

    Uses :func:`streams.feature_math.stream_features`, the function the backfill
    uses for training rows, so serving and training cannot disagree.
    """
    blobs = stored.get(STATE_FEATURE)
    if blobs is None:
        return stored
    columns: dict[str, list[Any]] = {name: [None] * n_users for name in _REALTIME}
    for i, blob in enumerate(blobs):
        if blob:
            for name, value in stream_features(
                UserState.from_bytes(blob), as_of
            ).items():
                columns[name][i] = value
    return {**stored, **columns}


@dataclass(frozen=True)
class ScoringModels:
    """Both models plus what is derived from them once, at start-up."""

    segmenter: SegmenterBundle
    propensity: PropensityBundle
    stored_features: tuple[str, ...]
    segment_names: dict[int, str]
    segmenter_defaults: np.ndarray
    propensity_defaults: np.ndarray
    base_value: float

    @classmethod
    def from_bundles(
        cls, segmenter: SegmenterBundle, propensity: PropensityBundle
    ) -> ScoringModels:
        """Precompute feature lists, defaults and the SHAP base value.

        Args:
            segmenter: The loaded segmenter bundle.
            propensity: The loaded propensity bundle.

        Returns:
            The models ready for :func:`score`.

        Raises:
            ValueError: A model input has no population default, so a cold-start
                user could not be scored.
        """
        seg_defaults = _defaults_vector(
            segmenter.features, segmenter.defaults, "segmenter"
        )
        prop_defaults = _defaults_vector(
            propensity.features, propensity.defaults, "propensity"
        )
        # The expected value of a tree model does not depend on the row, so one
        # TreeSHAP pass over the defaults gives the base value for every response,
        # including those that do not ask for explanations.
        base = propensity.booster.predict(
            prop_defaults[None, :], pred_contrib=True, **LGBM_PREDICT_PARAMS
        )
        return cls(
            segmenter=segmenter,
            propensity=propensity,
            stored_features=tuple(
                stored_features(tuple(segmenter.features) + tuple(propensity.features))
            ),
            segment_names={s.id: s.name for s in segmenter.segments},
            segmenter_defaults=seg_defaults,
            propensity_defaults=prop_defaults,
            base_value=float(base[0, -1]),
        )

    @property
    def versions(self) -> dict[str, str]:
        """Model store tags, as the response reports them."""
        return {"segmenter": self.segmenter.tag, "propensity": self.propensity.tag}


@dataclass(frozen=True)
class ModelInputs:
    """The two input matrices (rows = users, in request order) and cold-start flags."""

    segmentation: np.ndarray
    propensity: np.ndarray
    cold_start: np.ndarray


def _defaults_vector(
    features: Sequence[str], defaults: Mapping[str, float], model: str
) -> np.ndarray:
    missing = [name for name in features if name not in defaults]
    if missing:
        raise ValueError(f"{model} model has no population default for {missing}")
    return np.array([float(defaults[name]) for name in features], dtype=np.float64)


def build_inputs(
    stored: StoredColumns,
    n_users: int,
    as_of: float,
    models: ScoringModels,
) -> ModelInputs:
    """Turn stored feature columns into the two models' input matrices.

    Ages are derived from the stored timestamps at ``as_of`` with
    :func:`streams.feature_math.request_features`, the same code the backfill uses.
    A user with no stored feature at all is a cold start and gets each model's
    population defaults; a user with some features gets a default only for an
    input that is missing (a missing timestamp already means "at the age cap").

    Args:
        stored: Feature name to one value per user (``None`` = missing).
        n_users: Number of users (rows).
        as_of: Read time, epoch seconds.
        models: The models, for feature order and defaults.

    Returns:
        Input matrices in the models' feature order, and the cold-start flags.
    """
    seg_features = models.segmenter.features
    prop_features = models.propensity.features
    seg = np.empty((n_users, len(seg_features)), dtype=np.float64)
    prop = np.empty((n_users, len(prop_features)), dtype=np.float64)
    cold = np.zeros(n_users, dtype=bool)
    none_column = [None] * n_users
    columns = [(name, stored.get(name, none_column)) for name in models.stored_features]
    seg_defaults = models.segmenter.defaults
    prop_defaults = models.propensity.defaults

    for i in range(n_users):
        row = {name: column[i] for name, column in columns}
        if all(value is None for value in row.values()):
            cold[i] = True
            seg[i] = models.segmenter_defaults
            prop[i] = models.propensity_defaults
            continue
        values = {**row, **request_features(row, as_of)}
        seg[i] = [_or_default(values.get(n), seg_defaults[n]) for n in seg_features]
        prop[i] = [_or_default(values.get(n), prop_defaults[n]) for n in prop_features]
    return ModelInputs(segmentation=seg, propensity=prop, cold_start=cold)


def _or_default(value: float | None, default: float) -> float:
    return default if value is None else value


def feature_ages(
    stored: StoredColumns, names: Sequence[str], n_users: int, as_of: float
) -> list[float | None]:
    """Seconds since each user's stored features were last written.

    Args:
        stored: Columns as from the online read; the ``<name>__ts`` columns of
            ``names`` are used.
        names: The stored features whose write times count.
        n_users: Number of users.
        as_of: Read time, epoch seconds.

    Returns:
        One age per user (never negative), ``None`` when nothing is stored.
    """
    ts_columns = [
        column
        for name in names
        if (column := stored.get(name + TIMESTAMP_SUFFIX)) is not None
    ]
    if not ts_columns:
        return [None] * n_users
    stamps = np.array(
        [[ts or 0 for ts in column] for column in ts_columns], dtype=np.float64
    )
    newest = stamps.max(axis=0)
    return [max(as_of - ts, 0.0) if ts > 0 else None for ts in newest.tolist()]


def top_contributions(
    contributions: np.ndarray,
    inputs: np.ndarray,
    features: Sequence[str],
    top_k: int,
) -> list[list[dict[str, Any]]]:
    """The ``top_k`` largest |contribution| per row, largest first.

    Args:
        contributions: SHAP values, one row per user, one column per feature (the
            base-value column already removed).
        inputs: The model inputs the contributions belong to (same shape).
        features: Column names.
        top_k: How many to keep per row.

    Returns:
        Per user, a list of ``{"feature", "value", "contribution"}`` dicts.
    """
    k = min(top_k, contributions.shape[1])
    # Stable sort: ties keep catalogue order, so answers are deterministic.
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    rows = np.arange(contributions.shape[0])[:, None]
    picked_contrib = contributions[rows, order].tolist()
    picked_values = inputs[rows, order].tolist()
    return [
        [
            {"feature": features[j], "value": v, "contribution": c}
            for j, v, c in zip(cols, values, contribs, strict=True)
        ]
        for cols, values, contribs in zip(
            order.tolist(), picked_values, picked_contrib, strict=True
        )
    ]


def score(
    user_ids: Sequence[str],
    stored: StoredColumns,
    as_of: float,
    models: ScoringModels,
    *,
    explain: bool = True,
    top_k: int = 5,
) -> dict[str, Any]:
    """Score users from their stored features: the ``POST /score`` payload.

    Args:
        user_ids: Ids in request order; ``stored`` columns follow the same order.
        stored: Feature name to one value per user, plus optional ``*__ts``
            timestamp columns.
        as_of: Read time, epoch seconds.
        models: The loaded models.
        explain: Whether to compute TreeSHAP explanations.
        top_k: Contributions to return per user when explaining.

    Returns:
        A dict of the shape of :class:`serving.schemas.ScoreResponse`.
    """
    n = len(user_ids)
    stored = with_read_time_features(stored, n, as_of)
    inputs = build_inputs(stored, n, as_of, models)
    segments = models.segmenter.assign(inputs.segmentation).tolist()

    explanations: list[list[dict[str, Any]]]
    if explain:
        # pred_contrib gives per-feature log-odds contributions plus the base value
        # in the last column; their sum is the raw margin, so the booster does not
        # need a second pass for the prediction itself.
        contrib = models.propensity.booster.predict(
            inputs.propensity, pred_contrib=True, **LGBM_PREDICT_PARAMS
        )
        margin = contrib.sum(axis=1)
        explanations = top_contributions(
            contrib[:, :-1], inputs.propensity, models.propensity.features, top_k
        )
    else:
        # Same as PropensityBundle.margin, plus the thread setting above.
        margin = models.propensity.booster.predict(
            inputs.propensity, raw_score=True, **LGBM_PREDICT_PARAMS
        )
        explanations = [[] for _ in range(n)]
    probabilities = models.propensity.probability(margin).tolist()
    # Freshness is that of the real-time features; batch history is refreshed daily
    # and would make every user look fresh right after a backfill.
    ages = feature_ages(stored, (STATE_FEATURE, *REALTIME_FEATURES), n, as_of)
    cold = inputs.cold_start.tolist()
    names = models.segment_names

    return {
        "model_versions": models.versions,
        "scores": [
            {
                "user_id": user_ids[i],
                "segment": {
                    "id": segments[i],
                    "name": names.get(segments[i], f"segment {segments[i]}"),
                },
                "propensity": probabilities[i],
                "base_value": models.base_value,
                "explanation": explanations[i],
                "cold_start": cold[i],
                "feature_age_seconds": None if cold[i] else ages[i],
            }
            for i in range(n)
        ],
    }


def segment_catalogue(segmenter: SegmenterBundle) -> dict[str, Any]:
    """The ``GET /segments`` payload.

    Args:
        segmenter: The loaded segmenter.

    Returns:
        A dict of the shape of :class:`serving.schemas.SegmentsResponse`.
    """
    return {
        "model_version": segmenter.tag,
        "segments": [
            {
                "id": s.id,
                "name": s.name,
                "description": s.description,
                "size": s.size,
                "profile": s.profile,
            }
            for s in segmenter.segments
        ],
    }
