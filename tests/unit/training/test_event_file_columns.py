"""Training's read of the event file: its columns, text as Arrow strings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.event_files import read_events
from core.user_state import DAY
from tests.support.messy_events import T0, simulated_events
from training.backfill import backfill, snapshot_grid
from training.backfill_chunks import BACKFILL_COLUMNS
from training.labels import snapshot_labels


def _written(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_arrow_strings_read_gives_the_same_backfill_and_labels(tmp_path) -> None:
    # Missing sessions and categories, NaN prices and revenues, redelivered
    # events: the same snapshots, states and labels as from Python strings.
    path = _written(tmp_path, simulated_events(40, 10))
    plain = read_events(path)
    narrow = read_events(path, BACKFILL_COLUMNS, arrow_strings=True)
    assert list(narrow.columns) == list(BACKFILL_COLUMNS)
    assert isinstance(narrow["user_id"].dtype, pd.ArrowDtype)
    snaps = snapshot_grid(T0, T0 + 9 * DAY, every_days=3, from_end=True)
    results = [
        backfill(events, snaps, 600, workers=1, activity_until=snaps[-1])
        for events in (plain, narrow)
    ]
    for table in ("stream", "history"):
        pd.testing.assert_frame_equal(
            getattr(results[1], table), getattr(results[0], table), check_exact=True
        )
    assert list(results[1].states) == list(results[0].states)
    assert results[1].states == results[0].states
    assert results[1].outcomes == results[0].outcomes
    labels = [
        snapshot_labels(events, result.stream, 3, data_end=T0 + 10 * DAY)
        for events, result in zip((plain, narrow), results, strict=True)
    ]
    assert len(labels[0]) > 0
    pd.testing.assert_frame_equal(labels[1], labels[0], check_exact=True)


def test_columns_the_file_lacks_are_left_out(tmp_path) -> None:
    path = _written(
        tmp_path, simulated_events(5, 3).drop(columns=["revenue", "category"])
    )
    events = read_events(path, BACKFILL_COLUMNS, arrow_strings=True)
    assert "revenue" not in events and "category" not in events
    assert "user_id" in events and "ts" in events
