"""The scoring path as pure functions: stored features in, response payload out.

Nothing here does I/O. The service reads the online store and the clock and hands
the values to :func:`score`; everything else (model inputs, segments, propensity,
TreeSHAP explanations, cold start, feature age) is decided here, so it is testable
without Redis, Feast or BentoML.

Stored features arrive column-wise, as ``OnlineResponse.to_dict()`` returns them: a
mapping from feature name to one value per user, ``None`` where the store has
nothing. Timestamp columns, when present, are named ``<feature>__ts`` (epoch
seconds, 0 or ``None`` when missing), as ``to_dict(include_event_timestamps=True)``
names them. The ``state`` column holds each user's serialised state, or the
:class:`~core.user_state.UserState` itself when the caller built it in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.feature_catalog import (
    HISTORY_FEATURES,
    REQUEST_FEATURES,
    STATE_FEATURE,
    STREAM_FEATURES,
    STREAM_NAMES,
    stored_features,
)
from core.feature_math import array_columns, named_columns, request_features
from core.lean_models import LeanBooster, LeanPipeline
from core.registry import PropensityBundle, SegmenterBundle
from core.segment_assign import segment_assigner
from core.state_block import parse_blobs
from core.state_codec import MAGIC, numbers_of
from core.state_features import read_features
from core.tree_shap import TreeShapTables, checked_tables
from core.user_state import UserState

TIMESTAMP_SUFFIX = "__ts"

# LightGBM and scikit-learn ship separate OpenMP runtimes. Alternating between them
# leaves one runtime's idle threads spinning while the other works: a single-row
# request measured ~8 ms instead of ~0.4 ms. Small requests predict on the calling
# thread. Explanations come from core.tree_shap's tables; where a model has none,
# LightGBM's TreeSHAP (~0.1 ms per row with the simulator's ~120 trees) splits a
# batch of many rows over the cores, which halves it on two.
LGBM_PREDICT_PARAMS: dict[str, Any] = {"num_threads": 1}
PARALLEL_SHAP_ROWS = 32
_SHAP_THREADS = max(1, min(os.cpu_count() or 1, 4))

StoredColumns = Mapping[str, Sequence[Any]]

_REALTIME = frozenset(STREAM_NAMES)
REQUEST_NAMES = tuple(spec.name for spec in REQUEST_FEATURES)
# Every stored feature a model may use; a model version asking for anything else
# is refused at load (core.model_manager.validate).
ONLINE_FEATURES = tuple(s.name for s in STREAM_FEATURES + HISTORY_FEATURES)


def online_columns(model_stored: Sequence[str]) -> tuple[str, ...]:
    """What to read online: the state blob instead of the stream features.

    Stream features stored online are as of their write; the blob lets every window
    be computed as of the request instead. History columns are still read: they
    are the fallback for a user who has a history row but no state.
    """
    return (STATE_FEATURE, *(n for n in model_stored if n not in _REALTIME))


def with_read_time_features(
    stored: StoredColumns,
    n_users: int,
    as_of: float | Sequence[float],
    *,
    as_arrays: bool = False,
) -> StoredColumns:
    """Add the stream and history columns computed from each user's state at ``as_of``.

    ``as_of`` is one instant for all, or one per user (a state read at the time of
    its own latest event, as the stream worker reads it).

    All states are read at once by :func:`core.state_features.read_features`
    (what the backfill's training rows are made of), so serving and training
    cannot disagree. Where a state exists it wins over a stored history row: the
    row is a snapshot as of its write (the backfill or the seed), while the state
    holds every day bucket the 90-day history reads and the first event time, and
    so shows live purchases and the passing of time at once. A user with a
    history row but no state keeps the row and reads no stream features
    (``None``: nothing the worker has seen). Unknown timestamps read ``None``.

    ``as_arrays``: when every user has a state, the derived columns are numpy
    views with NaN for unknown timestamps (:func:`build_inputs` reads both
    alike): for :func:`score`, which builds its matrices from them at once.
    """
    blobs = stored.get(STATE_FEATURE)
    if blobs is None:
        return stored
    instants = np.broadcast_to(np.asarray(as_of, dtype=np.float64), (n_users,))
    present = [i for i, blob in enumerate(blobs) if blob]
    block = parse_blobs([_binary(blobs[i]) for i in present])
    features = read_features(block, instants[present])
    if as_arrays and len(present) == n_users:
        return {**stored, **array_columns(*features)}
    derived = named_columns(*features)
    if len(present) == n_users:
        return {**stored, **derived}
    # Users without a state: no stream features, their stored history row.
    none_column = (None,) * n_users
    out = dict(stored)
    for name, values in derived.items():
        column = list(
            none_column if name in _REALTIME else stored.get(name, none_column)
        )
        for i, value in zip(present, values, strict=True):
            column[i] = value
        out[name] = column
    return out


def _binary(blob: bytes | UserState) -> bytes:
    """A state as :func:`parse_blobs` reads it (older JSON blobs re-encoded)."""
    if isinstance(blob, UserState):
        return numbers_of(blob)
    if blob[:1] == MAGIC[:1]:
        return blob
    return numbers_of(UserState.from_bytes(blob))


@dataclass(frozen=True)
class _InputPlan:
    """Where each model input comes from in ``[stored..., ages...]`` columns."""

    columns: np.ndarray
    defaults: np.ndarray


def _input_plan(
    features: Sequence[str], stored: Sequence[str], defaults: np.ndarray
) -> _InputPlan:
    sources = [*stored, *REQUEST_NAMES]
    missing = [name for name in features if name not in sources]
    if missing:
        raise ValueError(f"model inputs {missing} are neither stored nor derived")
    return _InputPlan(
        columns=np.array([sources.index(name) for name in features], dtype=np.intp),
        defaults=defaults,
    )


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
    assign_segments: Callable[[np.ndarray], np.ndarray]
    segmenter_plan: _InputPlan
    propensity_plan: _InputPlan
    # Each segment's profile (natural units, the segmenter's feature order) and
    # the profiles' spread per feature, for change_reasons: built once.
    segment_profiles: dict[int, np.ndarray]
    profile_spread: np.ndarray
    # The propensity model's TreeSHAP as look-up tables (core.tree_shap), None
    # where they do not reproduce LightGBM's values: then LightGBM computes them.
    shap_tables: TreeShapTables | None = None

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
        pipeline = segmenter.pipeline
        assign = (
            pipeline.assign
            if isinstance(pipeline, LeanPipeline)
            else segment_assigner(pipeline)
        )
        # The numpy replay must put the defaults and every segment profile where
        # scikit-learn puts them, or the model is refused.
        probe = np.vstack(
            [
                seg_defaults,
                *(
                    [
                        float(s.profile.get(f, d))
                        for f, d in zip(segmenter.features, seg_defaults, strict=True)
                    ]
                    for s in segmenter.segments
                ),
            ]
        )
        if not np.array_equal(assign(probe), segmenter.assign(probe)):
            raise ValueError("segmenter: fast assignment disagrees with the pipeline")
        stored = tuple(
            stored_features(tuple(segmenter.features) + tuple(propensity.features))
        )
        profiles = np.array(
            [
                [s.profile.get(f, np.nan) for f in segmenter.features]
                for s in segmenter.segments
            ],
            dtype=np.float64,
        ).reshape(len(segmenter.segments), len(segmenter.features))
        spread = (
            np.nanstd(profiles, axis=0)
            if len(profiles)
            else np.zeros(len(segmenter.features))
        )
        spread[~(spread > 0)] = np.inf  # a feature all segments share explains nothing
        return cls(
            segmenter=segmenter,
            propensity=propensity,
            stored_features=stored,
            segment_names={s.id: s.name for s in segmenter.segments},
            segmenter_defaults=seg_defaults,
            propensity_defaults=prop_defaults,
            base_value=float(base[0, -1]),
            assign_segments=assign,
            segmenter_plan=_input_plan(segmenter.features, stored, seg_defaults),
            propensity_plan=_input_plan(propensity.features, stored, prop_defaults),
            segment_profiles={
                s.id: row for s, row in zip(segmenter.segments, profiles, strict=True)
            },
            profile_spread=spread,
            # A lean booster's tables were checked against LightGBM's recorded
            # values when it loaded.
            shap_tables=propensity.booster.tables
            if isinstance(propensity.booster, LeanBooster)
            else checked_tables(propensity.booster),
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
    as_of: float | np.ndarray,
    models: ScoringModels,
) -> ModelInputs:
    """Turn stored feature columns into the two models' input matrices.

    Ages are derived from the stored timestamps at ``as_of`` with
    :func:`core.feature_math.request_features`, the same code the backfill uses.
    A user with no stored feature at all (no state, no history row) is a cold
    start and gets each model's population defaults. For anyone else nothing is
    imputed: a missing value (``None``/NaN) is the user's real one -- 0 for a
    count, sum or ratio (nothing happened), "never" for a timestamp (see there)
    -- which is also how :func:`training.training_set.complete_features` reads
    a missing stored value, so the explanation shows the user's own values. A
    handful of whole-matrix numpy operations: a loop per user cost ~25 us each,
    and one numpy call per column ~0.1 ms for a single user.

    Args:
        stored: Feature name to one value per user (``None`` = missing).
        n_users: Number of users (rows).
        as_of: Read time, epoch seconds (or one per user).
        models: The models, for feature order and defaults.

    Returns:
        Input matrices in the models' feature order, and the cold-start flags.
    """
    names = models.stored_features
    none_column = [None] * n_users
    # One conversion for all stored columns; None becomes NaN.
    raw = np.array(
        [stored.get(name, none_column) for name in names], dtype=np.float64
    ).reshape(len(names), n_users)
    cold = np.isnan(raw).all(axis=0)
    timestamps = {name: raw[i] for i, name in enumerate(names)}
    # NaN timestamps mean "never": request_features gives those finite ages.
    ages = request_features(timestamps, as_of)
    combined = np.vstack([raw, *(ages[name] for name in REQUEST_NAMES)]).T

    def matrix(plan: _InputPlan) -> np.ndarray:
        out = combined[:, plan.columns]  # a copy: fancy indexing
        missing = np.isnan(out)
        if missing.any():
            out[missing] = 0.0
        if cold.any():
            out[cold] = plan.defaults
        return out

    seg = matrix(models.segmenter_plan)
    prop = matrix(models.propensity_plan)
    return ModelInputs(segmentation=seg, propensity=prop, cold_start=cold)


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
    stale_after: float | None = None,
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
        stale_after: A user whose ``feature_age_seconds`` exceeds this is marked
            ``stale``; ``None``: nobody is.

    Returns:
        A dict of the shape of :class:`serving.schemas.ScoreResponse`.
    """
    n = len(user_ids)
    stored = with_read_time_features(stored, n, as_of, as_arrays=True)
    inputs = build_inputs(stored, n, as_of, models)
    segments = models.assign_segments(inputs.segmentation).tolist()

    explanations: list[list[dict[str, Any]]]
    if explain:
        # pred_contrib gives per-feature log-odds contributions plus the base value
        # in the last column; their sum is the raw margin, so the booster does not
        # need a second pass for the prediction itself.
        contrib = _contributions(models, inputs.propensity)
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
    ages = feature_ages(stored, (STATE_FEATURE, *STREAM_NAMES), n, as_of)
    cold = inputs.cold_start.tolist()
    names = models.segment_names
    # A cold start has no age, so it is never stale; without a limit nobody is.
    limit = math.inf if stale_after is None else stale_after
    ages = [None if c else a for a, c in zip(ages, cold, strict=True)]

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
                "feature_age_seconds": ages[i],
                "stale": ages[i] is not None and ages[i] > limit,
            }
            for i in range(n)
        ],
    }


