"""Backfill, labels and training-set assembly on tiny hand-made event logs."""

from __future__ import annotations

import math
import pickle
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.event_files import COLUMNS
from core.feature_catalog import (
    HISTORY_FEATURES,
    PROPENSITY_FEATURES,
    STREAM_FEATURES,
    stored_features,
)
from core.user_state import UserState
from infra.settings import Settings
from tests.support.messy_events import simulated_events
from training.backfill import (
    backfill,
    capped_grid,
    evaluation_cutoffs,
    grid_rows,
    snapshot_grid,
    write_offline,
)
from training.labels import labelled_snapshots, purchase_labels, snapshot_labels
from training.training_set import complete_features

DAY = 86_400
T0 = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC
S1 = T0 + DAY
S2 = T0 + 2 * DAY
S3 = T0 + 3 * DAY


def _events(rows: list[tuple]) -> pd.DataFrame:
    """A contract-shaped frame from (event_id, user_id, type, ts[, revenue])."""
    records = []
    for row in rows:
        event_id, user, etype, ts, *rest = row
        record = dict.fromkeys(COLUMNS)
        record.update(event_id=event_id, user_id=user, event_type=etype, ts=ts)
        record["revenue"] = rest[0] if rest else None
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    frame["price"] = frame["price"].astype("float64")
    frame["revenue"] = frame["revenue"].astype("float64")
    frame["quantity"] = frame["quantity"].astype("Int64")
    return frame


# u1 browses on day 0, buys one minute after the first snapshot; u2 appears on
# day 1 and buys exactly at the second snapshot instant. e2 is delivered twice.
LOG = [
    ("e1", "u1", "page_view", T0 + 3600),
    ("e2", "u1", "product_view", T0 + 7200),
    ("e3", "u1", "add_to_cart", T0 + 10800),
    ("e2", "u1", "product_view", T0 + 7200),
    ("e4", "u1", "purchase", S1 + 60, 50.0),
    ("e5", "u2", "product_view", S1 + 3600),
    ("e6", "u2", "purchase", S2, 20.0),
]


def _row(frame: pd.DataFrame, user: str, instant: float) -> pd.Series:
    stamp = pd.Timestamp(instant, unit="s", tz="UTC")
    hit = frame[(frame["user_id"] == user) & (frame["event_timestamp"] == stamp)]
    assert len(hit) == 1, f"expected one row for {user} at {stamp}"
    return hit.iloc[0]


@pytest.fixture(scope="module")
def result():
    # Shuffled file order: the backfill must order each user's events by time.
    frame = _events(LOG).sample(frac=1.0, random_state=3).reset_index(drop=True)
    return backfill(frame, [T0, S1, S2], lateness_seconds=600)


def test_snapshot_features_match_hand_computed_values(result) -> None:
    stream = _row(result.stream, "u1", S1)
    assert stream["events_1h"] == 0
    assert stream["events_24h"] == 3
    assert stream["events_7d"] == 3
    assert stream["product_views_24h"] == 1  # the duplicate e2 counts once
    assert stream["cart_adds_24h"] == 1
    assert stream["last_event_ts"] == T0 + 10800

    later = _row(result.stream, "u1", S2)
    assert later["events_24h"] == 1  # only the purchase is inside (S2-24h, S2]
    assert later["events_7d"] == 4
    assert later["purchases_7d"] == 1
    assert later["revenue_7d"] == 50.0
    assert later["last_purchase_ts"] == S1 + 60

    history = _row(result.history, "u1", S2)
    assert history["orders_90d"] == 1
    assert history["revenue_90d"] == 50.0
    assert history["avg_order_value_90d"] == 50.0
    assert history["purchase_days_90d"] == 1
    assert history["first_seen_ts"] == T0 + 3600
    assert result.outcomes == {"applied": 6, "duplicate": 1, "late": 0}


def test_events_after_a_snapshot_are_not_seen_by_it(result) -> None:
    stream = _row(result.stream, "u1", S1)
    history = _row(result.history, "u1", S1)
    assert stream["purchases_7d"] == 0
    assert stream["revenue_7d"] == 0
    assert math.isnan(stream["last_purchase_ts"])
    assert history["orders_90d"] == 0
    # Nobody has an event at or before T0, and u2 is unknown until after S1.
    stamps = set(result.stream["event_timestamp"])
    assert pd.Timestamp(T0, unit="s", tz="UTC") not in stamps
    s1_users = result.stream.loc[
        result.stream["event_timestamp"] == pd.Timestamp(S1, unit="s", tz="UTC"),
        "user_id",
    ]
    assert list(s1_users) == ["u1"]
    # An event exactly at the snapshot instant is part of it.
    assert _row(result.stream, "u2", S2)["purchases_7d"] == 1


