"""The backfill's snapshot tables as frames, and as the offline store's Parquet files.

A table's rows come grouped by user (in :class:`~training.backfill_chunks.Users`
order), by instant within a user (each user at their own instants); the frames and
files have ``user_id``, ``event_timestamp`` (UTC) and one float64 column per
feature, the schema the Feast file sources read.
"""

from __future__ import annotations

import os
import threading
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


def _slice_table(
    frame: pd.DataFrame, columns: tuple[str, ...], schema: pa.Schema, rows: slice
) -> pa.Table:
    """Rows ``rows`` of a snapshot table as Arrow, one column at a time.

    What ``pa.Table.from_pandas`` gives (NaN as null, nanoseconds to whole
    microseconds, checked), without first taking the slice as a pandas frame:
    the backfill's features are one row-major block, and reordering it into a
    frame was a 65 MB copy per slice besides the Arrow one.
    """
    arrays = [
        pa.array(frame["user_id"].to_numpy(dtype=object)[rows], type=pa.string()),
        pa.array(frame["event_timestamp"].iloc[rows]).cast(schema[1].type),
        *(
            pa.array(frame[name].to_numpy(dtype=np.float64)[rows], from_pandas=True)
            for name in columns
        ),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readers (Feast, a running worker) never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # Slice by slice (one row group each): converting the whole table at once
    # held two more copies of it (~1.3 GB at 2.7M rows).
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, max(len(frame), 1), WRITE_SLICE_ROWS):
            rows = slice(start, start + WRITE_SLICE_ROWS)
            writer.write_table(_slice_table(frame, columns, schema, rows))
    os.replace(tmp, path)
