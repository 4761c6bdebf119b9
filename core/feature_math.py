"""Features from per-user state, as of a given instant: pure functions.

Window semantics, identical online and offline: a window of length W read at
instant T covers the whole event-time buckets that overlap ``[T - W, T]`` -- one-minute
buckets for ``1h``, one-hour buckets for ``24h`` and ``7d``, UTC days for ``30d`` and
``90d``. Rounding outward to whole buckets never drops an event of the window and
adds at most one bucket's worth from just before it; at a bucket boundary (the daily
training snapshots) the window is exactly ``[T - W, T]``. Buckets after T's bucket
are ignored, so "as of T" holds for replays too. Lifetime purchase facts are
kept as running totals in the state; a read before some of its purchase buckets
takes those buckets back out (exact while they are bucketed, i.e. for reads
within 90 days of the newest event). Ages ("hours since ...") are never stored:
:func:`request_features` derives them at read time, uncapped.

Both groups are read by :func:`core.state_features.read_features`, for many
states at once; the functions here read one in-memory state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.feature_catalog import HISTORY_NAMES, STREAM_NAMES
from core.state_block import parse_blobs
from core.state_codec import numbers_of
from core.state_features import read_features
from core.user_state import DAY, HOUR, UserState


def features_of_states(
    states: Sequence[UserState], as_of: float | Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both feature groups of in-memory states (:func:`read_features` on their blobs).

    ``as_of`` is one instant for all or one per state. NaN marks a timestamp
    unknown as of the read.
    """
    at = np.broadcast_to(np.asarray(as_of, dtype=np.float64), (len(states),))
    block = parse_blobs([numbers_of(state) for state in states])
    return read_features(block, at)


def named_columns(
    stream: np.ndarray, history: np.ndarray
) -> dict[str, list[float | None]]:
    """:func:`read_features`' matrices as named columns; unknown timestamps ``None``."""
    out: dict[str, list[float | None]] = {}
    for name, values in array_columns(stream, history).items():
        column = values.tolist()
        out[name] = (
            [None if v != v else v for v in column] if name in AGE_SOURCES else column
        )
    return out


