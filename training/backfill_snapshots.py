"""The backfill's snapshot tables as frames, and as the offline store's Parquet files.

A table's rows come grouped by user (in :class:`~training.backfill_chunks.Users`
order), by instant within a user (each user at their own instants); the frames and
files have ``user_id``, ``event_timestamp`` (UTC) and one float64 column per
feature, the schema the Feast file sources read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from training.backfill_chunks import Users

WRITE_SLICE_ROWS = 262_144  # rows per Parquet row group of the offline files


def snapshot_frame(
    users: Users, values: np.ndarray, columns: tuple[str, ...]
) -> pd.DataFrame:
    """A snapshot table: user_id, event_timestamp (UTC), float64 features.

    ``values`` (one row per snapshot row) becomes the table's float block
    without a copy.

    Args:
        users: The users whose rows ``values`` holds, in their order, with each
            row's instant.
        values: The table, one row per snapshot row.
        columns: The feature names of ``values``' columns.

    Returns:
        The frame, rows in ``values``' order.
    """
    # Whole microseconds (the files' unit), as nanoseconds viewed as datetimes:
    # pd.to_datetime on the numbers took ten times as long.
    nanos = np.round(users.instants * 1e6).astype(np.int64) * 1000
    stamps = pd.DatetimeIndex(nanos.view("datetime64[ns]")).tz_localize("UTC")
    frame = pd.DataFrame(values, columns=list(columns), copy=False)
    frame.insert(0, "event_timestamp", stamps)
    frame.insert(
        0, "user_id", pd.Series(np.repeat(users.ids, users.rows), dtype=object)
    )
    return frame


def _schema(columns: tuple[str, ...]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.string()),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            *(pa.field(name, pa.float64()) for name in columns),
        ]
    )


def write_snapshot_file(
    frame: pd.DataFrame, columns: tuple[str, ...], path: Path
) -> None:
    """Write a snapshot table to ``path``, replacing the file whole.

    Args:
        frame: ``user_id``, ``event_timestamp`` (UTC) and ``columns``.
        columns: The feature columns, in file order.
        path: The Parquet file; its directory is made if missing.
    """
    schema = _schema(columns)
    names = ["user_id", "event_timestamp", *columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readers (Feast, a running worker) never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Slice by slice (one row group each): converting the whole table at once
    # held two more copies of it (~1.3 GB at 2.7M rows).
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(frame), 1), WRITE_SLICE_ROWS):
            piece = frame.iloc[start : start + WRITE_SLICE_ROWS][names]
            writer.write_table(
                pa.Table.from_pandas(piece, schema=schema, preserve_index=False)
            )
    os.replace(tmp, path)
