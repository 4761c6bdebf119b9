"""Scoring as of a time: the cut, the states, the rows, the files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.event_files import events_frame
from core.events import Event
from core.feature_catalog import STATE_FEATURE
from core.scoring import TIMESTAMP_SUFFIX, ScoringModels, score
from core.user_state import UserState, apply_event
from segscore.batch_score import (
    COLUMNS,
    check_output,
    events_until,
    parse_as_of,
    read_user_ids,
    score_states,
    states_as_of,
    stored_columns,
    write_scores,
)
from tests.support.model_bundles import tiny_bundles

T = 1_750_000_000.0
DAY = 86_400.0
LATENESS = 600


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    return ScoringModels.from_bundles(*tiny_bundles())


def _event(uid: str, n: int, kind: str, ts: float) -> Event:
    return Event.model_validate(
        {
            "event_id": f"{uid}-{n}",
            "user_id": uid,
            "event_type": kind,
            "ts": ts,
            "session_id": f"{uid}-s{n // 3}",
            "category": "shoes",
            "price": 40.0 if kind in ("purchase", "product_view") else None,
            "quantity": 1 if kind == "purchase" else None,
        }
    )


def _log() -> list[Event]:
    """Three users: ``a`` active before and after T, ``b`` only before, ``c`` after."""
    return [
        _event("a", 0, "product_view", T - 20 * DAY),
        _event("b", 0, "product_view", T - 200 * DAY),
        _event("a", 1, "add_to_cart", T - 3 * 3600),
        _event("b", 1, "purchase", T - 199 * DAY),
        _event("a", 2, "purchase", T),  # exactly at T: in
        _event("a", 3, "purchase", T + 1),  # one second later: out
        _event("c", 0, "product_view", T + 1),
    ]


def test_as_of_accepts_zones_and_reads_a_naive_time_as_utc() -> None:
    assert parse_as_of("2025-06-15T15:06:40Z") == T
    assert parse_as_of("2025-06-15T17:06:40+02:00") == T
    assert parse_as_of("2025-06-15T15:06:40") == T
    assert parse_as_of("2025-06-15") == T - (15 * 3600 + 6 * 60 + 40)
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_as_of("yesterday")


def test_as_of_in_milliseconds_is_the_event_time_to_the_bit() -> None:
    # Events arrive in epoch milliseconds; T written to the millisecond must
    # equal their float time exactly, or the event at T would fall out.
    for ms in (1_699_078_965_826, 1_700_000_000_001, 1_234_567_890_999):
        text = datetime.fromtimestamp(ms / 1000, UTC).isoformat()
        assert parse_as_of(text) == ms / 1000


def test_an_event_at_t_is_in_and_one_second_later_is_out() -> None:
    cut = events_until(events_frame(_log()), T)
    assert sorted(cut["event_id"]) == ["a-0", "a-1", "a-2", "b-0", "b-1"]


def test_states_are_the_worker_transition_up_to_t() -> None:
    states = states_as_of(events_frame(_log()), T, LATENESS)
    assert list(states) == ["a", "b"]  # c starts after T
    expected = UserState()
    for event in _log():
        if event.user_id == "a" and event.ts <= T:
            apply_event(expected, event, LATENESS)
    assert states["a"].to_bytes() == expected.to_bytes()
    assert states["a"].last_purchase_ts == T
    assert states["a"].purchases == (T,)


def test_an_empty_cut_gives_no_states() -> None:
    assert states_as_of(events_frame(_log()), T - 365 * DAY, LATENESS) == {}


def test_rows_are_the_service_scores_at_t(models: ScoringModels) -> None:
    states = states_as_of(events_frame(_log()), T, LATENESS)
    ids = ["a", "nobody", "b"]
    frame = score_states(ids, states, T, models, stale_after=90 * DAY)

    assert tuple(frame.columns) == COLUMNS
    assert frame["user_id"].tolist() == ids
    # The service's function on the columns its online read gives: the blob
    # and the state's write time, which is the last event.
    blobs = [states["a"].to_bytes(with_dedupe=False), None, states["b"].to_bytes()]
    payload = score(
        ids,
        {
            STATE_FEATURE: blobs,
            STATE_FEATURE + TIMESTAMP_SUFFIX: [T, None, states["b"].last_event_ts],
        },
        T,
        models,
        explain=True,
        stale_after=90 * DAY,
    )
    for row, expected in zip(frame.itertuples(), payload["scores"], strict=True):
        assert row.segment_id == expected["segment"]["id"]
        assert row.segment_name == expected["segment"]["name"]
        assert row.propensity == pytest.approx(expected["propensity"], rel=1e-12)
        assert row.cold_start == expected["cold_start"]
        assert row.stale == expected["stale"]
    assert frame["cold_start"].tolist() == [False, True, False]
    assert frame["stale"].tolist() == [False, False, True]  # b: 199 days idle
    ages = frame["feature_age_seconds"].tolist()
    assert ages[0] == 0.0 and np.isnan(ages[1]) and ages[2] == pytest.approx(199 * DAY)


def test_a_later_event_changes_the_score_only_when_inside_the_cut(
    models: ScoringModels,
) -> None:
    events = events_frame(_log())
    before = score_states(["a"], states_as_of(events, T, LATENESS), T, models)
    later = states_as_of(events, T + 1, LATENESS)
    assert later["a"].purchases == (T, T + 1)
    after = score_states(["a"], later, T + 1, models)
    assert before["user_id"].tolist() == after["user_id"].tolist() == ["a"]
    # The propensity model reads purchase counts: two purchases, not one.
    assert (
        after["propensity"].iloc[0] != before["propensity"].iloc[0]
        or after["segment_id"].iloc[0] != before["segment_id"].iloc[0]
    )


def test_batches_give_the_same_rows_as_one_call(models: ScoringModels) -> None:
    states = states_as_of(events_frame(_log()), T, LATENESS)
    ids = ["b", "x", "a", "y", "a2"]
    whole = score_states(ids, states, T, models)
    pieces = score_states(ids, states, T, models, batch_users=2)
    pd.testing.assert_frame_equal(whole, pieces)


def test_stored_columns_carry_the_state_and_its_last_event() -> None:
    state = UserState()
    apply_event(state, _event("a", 0, "product_view", T), LATENESS)
    columns = stored_columns([state, None])
    assert columns[STATE_FEATURE] == [state, None]
    assert columns[STATE_FEATURE + TIMESTAMP_SUFFIX] == [T, None]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_scores_round_trip_through_the_file(
    models: ScoringModels, tmp_path: Path, suffix: str
) -> None:
    states = states_as_of(events_frame(_log()), T, LATENESS)
    frame = score_states(["a", "b", "new"], states, T, models)
    path = tmp_path / "out" / f"scores{suffix}"
    write_scores(frame, path)
    back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert tuple(back.columns) == COLUMNS
    assert back["user_id"].tolist() == ["a", "b", "new"]
    assert back["cold_start"].tolist() == [False, False, True]
    np.testing.assert_allclose(back["propensity"], frame["propensity"], rtol=1e-12)


def test_an_unknown_output_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"end in \.parquet or \.csv"):
        check_output(tmp_path / "scores.xlsx")


def test_user_files_in_three_forms(tmp_path: Path) -> None:
    text = tmp_path / "ids.txt"
    text.write_text("user_id\nu1\n\n u2 \nu1\n007\n")
    assert read_user_ids(text) == ["u1", "u2", "007"]
    plain = tmp_path / "ids"
    plain.write_text("u3\nu4\n")
    assert read_user_ids(plain) == ["u3", "u4"]
    table = pd.DataFrame({"user_id": ["007", "u5"], "other": [1, 2]})
    table.to_csv(tmp_path / "ids.csv", index=False)
    table.to_parquet(tmp_path / "ids.parquet")
    assert read_user_ids(tmp_path / "ids.csv") == ["007", "u5"]  # ids stay text
    assert read_user_ids(tmp_path / "ids.parquet") == ["007", "u5"]
    pd.DataFrame({"customer": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="no user_id column"):
        read_user_ids(tmp_path / "bad.csv")
