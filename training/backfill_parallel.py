"""Running the backfill's chunks: in this process, or with a process pool.

Either way the rows land in one pair of row-major float64 tables (stream, then
history) in one buffer, each chunk's rows at their place; only states and
outcome counts come back from a chunk. With a pool, the buffer is a file in shared
memory that every process writes through its own mapping, so no rows are sent
back, concatenated or reordered.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager

import numpy as np

from core.feature_catalog import HISTORY_NAMES, STREAM_NAMES
from training.replay import (
    Chunk,
    Replayed,
    replay_chunk,
    replay_to_file,
    table_bytes,
    worker_ready,
)

SHARED_MEMORY_DIR = "/dev/shm"


def table_views(
    buffer: mmap.mmap | bytes, total_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The stream and history tables (row-major) over one buffer, stream first.

    Args:
        buffer: At least :func:`~training.replay.table_bytes` of ``total_rows``.
        total_rows: Rows of each table.

    Returns:
        The stream and the history table, viewing ``buffer`` without a copy.
    """
    stream_bytes, history_bytes = table_bytes(total_rows)
    if not stream_bytes:
        return (
            np.empty((0, len(STREAM_NAMES))),
            np.empty((0, len(HISTORY_NAMES))),
        )
    stream = np.frombuffer(buffer, dtype=np.float64, count=stream_bytes // 8)
    history = np.frombuffer(
        buffer, dtype=np.float64, count=history_bytes // 8, offset=stream_bytes
    )
    return (
        stream.reshape(total_rows, len(STREAM_NAMES)),
        history.reshape(total_rows, len(HISTORY_NAMES)),
    )


def _replay_into(
    chunk: Chunk,
    lateness_seconds: int,
    stream: np.ndarray,
    history: np.ndarray,
) -> Replayed:
    """Replay a chunk in this process, its rows packed into place in the tables."""
    end = chunk.first_row + chunk.rows
    return replay_chunk(
        chunk,
        lateness_seconds,
        memoryview(stream[chunk.first_row : end].reshape(-1).view(np.uint8)),
        memoryview(history[chunk.first_row : end].reshape(-1).view(np.uint8)),
    )


def replay_here(
    chunks: list[Chunk],
    lateness_seconds: int,
    total_rows: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, list[Replayed]]:
    """Replay every chunk in this process, into in-memory tables.

    Args:
        chunks: The chunks, in user order.
        lateness_seconds: The stream worker's allowed lateness.
        total_rows: Rows of each table (every chunk's rows).
        on_progress: Called after each chunk with (users done, users in all).

    Returns:
        The stream table, the history table and each chunk's states and counts.
    """
    size = sum(table_bytes(total_rows))
    # Private anonymous memory rather than np.empty: numpy asks for transparent
    # huge pages on large arrays, and where the kernel compacts memory to find
    # them (THP defrag "madvise", the default) first touching these 0.9 GB cost
    # 1.5 s of system time in a VM; plain pages cost a fifth of that.
    stream, history = table_views(
        mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE) if size else b"", total_rows
    )
    total = sum(chunk.users for chunk in chunks)
    done = 0
    results = []
    for chunk in chunks:
        results.append(_replay_into(chunk, lateness_seconds, stream, history))
        done += chunk.users
        if on_progress is not None:
            on_progress(done, total)
    return stream, history, results


def _shared_directory(size: int) -> str | None:
    """Where the table file goes: tmpfs when it has room (no disk writes)."""
    try:
        stat = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return None
    roomy = stat.f_bavail * stat.f_frsize > 2 * size
    return (
        SHARED_MEMORY_DIR if roomy and os.access(SHARED_MEMORY_DIR, os.W_OK) else None
    )


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """``workers - 1`` spawned processes, started at once; ``None`` for one worker.

    Each first runs an empty task, so that its start-up (a fresh interpreter
    importing :mod:`training.replay`) overlaps with cutting the chunks.
    """
    if workers <= 1:
        yield None
        return
    # Spawned, not forked: the parent may hold threads (Arrow, DuckDB) whose locks
    # a fork would copy in a held state.
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(workers - 1, mp_context=context) as pool:
        for _ in range(workers - 1):
            pool.submit(worker_ready)
        yield pool


def replay_parallel(
    pool: ProcessPoolExecutor,
    chunks: list[Chunk],
    lateness_seconds: int,
    total_rows: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, list[Replayed]]:
    """Chunks replayed by this process and the ``pool``'s processes.

    Every process writes a chunk's rows straight to their place in one table file
    (shared memory), which this process maps as the result: no rows are sent
    back, concatenated or reordered. Workers take chunks from the front as they
    become free while this process works from the back (a chunk not yet handed
    to a worker can still be cancelled), so the load balances even though the
    workers start later. Only states and counts come back, pickled: cheaper to
    decode than :meth:`~core.user_state.UserState.to_bytes` blobs.

    Args:
        pool: The worker processes (see :func:`worker_pool`).
        chunks: The chunks, in user order.
        lateness_seconds: The stream worker's allowed lateness.
        total_rows: Rows of each table (every chunk's rows).
        on_progress: Called now and then with (users done, users in all).

    Returns:
        The stream table, the history table and each chunk's states and counts.
    """
    size = sum(table_bytes(total_rows))
    fd, path = tempfile.mkstemp(
        prefix="segscore-backfill-", suffix=".f64", dir=_shared_directory(size)
    )
    try:
        os.ftruncate(fd, size)
        # Written through a shared mapping (this process's chunks) and by the
        # workers; the mapping goes when the last view of it does.
        parts = _replay_shared(
            pool,
            chunks,
            lateness_seconds,
            (path, total_rows),
            mmap.mmap(fd, size) if size else b"",
            on_progress,
        )
        # The result maps the file copy-on-write: whatever is later written to the
        # tables (here or in a forked process) stays private, as it would in
        # ordinary memory.
        result = mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else b""
    finally:
        # The mapping keeps the memory; the name is not needed any more.
        os.close(fd)
        os.unlink(path)
    return (*table_views(result, total_rows), parts)


def _replay_shared(
    pool: ProcessPoolExecutor,
    chunks: list[Chunk],
    lateness_seconds: int,
    table_file: tuple[str, int],
    shared: mmap.mmap | bytes,
    on_progress: Callable[[int, int], None] | None,
) -> list[Replayed]:
    """Hand the chunks to the pool while this process replays from the back.

    ``table_file`` is the file's path and rows, for the workers; ``shared`` maps
    it here.
    """
    path, total_rows = table_file
    stream, history = table_views(shared, total_rows)
    total = sum(chunk.users for chunk in chunks)
    results: list[Replayed | None] = [None] * len(chunks)
    futures = [
        pool.submit(replay_to_file, chunk, lateness_seconds, path, total_rows)
        for chunk in chunks
    ]
    try:
        mine = len(chunks)
        while mine > 0 and futures[mine - 1].cancel():
            mine -= 1
            results[mine] = _replay_into(
                chunks[mine], lateness_seconds, stream, history
            )
            if on_progress is not None:
                on_progress(_users_done(chunks, futures, mine), total)
        for i in range(mine):
            results[i] = futures[i].result()
            if on_progress is not None:
                on_progress(_users_done(chunks, futures, mine), total)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return [r for r in results if r is not None]


def _users_done(chunks: list[Chunk], futures: list[Future[Replayed]], mine: int) -> int:
    """Users of finished chunks: the workers' done ones and this process's."""
    theirs = sum(chunks[i].users for i in range(mine) if futures[i].done())
    return theirs + sum(chunk.users for chunk in chunks[mine:])