def test_states_are_the_final_replay_states(result) -> None:
    assert set(result.states) == {"u1", "u2"}
    assert result.states["u1"].last_purchase_ts == S1 + 60
    assert result.states["u2"].first_seen_ts == S1 + 3600


def test_labels_look_only_at_the_future(result) -> None:
    labels = purchase_labels(_events(LOG), [T0, S1, S2, S3], 1, data_end=S3)
    by_key = {
        (row.user_id, row.event_timestamp.timestamp()): row.label
        for row in labels.itertuples()
    }
    # The purchase one minute after S1 is u1's label at S1 ...
    assert by_key[("u1", S1)] == 1
    # ... while the S1 features do not contain it (see the test above).
    assert _row(result.stream, "u1", S1)["purchases_7d"] == 0
    assert by_key[("u1", S2)] == 0
    # A purchase at S2 itself is in S2's features, not in S2's label.
    assert by_key[("u2", S2)] == 0
    # Not seen yet at S1, no full horizon after S3, nobody seen at T0.
    assert set(by_key) == {("u1", S1), ("u1", S2), ("u2", S2)}
    assert str(labels["event_timestamp"].dt.tz) == "UTC"


def test_labelled_snapshots_need_a_full_horizon() -> None:
    assert labelled_snapshots([S1, S2, S3], 1, data_end=S3 - 1) == [S1]
    assert labelled_snapshots([S1, S2, S3], 7, data_end=S3) == []


def test_snapshot_grid_is_daily_at_midnight_utc() -> None:
    assert snapshot_grid(T0 + 5, S3) == [S1, S2, S3]
    assert snapshot_grid(T0, S3, every_days=2) == [T0, S2]
    assert snapshot_grid(T0 + 5, T0 + 10) == []


