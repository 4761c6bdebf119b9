"""``segscore batch-score --as-of T`` against the service's own scoring at T.

Plus the service's ``stale`` flag over real HTTP, with the limit set by setting.

A simulated log is imported as a user imports one (``segscore import``), a tiny
model pair is saved and promoted, and the command runs as a real subprocess. The
reference is built independently: each user's events up to T folded one by one
with the stream worker's :func:`~core.user_state.apply_event`, serialised as the
online store holds them, and scored by :func:`core.scoring.score` exactly as
``serving/service.py`` calls it (same loader, same arguments, read time T).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest

from core import scoring
from core.event_files import read_events, write_events
from core.events import Event
from core.feature_catalog import STATE_FEATURE
from core.model_manager import load_models, wanted_tags
from core.registry import PROPENSITY, SEGMENTER, promote
from core.user_state import UserState, apply_event
from infra.settings import Settings
from segscore.simulator import simulate
from serving.schemas import ScoreResponse
from tests.support.live_service import API_KEY, KNOWN_USER, TWO_HOURS, running_service
from tests.support.model_bundles import save_tiny_models
from tests.support.processes import run_cli

# Saving to the BentoML store goes through pathspec, which warns about its own API.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")

DAY = 86_400.0
END = 1_700_000_000.0  # a log that ended long before the wall clock
STALE_AFTER = 5 * DAY  # short, so that some users are stale at T


@dataclass(frozen=True)
class Shop:
    settings: Settings
    events: pd.DataFrame  # the imported event file
    as_of: float  # the time of one event: that event is in


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("batch-score")
    settings = Settings(home=tmp / "home", stale_after_seconds=STALE_AFTER)
    log = tmp / "shop.jsonl"
    # Eighty shoppers over 30 days, twenty more who start 5 days before the end.
    early = simulate(80, END - 30 * DAY, END, seed=11).events
    late = simulate(20, END - 5 * DAY, END, seed=12, first_user=80).events
    write_events(early + late, log)
    run_cli(settings, "import", str(log))
    segmenter, propensity = save_tiny_models(settings)
    promote(SEGMENTER, segmenter, settings)
    promote(PROPENSITY, propensity, settings)
    events = read_events(settings.data_dir / "events.parquet")
    times = events["ts"].to_numpy()
    as_of = float(times[times <= END - 8 * DAY].max())
    with pytest.MonkeyPatch.context() as patch:
        # The subprocesses read the stale limit from the environment.
        patch.setenv("SEGSCORE_STALE_AFTER_SECONDS", str(STALE_AFTER))
        yield Shop(settings, events, as_of)


def _worker_states(events: pd.DataFrame, as_of: float, lateness: int) -> dict:
    """Each user's state as the stream worker folds their events up to ``as_of``."""
    cut = events[events["ts"] <= as_of].sort_values("ts", kind="stable")
    states: dict[str, UserState] = {}
    for record in cut.to_dict("records"):
        fields = {k: v for k, v in record.items() if not _missing(v)}
        event = Event.model_validate(fields)
        state = states.setdefault(event.user_id, UserState())
        apply_event(state, event, lateness)
    return states


def _missing(value: object) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and math.isnan(value))
    )


def _service_scores(shop: Shop, user_ids: list[str]) -> dict[str, dict]:
    """What the service's scoring function answers at ``as_of`` for these users."""
    settings = shop.settings
    models = load_models(settings, wanted_tags(settings), scoring.ONLINE_FEATURES)
    states = _worker_states(shop.events, shop.as_of, settings.allowed_lateness_seconds)
    held = [states.get(uid) for uid in user_ids]
    stored = {
        STATE_FEATURE: [s.to_bytes(with_dedupe=False) if s else None for s in held],
        STATE_FEATURE + scoring.TIMESTAMP_SUFFIX: [
            s.last_event_ts if s else None for s in held
        ],
    }
    payload = scoring.score(
        user_ids,
        stored,
        shop.as_of,
        models,
        explain=True,
        top_k=5,
        stale_after=settings.stale_after_seconds,
    )
    return {row["user_id"]: row for row in payload["scores"]}