def _contributions(models: ScoringModels, inputs: np.ndarray) -> np.ndarray:
    """SHAP values plus the expected value, laid out as LightGBM's ``pred_contrib``."""
    tables = models.shap_tables
    if tables is not None and not np.isnan(inputs).any():
        return tables.contributions(inputs)
    threads = _SHAP_THREADS if len(inputs) >= PARALLEL_SHAP_ROWS else 1
    return models.propensity.booster.predict(
        inputs, pred_contrib=True, num_threads=threads
    )


@dataclass(frozen=True)
class Placements:
    """Segments of states, the segmenter inputs, and what they were built from
    (the feature columns, the propensity inputs: for the worker's rules)."""

    segments: list[int]
    inputs: np.ndarray  # rows = states, columns = the segmenter's features
    stored: StoredColumns = field(default_factory=dict)
    propensity_inputs: np.ndarray | None = None


def place(
    states: Sequence[UserState], instants: Sequence[float], models: ScoringModels
) -> Placements:
    """Each state's segment as of its own instant, exactly as :func:`score` assigns it.

    For the stream worker, which places a user when their events arrive (as of the
    latest one, so the same events place them the same way whenever they are
    applied); the inputs are built by the functions :func:`score` uses, from the
    state alone.
    """
    n = len(states)
    if not n:
        return Placements([], np.empty((0, len(models.segmenter.features))))
    at = np.asarray(instants, dtype=np.float64)
    stored = with_read_time_features({STATE_FEATURE: list(states)}, n, at.tolist())
    inputs = build_inputs(stored, n, at, models)
    segments = models.assign_segments(inputs.segmentation).tolist()
    return Placements(segments, inputs.segmentation, stored, inputs.propensity)


