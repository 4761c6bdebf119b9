"""Writes fenced by a consumer-group generation: nothing once a fence is above it.

A worker dropped from its group without a revoke (frozen past its session
timeout) may wake with a batch in hand; the partition's new owner has raised the
partition's fence (a hash, field ``generation``) to its own generation first, so
the stale worker's writes must be refused (see :mod:`streams.fencing`).

How: the commands go in chunks of at most :data:`CHUNK_COMMANDS`, each a Redis
transaction with optimistic locking: ``WATCH`` the fences and read them, and only
if none is above the writer's generation, ``MULTI`` (fences below it raised to
it), the chunk's commands, ``EXEC``. A fence raised between the read and the
``EXEC`` aborts the ``EXEC`` (nothing of the chunk written), and the chunk is
tried again, which then reads the raised fence. The ``WATCH`` and reads of the
next chunk follow the ``EXEC`` in the same round trip, so a write of n chunks
takes n + 1 round trips, not 2n. Native commands, not
one Lua script for the whole write: a script ran ~3x longer inside Redis (about
38 against 14 us per event) and held every other client -- the scoring service's
reads -- for all of it (40-70 ms per 2,000-event batch); a chunk holds them for a
few milliseconds.

Chunks are written in order, each whole or not at all, so a refusal can leave
the first chunks of a batch written, as a crash mid-write can: they were written
before the fence rose, so before the new owner read anything, and the new owner
replays the batch (uncommitted) from the committed offsets; its events in the
written states are duplicates by offset there.

Not for Redis Cluster: the states' keys lie in other slots than the fences; the
stack runs a single Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA

# Commands per transaction: ~600 users' writes (a live batch in one), about 5 ms
# of Redis.
CHUNK_COMMANDS = 2000
# Fence reads aborted by a concurrent change before the write gives up for now
# (the caller retries the whole write, as for an outage).
MAX_WATCH_RETRIES = 20


class WriteFenced(Exception):
    """A guarded write was refused: a fence is above the writer's generation.

    Attributes:
        fence_key: The fence that refused it.
        fence: Its value (the generation that owns it now).
        generation: The writer's generation.
    """

    def __init__(self, fence_key: bytes, fence: int, generation: int) -> None:
        super().__init__(
            f"{fence_key.decode(errors='replace')} is at generation {fence}, "
            f"above the writer's {generation}"
        )
        self.fence_key, self.fence, self.generation = fence_key, fence, generation


@dataclass(frozen=True)
class WriteGuard:
    """Fences a write must pass: each a hash whose ``generation`` is an integer.

    A hash, not a string: every other key in the online store's database is a
    hash, and whatever walks its keys as hashes keeps working.

    A write guarded by it happens only if no fence is above ``generation``, and
    raises the fences below it to it, with the write (see the module docstring).
    """

    fence_keys: tuple[bytes, ...]
    generation: int


class FenceContention(redis.exceptions.ConnectionError):
    """The fences kept changing under the write: an outage to retry, not poison."""


def write_guarded(
    client: redis.Redis, guard: WriteGuard, commands: Sequence[Sequence[Any]]
) -> None:
    """Run ``commands`` (raw, in order) in fenced chunks.

    One round trip per chunk: its transaction goes with the ``WATCH`` and fence
    reads of the next chunk (a first round trip reads them for the first), and
    the next chunk's commands are packed while Redis runs this one.

    Raises:
        WriteFenced: A fence is above the generation; this chunk and the rest
            are not written.
        redis.ResponseError: A command's error reply (``WRONGTYPE``, ``OOM``...),
            with its class, as a pipeline raises it.
    """
    chunks = [
        commands[start : start + CHUNK_COMMANDS]
        for start in range(0, len(commands), CHUNK_COMMANDS)
    ]
    if not chunks:
        return
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        _write_chunks(connection, guard, chunks)
    except BaseException:
        # Unread replies or a WATCH may be left on it: never hand it back so.
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _write_chunks(
    connection: Any, guard: WriteGuard, chunks: list[Sequence[Sequence[Any]]]
) -> None:
    keys, generation = guard.fence_keys, guard.generation
    watch = _watch_commands(keys)
    fences = _watch_fences(connection, keys)
    packed = _pack(chunks[0])
    index, aborted = 0, 0
    while index < len(chunks):
        low = []
        for key, raw in zip(keys, fences, strict=True):
            fence = int(raw) if raw else None
            if fence is not None and fence > generation:
                raise WriteFenced(key, fence, generation)
            if fence is None or fence < generation:
                low.append(key)
        raises = [(b"HSET", key, b"generation", generation) for key in low]
        last = index == len(chunks) - 1
        after = [] if last or not keys else watch
        head = _pack([(b"MULTI",), *raises])
        connection.send_packed_command([head, packed, _pack([(b"EXEC",), *after])])
        upcoming = packed if last else _pack(chunks[index + 1])  # Redis is busy
        count = 2 + len(raises) + len(chunks[index]) + len(after)
        replies = _read_replies(connection, count)
        executed = replies[count - len(after) - 1]  # before it: OK and QUEUED
        if after:
            fences = replies[count - len(after) + 1 :]
        if executed is None:
            # A fence changed since it was read: read it again, write it again.
            aborted += 1
            if aborted >= MAX_WATCH_RETRIES:
                raise FenceContention(
                    f"fences kept changing under {MAX_WATCH_RETRIES} writes"
                )
            if not after:
                fences = _watch_fences(connection, keys)
            continue
        for reply in executed:
            if isinstance(reply, redis.RedisError):
                raise reply
        index, packed = index + 1, upcoming


def _watch_fences(connection: Any, keys: Sequence[bytes]) -> list[Any]:
    """``WATCH`` the fences and read them, in one round trip."""
    if not keys:
        return []
    return _round_trip(connection, _watch_commands(keys))[1:]


def _watch_commands(keys: Sequence[bytes]) -> list[tuple[Any, ...]]:
    """``WATCH`` the fences, then read each; the replies: OK, then the fences."""
    return [(b"WATCH", *keys), *((b"HGET", key, b"generation") for key in keys)]


# Round trips on a connection of the client's pool, without redis-py's pipeline.
# A round trip costs little CPU but a lot of time on a busy machine (Redis must be
# scheduled to answer): two fewer per batch took the activation bench's trigger
# p99 from about 2.8 s to 1.7 s. Commands are packed by hiredis and the replies
# taken from the connection's hiredis reader in one loop: redis-py's per-command
# packing and per-reply ``read_response`` cost ~5 us a command, 2.5x this path,
# and a live batch is ~2,000 commands (every one answers ``QUEUED``).


def _round_trip(connection: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` at once and read one reply each.

    Raises:
        redis.RedisError: The first error reply, as its class (the rest are left
            unread: the caller disconnects the connection on any error).
    """
    connection.send_packed_command([_pack(commands)])
    return _read_replies(connection, len(commands))


def _pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """``commands`` in Redis's wire protocol, one buffer."""
    return b"".join([hiredis.pack_command(tuple(c)) for c in commands])


def _read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies, the first error reply raised as its class."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not isinstance(reader, hiredis.Reader):  # a client built without hiredis
        return [connection.read_response() for _ in range(count)]
    gets, more = reader.gets, parser.read_from_socket
    replies: list[Any] = []
    while len(replies) < count:
        reply = gets()
        if reply is NOT_ENOUGH_DATA:
            more()
            continue
        if isinstance(reply, redis.RedisError):
            raise reply
        replies.append(reply)
    return replies