def test_write_offline_schema(result, tmp_path) -> None:
    settings = Settings(home=tmp_path)
    stream_path, history_path = write_offline(result, settings)
    assert stream_path == tmp_path / "data/offline/user_stream_features.parquet"
    for path, specs in (
        (stream_path, STREAM_FEATURES),
        (history_path, HISTORY_FEATURES),
    ):
        schema = pq.read_schema(path)
        assert schema.names == ["user_id", "event_timestamp", *(s.name for s in specs)]
        assert str(schema.field("user_id").type) == "string"
        assert str(schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
        assert {str(schema.field(s.name).type) for s in specs} == {"double"}
    assert pq.read_table(stream_path).num_rows == len(result.stream)


def test_missing_stored_values_read_as_no_activity() -> None:
    stored = pd.DataFrame(
        {name: [np.nan, 4.0] for name in stored_features(PROPENSITY_FEATURES)}
    )
    stored["last_event_ts"] = [np.nan, S1 - 7200]
    stored["last_purchase_ts"] = [np.nan, np.nan]
    stored["first_seen_ts"] = [np.nan, T0]
    stored["first_purchase_ts"] = [np.nan, np.nan]
    out = complete_features(stored, PROPENSITY_FEATURES, np.array([S1, S1]))
    assert list(out.columns) == list(PROPENSITY_FEATURES)
    assert out.loc[0, "events_7d"] == 0 and out.loc[0, "orders_90d"] == 0
    assert out.loc[1, "events_7d"] == 4
    assert out.loc[0, "hours_since_last_event"] == 0.0  # never seen
    assert out.loc[1, "hours_since_last_event"] == pytest.approx(2.0)
    assert out.loc[1, "tenure_days"] == pytest.approx(1.0)
    assert out.loc[1, "days_since_last_purchase"] == pytest.approx(1.0)  # tenure


def test_missing_stored_columns_are_an_error() -> None:
    with pytest.raises(KeyError, match="orders_90d"):
        complete_features(
            pd.DataFrame({"events_7d": [1.0]}), PROPENSITY_FEATURES, np.array([S1])
        )


def test_progress_reports_every_user_by_the_end() -> None:
    calls: list[tuple[int, int]] = []
    backfill(_events(LOG), [T0, S1], 600, on_progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (2, 2)
    assert all(done <= total for done, total in calls)


def test_rows_follow_users_in_order_of_first_appearance() -> None:
    events = simulated_events(30, 6)
    snaps = snapshot_grid(T0, T0 + 5 * DAY)  # some users start after the last one
    result = backfill(events, snaps, 600)
    order = list(pd.unique(events["user_id"]))
    assert list(result.states) == order
    first_seen = events.groupby("user_id")["ts"].min()
    expected = [(u, s) for u in order for s in snaps if s >= first_seen[u]]
    for table in (result.stream, result.history):
        instants = (table["event_timestamp"].astype("int64") / 1e9).tolist()
        assert list(zip(table["user_id"], instants, strict=True)) == expected
    assert result.outcomes["duplicate"] > 0


def test_parallel_backfill_equals_the_serial_one() -> None:
    # The same rows in the same order (users by first appearance, instants
    # ascending), the same states in the same order, bit for bit, whichever
    # process replayed which users.
    events = simulated_events(60, 10)
    snaps = snapshot_grid(T0, T0 + 8 * DAY, every_days=3, from_end=True)
    until = snaps[-1]  # each user at their own instants: grid and activity
    serial = backfill(events, snaps, 600, workers=1, activity_until=until)
    for workers in (2, 3):
        calls: list[tuple[int, int]] = []
        parallel = backfill(
            events,
            snaps,
            600,
            on_progress=lambda d, t: calls.append((d, t)),  # noqa: B023
            workers=workers,
            parallel_from_work=0,
            activity_until=until,
        )
        assert calls[-1] == (len(serial.states), len(serial.states))
        # The workers' states stay pickled until read; counting them is free.
        assert not parallel.states.decoded
        assert len(parallel.states) == len(serial.states)
        assert not parallel.states.decoded
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        pd.testing.assert_frame_equal(parallel.stream, serial.stream, check_exact=True)
        pd.testing.assert_frame_equal(
            parallel.history, serial.history, check_exact=True
        )
        assert list(parallel.states) == list(serial.states)
        assert parallel.states == serial.states
        assert parallel.outcomes == serial.outcomes


def test_no_events_give_empty_tables() -> None:
    result = backfill(_events([]), [T0, S1], 600, workers=2, parallel_from_work=0)
    assert len(result.stream) == len(result.history) == 0
    assert list(result.stream.columns[:2]) == ["user_id", "event_timestamp"]
    assert result.states == {}
    assert result.outcomes == {"applied": 0, "duplicate": 0, "late": 0}


def test_worker_tasks_write_their_rows_in_place(tmp_path) -> None:
    # What a worker process does with a chunk (rows into the shared table file at
    # the chunk's offset), done here in any order, gives the in-process tables.
    from training.backfill_chunks import cut_chunks, sorted_events
    from training.backfill_parallel import replay_here, table_views
    from training.replay import replay_to_file, table_bytes

    events = simulated_events(40, 6)
    snaps = snapshot_grid(T0, T0 + 5 * DAY)
    users, columns = sorted_events(events, snaps, activity_until=snaps[-1])
    chunks = cut_chunks(users, columns, 5)
    assert len(chunks) == 5
    stream, history, here = replay_here(chunks, 600, users.total_rows, None)
    path = tmp_path / "tables"
    path.write_bytes(bytes(sum(table_bytes(users.total_rows))))
    there = {
        i: replay_to_file(chunk, 600, str(path), users.total_rows)
        for i, chunk in reversed(list(enumerate(chunks)))
    }
    stream_file, history_file = table_views(path.read_bytes(), users.total_rows)
    assert stream_file.tobytes() == stream.tobytes()
    assert history_file.tobytes() == history.tobytes()
    # A worker sends its states pickled, once.
    assert all(isinstance(there[i].states, bytes) for i in there)
    sent = [pickle.loads(there[i].states) for i in range(len(chunks))]
    assert sent == [r.states for r in here]


def test_grid_from_the_end_keeps_the_newest_day() -> None:
    assert snapshot_grid(T0 + 5, S3, every_days=2, from_end=True) == [S1, S3]
    assert snapshot_grid(T0 + 5, S3 - 1, every_days=2, from_end=True) == [S2]
    assert snapshot_grid(T0 + 5, S3, from_end=True) == snapshot_grid(T0 + 5, S3)


def test_capped_grid_widens_to_the_row_budget() -> None:
    rng = np.random.default_rng(2)
    end = T0 + 730 * DAY + 500
    first_seen = T0 + rng.uniform(0, 730 * DAY, 1_000)
    weekly = capped_grid(first_seen, end, 7, None)
    assert np.diff(weekly).tolist() == [7 * DAY] * (len(weekly) - 1)
    assert weekly[-1] == T0 + 730 * DAY
    capped = capped_grid(first_seen, end, 7, 5_000)
    spacing = set(np.diff(capped).tolist())
    assert len(spacing) == 1 and spacing.pop() % DAY == 0
    assert len(capped) < len(weekly) and capped[-1] == weekly[-1]
    assert grid_rows(capped, first_seen) <= 5_000 < grid_rows(weekly, first_seen)
    # A budget below one row per user still keeps the newest instant for all.
    assert capped_grid(first_seen, end, 7, 10) == [T0 + 730 * DAY]


def _plan(events: pd.DataFrame, grid: list[float], until: float) -> list[tuple]:
    """Each user's expected (user, instant) rows: grid from first event, activity."""
    expected = []
    for user in pd.unique(events["user_id"]):
        ts = events.loc[events["user_id"] == user, "ts"].to_numpy()
        ends = {float(math.ceil(t / DAY) * DAY) for t in ts}
        mine = {g for g in grid if g >= ts.min()} | {e for e in ends if e <= until}
        expected += [(user, s) for s in sorted(mine)]
    return expected


def test_rows_grow_with_events_not_users_times_days() -> None:
    # 400 customers with one or two purchases somewhere in two years.
    rng = np.random.default_rng(8)
    log = []
    for i in range(400):
        for j in range(1 + i % 2):
            at = T0 + float(rng.uniform(0, 730 * DAY))
            log.append((f"e{i}-{j}", f"c{i}", "purchase", at, 10.0))
    events = _events(log)
    end = float(events["ts"].max())
    first_seen = events.groupby("user_id", sort=False)["ts"].min().to_numpy()
    grid = capped_grid(first_seen, end, 7, 2.0 * len(events))
    result = backfill(events, grid, 600, activity_until=grid[-1])
    rows = list(
        zip(
            result.stream["user_id"],
            (result.stream["event_timestamp"].astype("int64") / 1e9).tolist(),
            strict=True,
        )
    )
    assert rows == _plan(events, grid, grid[-1])
    # At most the grid budget plus one row per event, against ~146k for a
    # daily snapshot of everyone seen.
    assert len(rows) <= 3 * len(events)
    assert len(result.history) == len(rows)
    # A customer with one purchase: the grid from then on and its day's end.
    once = result.stream[result.stream["user_id"] == "c0"]
    assert len(once) <= len(grid) + 1
    assert once["event_timestamp"].min() >= pd.Timestamp(
        events.loc[events["user_id"] == "c0", "ts"].min(), unit="s", tz="UTC"
    )


def test_sampled_rows_equal_feature_math_at_their_instants() -> None:
    from core.event_files import events_frame
    from core.feature_math import history_values, stream_values
    from core.user_state import UserState, apply_event
    from segscore.simulator import simulate
    from streams.processor import apply_batch

    sim = simulate(25, T0, T0 + 30 * DAY, seed=6).events
    stream_log = [*sim, *sim[::7]]  # redelivered events: duplicates
    events = events_frame(stream_log)
    first_seen = events.groupby("user_id", sort=False)["ts"].min().to_numpy()
    grid = capped_grid(first_seen, float(events["ts"].max()), 7, None)
    until = grid[-1]
    result = backfill(events, grid, 600, activity_until=until, workers=1)
    instants = (result.stream["event_timestamp"].astype("int64") / 1e9).to_numpy()
    assert list(zip(result.stream["user_id"], instants.tolist(), strict=True)) == (
        _plan(events, grid, until)
    )
    by_user: dict[str, list] = {}
    for event in sorted(stream_log, key=lambda e: e.ts):  # stable: file order
        by_user.setdefault(event.user_id, []).append(event)
    stream = result.stream.iloc[:, 2:].to_numpy()
    history = result.history.iloc[:, 2:].to_numpy()
    for i, (user, at) in enumerate(
        zip(result.stream["user_id"], instants, strict=True)
    ):
        state = UserState()
        for event in by_user[user]:
            if event.ts > at:
                break
            apply_event(state, event, 600)
        np.testing.assert_array_equal(stream[i], stream_values(state, at, math.nan))
        np.testing.assert_array_equal(history[i], history_values(state, at, math.nan))
    assert list(result.states) == list(pd.unique(events["user_id"]))
    # The stream worker's transition on the same events ends in the same states.
    worker_states: defaultdict[str, UserState] = defaultdict(UserState)
    ordered = [e for user in by_user.values() for e in user]
    apply_batch(ordered, worker_states, 600)
    assert dict(worker_states) == result.states


def test_labels_of_sampled_rows_look_only_at_the_future(result) -> None:
    events = _events(LOG)
    rows = result.stream[["user_id", "event_timestamp"]]
    labels = snapshot_labels(events, rows, 1, data_end=S3)
    # The same rows as every user at every grid instant: the grid's labels.
    grid = purchase_labels(events, [T0, S1, S2], 1, data_end=S3)
    pd.testing.assert_frame_equal(
        labels.sort_values(["event_timestamp", "user_id"]).reset_index(drop=True),
        grid.reset_index(drop=True),
    )
    # u1 buys a minute after S1; u2's purchase at S2 is part of S2, not after.
    u1_s1 = pd.Timestamp(S1, unit="s", tz="UTC")
    u2_s2 = pd.Timestamp(S2, unit="s", tz="UTC")
    picked = rows[rows["event_timestamp"].isin([u1_s1, u2_s2])]
    picked = picked[
        picked["user_id"] == np.where(picked["event_timestamp"] == u1_s1, "u1", "u2")
    ]
    labels = snapshot_labels(events, picked, 1, data_end=S3)
    assert list(zip(labels["user_id"], labels["label"], strict=True)) == [
        ("u1", 1),
        ("u2", 0),
    ]
    shorter = snapshot_labels(events, rows, 2, data_end=S3)
    assert set(shorter["event_timestamp"]) == {u1_s1}


def test_the_plan_follows_the_cadence_settings() -> None:
    from training.backfill import snapshot_plan

    events = simulated_events(20, 30)
    end = float(events["ts"].max())
    weekly = Settings(snapshot_grid_rows_per_event=0, snapshot_at_activity=False)
    grid, until = snapshot_plan(events, weekly)
    assert until is None
    assert grid == snapshot_grid(float(events["ts"].min()), end, 7, from_end=True)
    grid, until = snapshot_plan(events, Settings(snapshot_every_days=2))
    assert until == grid[-1] == math.floor(end / DAY) * DAY
    # The two evaluation cut-offs (7-day horizon) join the 2-day grid.
    cutoffs = evaluation_cutoffs(float(events["ts"].min()), end, 7)
    assert len(cutoffs) == 2 and set(cutoffs) <= set(grid)
    two_day = snapshot_grid(float(events["ts"].min()), end, 2, from_end=True)
    assert grid == sorted({*two_day, *cutoffs})
    assert set(np.diff(cutoffs)) == {7 * DAY}
    assert cutoffs[1] == math.floor((end - 7 * DAY) / DAY) * DAY


def test_evaluation_cutoffs_keep_a_whole_horizon_inside_the_data() -> None:
    end = T0 + 100 * DAY + 5 * 3600
    tune, holdout = evaluation_cutoffs(T0, end, 30)
    assert holdout == T0 + 70 * DAY and tune == T0 + 40 * DAY
    assert holdout + 30 * DAY <= end < holdout + 31 * DAY
    # History shorter than two horizons: only the holdout cut-off remains.
    assert evaluation_cutoffs(T0 + 50 * DAY, end, 30) == [T0 + 70 * DAY]
    assert evaluation_cutoffs(T0 + 80 * DAY, end, 30) == []


def test_backfill_states_decode_once_in_order_and_keep_changes() -> None:
    from training.backfill_states import BackfillStates

    first, second, third = UserState(), UserState(), UserState()
    first.orders_lifetime, second.orders_lifetime, third.orders_lifetime = 1, 2, 3
    states = BackfillStates(["a", "b", "c"], [[first], pickle.dumps([second, third])])
    assert len(states) == 3 and not states.decoded
    assert [s.orders_lifetime for s in states.values()] == [1, 2, 3]
    assert list(states) == ["a", "b", "c"] and states.decoded
    states["b"].segment = 4  # what seeding's placement does
    assert states["b"].segment == 4
    with pytest.raises(ValueError, match="2 states for 3 users"):
        dict(BackfillStates(["a", "b", "c"], [[first, second]]))