def change_reasons(
    models: ScoringModels, inputs: np.ndarray, old: int, new: int, top_k: int = 3
) -> list[dict[str, Any]]:
    """The features that moved a user from segment ``old`` to ``new``.

    Those whose value now lies nearer the new segment's profile than the old
    one's, by the most, in units of how far apart the segments' profiles lie on
    that feature (so counts and currency compare). Read with the profiles of
    ``GET /segments``.

    Args:
        models: The models (the segmenter's catalogue holds the profiles).
        inputs: The user's segmenter inputs (one row of :class:`Placements`).
        old: The segment left.
        new: The segment entered.
        top_k: How many features at most.

    Returns:
        ``{"feature", "value", "from_profile", "to_profile"}`` per feature,
        strongest first; empty when either segment has no profile.
    """
    left = models.segment_profiles.get(old)
    entered = models.segment_profiles.get(new)
    if left is None or entered is None:
        return []
    features = models.segmenter.features
    pull = (np.abs(inputs - left) - np.abs(inputs - entered)) / models.profile_spread
    pull = np.where(np.isfinite(pull), pull, 0.0)
    order = np.argsort(-pull, kind="stable")[:top_k]
    return [
        {
            "feature": features[j],
            "value": float(inputs[j]),
            "from_profile": float(left[j]),
            "to_profile": float(entered[j]),
        }
        for j in order.tolist()
        if pull[j] > 0
    ]


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