def _iso(epoch: float) -> str:
    # fromtimestamp rounds to the microsecond, so the text parses back to the
    # same float (a Timestamp would truncate to ...825999 and leave T's event out).
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _assert_same(frame: pd.DataFrame, expected: dict[str, dict]) -> None:
    assert frame["user_id"].tolist() == list(expected)
    for row in frame.itertuples():
        want = expected[row.user_id]
        assert row.segment_id == want["segment"]["id"], row.user_id
        assert row.segment_name == want["segment"]["name"], row.user_id
        assert row.propensity == pytest.approx(want["propensity"], rel=1e-12)
        assert bool(row.cold_start) == want["cold_start"], row.user_id
        assert bool(row.stale) == want["stale"], row.user_id
        age = want["feature_age_seconds"]
        if age is None:
            assert math.isnan(row.feature_age_seconds)
        else:
            assert row.feature_age_seconds == pytest.approx(age, abs=1e-6)


def test_batch_score_equals_the_service_scoring_at_t(
    shop: Shop, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    printed = run_cli(
        shop.settings, "batch-score", "--as-of", _iso(shop.as_of), "--out", str(out)
    )
    frame = pd.read_parquet(out)

    # Everyone with an event at or before T, nobody who starts later.
    active = shop.events.loc[shop.events["ts"] <= shop.as_of, "user_id"]
    assert set(frame["user_id"]) == set(active)
    assert len(set(shop.events["user_id"])) > len(frame)  # some start after T
    expected = _service_scores(shop, frame["user_id"].tolist())
    _assert_same(frame, expected)
    assert not frame["cold_start"].any()
    assert frame["stale"].any() and not frame["stale"].all()
    assert frame["propensity"].nunique() > len(frame) // 4  # not one score for all
    assert (frame["feature_age_seconds"] == 0.0).any()  # the event at T counts
    assert f'"users": {len(frame)}' in printed


def test_a_users_file_scores_unknown_ids_as_cold_starts_to_csv(
    shop: Shop, tmp_path: Path
) -> None:
    known = shop.events.loc[shop.events["ts"] <= shop.as_of, "user_id"].unique()
    later = set(shop.events["user_id"]) - set(known)
    ids = ["nobody-1", str(known[0]), sorted(later)[0], str(known[1]), "nobody-2"]
    users = tmp_path / "users.txt"
    users.write_text("user_id\n" + "\n".join(ids) + "\n")
    out = tmp_path / "scores.csv"
    run_cli(
        shop.settings,
        "batch-score",
        "--as-of",
        _iso(shop.as_of),
        "--users",
        str(users),
        "--out",
        str(out),
    )
    frame = pd.read_csv(out, dtype={"user_id": str})

    assert frame["cold_start"].tolist() == [True, False, True, False, True]
    _assert_same(frame, _service_scores(shop, ids))
    cold = frame[frame["cold_start"]]
    assert cold["propensity"].nunique() == 1  # the population defaults


def test_an_unknown_output_format_is_one_line(shop: Shop, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"must end in \.parquet or \.csv"):
        run_cli(
            shop.settings,
            "batch-score",
            "--as-of",
            "2023-01-01",
            "--out",
            str(tmp_path / "x.xlsx"),
        )


def test_the_service_flags_stale_users_over_http(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The known user's newest event is two hours old: stale past a one-hour limit.
    limit = {"SEGSCORE_STALE_AFTER_SECONDS": "3600"}
    home = tmp_path_factory.mktemp("stale-service")
    with (
        running_service(home, extra_env=limit) as live,
        httpx.Client(
            base_url=live.url, timeout=10.0, headers={"X-API-Key": API_KEY}
        ) as client,
    ):
        response = client.post("/score", json={"user_ids": [KNOWN_USER, "nobody"]})
    assert response.status_code == 200, response.text
    known, nobody = ScoreResponse.model_validate(response.json()).scores
    assert known.feature_age_seconds == pytest.approx(TWO_HOURS, abs=60)
    assert known.stale is True
    assert nobody.cold_start and nobody.stale is False