def array_columns(stream: np.ndarray, history: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`read_features`' matrices as named column views; NaN stays NaN.

    For callers that turn the columns back into a matrix at once (scoring's
    :func:`core.scoring.build_inputs` reads ``None`` as NaN): the same values
    as :func:`named_columns`, without a Python float per value.
    """
    out: dict[str, np.ndarray] = {}
    for names, matrix in ((STREAM_NAMES, stream), (HISTORY_NAMES, history)):
        out.update(zip(names, matrix.T, strict=True))
    return out


def feature_columns(
    states: Sequence[UserState], as_of: float | Sequence[float] | np.ndarray
) -> dict[str, list[float | None]]:
    """Both feature groups of in-memory states as named columns (see above)."""
    return named_columns(*features_of_states(states, as_of))


def _values(row: np.ndarray, missing: float | None) -> tuple[float | None, ...]:
    values = row.tolist()
    if missing is None or missing == missing:  # NaN stays NaN
        return tuple(missing if v != v else v for v in values)
    return tuple(values)


def stream_values(
    state: UserState, as_of: float, missing: float | None = None
) -> tuple[float | None, ...]:
    """The real-time feature group as of ``as_of`` (epoch s), in ``STREAM_NAMES`` order.

    One state's row of :func:`core.state_features.read_features`, for callers
    holding a single state; ``missing`` stands for a timestamp unknown as of
    ``as_of`` (``None`` online, NaN in snapshot tables).
    """
    stream, _ = features_of_states([state], as_of)
    return _values(stream[0], missing)


def stream_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The real-time feature group (see the catalogue) as of ``as_of`` (epoch s)."""
    return dict(zip(STREAM_NAMES, stream_values(state, as_of), strict=True))


def history_values(
    state: UserState, as_of: float, missing: float | None = None
) -> tuple[float | None, ...]:
    """The history group as of ``as_of`` (epoch s), in ``HISTORY_NAMES`` order.

    Like :func:`stream_values`; ``missing`` stands for a timestamp unknown as
    of ``as_of`` (``first_purchase_ts`` of a user who never purchased,
    ``previous_purchase_ts`` of one with fewer than two purchase days,
    ``first_seen_ts`` of one never seen).
    """
    _, history = features_of_states([state], as_of)
    return _values(history[0], missing)


def history_features(state: UserState, as_of: float) -> dict[str, float | None]:
    """The history feature group (30/90-day and lifetime) as of ``as_of`` (epoch s)."""
    return dict(zip(HISTORY_NAMES, history_values(state, as_of), strict=True))


def request_features(
    stored: Mapping[str, Any], as_of: float | np.ndarray
) -> dict[str, Any]:
    """Ages derived from stored timestamps at read time, uncapped and always finite.

    One user (floats, ``None`` for never) gives floats; many at once (arrays,
    NaN for never, ``as_of`` a scalar or one instant per row) gives arrays --
    the same arithmetic, so training sets and scoring cannot disagree.

    An age whose event never happened falls back so that it reads "not in the
    whole known life": never purchased gives ``days_since_first_purchase`` =
    ``days_since_last_purchase`` = ``tenure_days`` (with ``orders_lifetime`` 0);
    a first purchase unknown but a last one known gives the last one's age.
    Fewer than two purchase days (no ``previous_purchase_ts``) likewise gives
    ``days_since_previous_purchase`` = ``tenure_days``.
    No ``last_event_ts`` likewise reads as the tenure (in hours). Never seen (no
    ``first_seen_ts`` either) gives 0 for every age: a cold start, which scoring
    gives population defaults anyway. A timestamp after the read (a
    state read before its latest event) gives 0. A key absent from ``stored``
    counts as never.

    Args:
        stored: Timestamp name to epoch seconds (``REQUEST_SOURCES`` names).
        as_of: Read instant(s), epoch seconds.

    Returns:
        ``hours_since_last_event``, ``tenure_days``, ``days_since_first_purchase``,
        ``days_since_last_purchase`` and ``days_since_previous_purchase``: floats
        for one user, else arrays of the broadcast shape of the inputs.
    """
    values = {
        key: np.asarray(
            np.nan if stored.get(key) is None else stored[key], dtype=np.float64
        )
        for key in AGE_SOURCES
    }
    instant = np.asarray(as_of, dtype=np.float64)
    shape = np.broadcast_shapes(instant.shape, *(v.shape for v in values.values()))

    def age(key: str) -> np.ndarray:
        # NaN where the event never happened; clipped at 0 for one after the read.
        return np.maximum(instant - values[key], 0.0)

    tenure = age("first_seen_ts")
    tenure = np.where(np.isnan(tenure), 0.0, tenure)
    last_purchase = age("last_purchase_ts")
    first_purchase = age("first_purchase_ts")
    first_purchase = np.where(np.isnan(first_purchase), last_purchase, first_purchase)
    first_purchase = np.where(np.isnan(first_purchase), tenure, first_purchase)
    last_purchase = np.where(np.isnan(last_purchase), first_purchase, last_purchase)
    previous_purchase = age("previous_purchase_ts")
    previous_purchase = np.where(np.isnan(previous_purchase), tenure, previous_purchase)
    last_event = age("last_event_ts")
    last_event = np.where(np.isnan(last_event), tenure, last_event)
    ages = {
        "hours_since_last_event": last_event / HOUR,
        "days_since_last_purchase": last_purchase / DAY,
        "tenure_days": tenure / DAY,
        "days_since_first_purchase": first_purchase / DAY,
        "days_since_previous_purchase": previous_purchase / DAY,
    }
    if not shape:
        return {name: float(value) for name, value in ages.items()}
    return {
        name: value if value.shape == shape else np.broadcast_to(value, shape).copy()
        for name, value in ages.items()
    }


# The state timestamps the request-time features are ages of.
AGE_SOURCES = (
    "last_event_ts",
    "last_purchase_ts",
    "first_seen_ts",
    "first_purchase_ts",
    "previous_purchase_ts",
)
