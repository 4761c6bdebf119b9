"""Scoring every user as of a past instant: replayed states, the service's scoring.

``segscore batch-score --as-of T`` answers what ``POST /score`` would have answered
at T, for every user at once, from the event log alone. Each user's events up to
and including T are folded into a :class:`~core.user_state.UserState` by the
backfill (:func:`training.backfill.backfill`, the stream worker's transition), and
the states are scored by :func:`core.scoring.score` -- the service's own
function -- at read time T, handed over as the columns the service's online read
gives (the state and its write time, the user's last event). Users without an
event up to T are cold starts, scored from the population defaults as the
service scores them. The models are the ones the service would load: the
champions, or the versions pinned by setting.

Lives with the tools because it joins training's replay to serving's scoring,
which must not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import scoring
from core.event_files import read_events
from core.feature_catalog import STATE_FEATURE
from core.model_manager import load_models, wanted_tags
from core.user_state import UserState
from infra.settings import Settings
from training.backfill import backfill

# Users per call of the scoring function: large enough that the per-call cost
# (model input planning, one LightGBM call) vanishes, small enough that one
# batch's columns stay a few MB.
BATCH_USERS = 20_000
OUTPUT_SUFFIXES = (".parquet", ".csv")
COLUMNS = (
    "user_id",
    "segment_id",
    "segment_name",
    "propensity",
    "cold_start",
    "feature_age_seconds",
    "stale",
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BatchScoreResult:
    """What a batch scoring run wrote.

    Attributes:
        path: The output file.
        as_of: The read time, epoch seconds.
        users: Rows written.
        cold_starts: Users scored from the population defaults.
        stale: Users whose newest event is older than the stale limit.
        events_used: Events at or before ``as_of``.
        model_versions: Model store tags of the segmenter and propensity model.
    """

    path: Path
    as_of: float
    users: int
    cold_starts: int
    stale: int
    events_used: int
    model_versions: dict[str, str]


def parse_as_of(text: str) -> float:
    """An ISO-8601 instant as epoch seconds; one without a zone is UTC.

    Args:
        text: For example ``2024-03-01``, ``2024-03-01T12:00:00Z`` or
            ``2024-03-01T12:00:00+02:00``.

    Returns:
        Epoch seconds.

    Raises:
        ValueError: Not ISO-8601.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--as-of {text!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_output(path: Path) -> None:
    """Refuse an output name whose format is unknown, before any work is done.

    Raises:
        ValueError: The suffix is neither ``.parquet`` nor ``.csv``.
    """
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {path}: the name must end in .parquet or .csv")


def read_user_ids(path: Path) -> list[str]:
    """User ids to score, in file order, each once.

    A Parquet or CSV file with a ``user_id`` column, or plain text with one id
    per line (blank lines and a first line reading ``user_id`` are skipped).

    Args:
        path: The file.

    Returns:
        The ids.

    Raises:
        ValueError: A table without a ``user_id`` column.
    """
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv"):
        table = (
            pd.read_parquet(path)
            if suffix == ".parquet"
            else pd.read_csv(path, dtype={"user_id": str})
        )
        if "user_id" not in table:
            raise ValueError(f"--users {path}: no user_id column")
        ids = table["user_id"].dropna().astype(str).tolist()
    else:
        ids = path.read_text().splitlines()
        if ids and ids[0].strip() == "user_id":
            ids = ids[1:]
    return list(dict.fromkeys(s for i in ids if (s := i.strip())))


def events_until(events: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """The events at or before ``as_of`` (event time; an event at T is in)."""
    keep = events["ts"].to_numpy(dtype=np.float64) <= as_of
    return events[keep] if not keep.all() else events


def states_as_of(
    events: pd.DataFrame,
    as_of: float,
    lateness_seconds: int,
    workers: int = 1,
    on_progress: Progress | None = None,
) -> Mapping[str, UserState]:
    """Each user's state after their last event at or before ``as_of``.

    The backfill's replay without snapshots: the worker's transition over each
    user's events in event-time order.

    Args:
        events: Validated events in the contract's columns, ``ts`` epoch seconds.
        as_of: The cut, epoch seconds.
        lateness_seconds: The worker's allowed lateness (same dedupe and pruning).
        workers: Processes for large logs (see :func:`training.backfill.backfill`).
        on_progress: Called with ("replay", users done, users in all).

    Returns:
        States by user id, in order of first event.
    """
    progress = None
    if on_progress is not None:

        def progress(done: int, total: int) -> None:
            on_progress("replay", done, total)

    result = backfill(
        events_until(events, as_of),
        (),
        lateness_seconds,
        on_progress=progress,
        workers=workers,
    )
    return result.states


def stored_columns(states: Sequence[UserState | None]) -> dict[str, list[Any]]:
    """The columns the service's online read gives for these states.

    The state itself (the scoring path takes it in memory as well as
    serialised) and its write time, which is the user's last event as the worker
    and the online seed write it; ``None`` for a user without a state.
    """
    return {
        STATE_FEATURE: list(states),
        STATE_FEATURE + scoring.TIMESTAMP_SUFFIX: [
            s.last_event_ts if s is not None else None for s in states
        ],
    }


def score_states(
    user_ids: Sequence[str],
    states: Mapping[str, UserState],
    as_of: float,
    models: scoring.ScoringModels,
    stale_after: float | None = None,
    batch_users: int = BATCH_USERS,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """Score users from their states at ``as_of`` with :func:`core.scoring.score`.

    Args:
        user_ids: Users to score, in output order; one without a state is a
            cold start.
        states: States by user id.
        as_of: Read time, epoch seconds.
        models: The scoring models.
        stale_after: The service's stale limit in seconds (``None``: never).
        batch_users: Users per call of the scoring function.
        on_progress: Called with ("score", users done, users in all).

    Returns:
        One row per user with the :data:`COLUMNS`.
    """
    rows: list[tuple[Any, ...]] = []
    total = len(user_ids)
    for start in range(0, total, batch_users):
        ids = list(user_ids[start : start + batch_users])
        payload = scoring.score(
            ids,
            stored_columns([states.get(uid) for uid in ids]),
            as_of,
            models,
            explain=False,
            stale_after=stale_after,
        )
        rows.extend(
            (
                s["user_id"],
                s["segment"]["id"],
                s["segment"]["name"],
                s["propensity"],
                s["cold_start"],
                s["feature_age_seconds"],
                s["stale"],
            )
            for s in payload["scores"]
        )
        if on_progress is not None:
            on_progress("score", min(start + batch_users, total), total)
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    return frame.astype(
        {
            "user_id": object,
            "segment_id": np.int64,
            "segment_name": object,
            "propensity": np.float64,
            "cold_start": bool,
            "feature_age_seconds": np.float64,
            "stale": bool,
        }
    )


def write_scores(frame: pd.DataFrame, path: Path) -> None:
    """Write the scores as Parquet or CSV, by the file's suffix.

    Raises:
        ValueError: Another suffix.
    """
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def batch_score(
    settings: Settings,
    as_of: float,
    out: Path,
    events_path: Path | None = None,
    users_path: Path | None = None,
    on_progress: Progress | None = None,
) -> BatchScoreResult:
    """Score users as of ``as_of`` from the event log and write one row per user.

    Args:
        settings: Locates the event file, the model store and the champions;
            gives the lateness, backfill processes, pinned versions and the
            stale limit.
        as_of: The read time, epoch seconds.
        out: Output file, ``.parquet`` or ``.csv``.
        events_path: Event file (default: ``data_dir/events.parquet``).
        users_path: Users to score (default: everyone with an event at or
            before ``as_of``); see :func:`read_user_ids`.
        on_progress: Called with (stage, done, total) as the work advances.

    Returns:
        What was written.
    """
    check_output(out)
    # Models first: without a model pair there is nothing to replay for.
    # Whole populations at once: LightGBM's predictor beats the lean replay there.
    models = load_models(
        settings, wanted_tags(settings), scoring.ONLINE_FEATURES, lean=False
    )
    events = events_until(
        read_events(events_path or settings.data_dir / "events.parquet"), as_of
    )
    states = states_as_of(
        events,
        as_of,
        settings.allowed_lateness_seconds,
        workers=settings.backfill_workers,
        on_progress=on_progress,
    )
    user_ids = read_user_ids(users_path) if users_path else list(states)
    frame = score_states(
        user_ids,
        states,
        as_of,
        models,
        stale_after=settings.stale_after_seconds,
        on_progress=on_progress,
    )
    write_scores(frame, out)
    return BatchScoreResult(
        path=out,
        as_of=as_of,
        users=len(frame),
        cold_starts=int(frame["cold_start"].sum()),
        stale=int(frame["stale"].sum()),
        events_used=len(events),
        model_versions=models.versions,
    )
