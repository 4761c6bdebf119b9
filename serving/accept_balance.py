"""New connections spread evenly over the service's worker processes.

BentoML's workers share one listening socket, and each accepts whatever it is
awake for first. Keep-alive clients then stay where their connection landed:
8 connections opened by a client split 6/2 as often as 4/4, and the worker
holding six answers each of them three times slower (bench: batch p50 58 ms on
one worker's connections, 20 ms on the other's, p99 105 ms against 74 ms when
they split evenly).

So each worker publishes how many connections it holds in a small shared file
(:class:`ConnectionShare`, one slot per worker), and accepts with its own loop
(:class:`BalancedListener`, standing in for the server uvicorn would create on
the shared socket): a worker holding more connections than some other live
worker lets the connection wait up to :data:`DEFER_SECONDS` for that worker to
take it, then takes it itself if it is still waiting (the other may be busy or
gone). Equal counts accept at once, so nothing waits when the workers are level.

:func:`install` makes uvicorn's ``auto`` event loop one whose ``create_server``
on a given socket returns the balanced listener; without a worker index (not
under ``bentoml serve``) everything is as uvicorn does it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn.config

logger = logging.getLogger(__name__)

# Long enough for a sibling busy with a request (or descheduled on a loaded
# machine) to get to its accept; a connection waits this only when the workers
# are uneven, once per connection. 5 ms still let 3/5 splits through when the
# machine was busy.
DEFER_SECONDS = 0.02
SLOTS = 64
# Per slot: the worker's pid (0: free) and its open connections.
_SLOT = struct.Struct("=qq")
# What asyncio does on these accept errors: stop accepting for a while.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RESOURCE_PAUSE_SECONDS = 1.0
LOOP_FACTORY = f"{__name__}:loop_factory"


class ConnectionShare:
    """The open connections of each worker of one server, in a shared file.

    Slot ``slot`` is this worker's (``pid``, this process by default); a slot
    whose pid no longer runs is ignored.
    """

    def __init__(self, path: Path, slot: int, pid: int | None = None) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"worker slot {slot} outside 0..{SLOTS - 1}")
        self.path, self.slot = path, slot
        self.pid = os.getpid() if pid is None else pid
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * _SLOT.size:
                os.ftruncate(fd, SLOTS * _SLOT.size)
            self._map = mmap.mmap(fd, SLOTS * _SLOT.size)
        finally:
            os.close(fd)
        self.count = 0
        self._write()

    def _write(self) -> None:
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, self.pid, self.count)

    def changed(self, count: int) -> None:
        """This worker now holds ``count`` connections."""
        if count != self.count:
            self.count = count
            self._write()

    def others_hold_fewer(self) -> bool:
        """Whether some other live worker holds fewer connections than this one."""
        mine = self.count
        for slot, (pid, count) in enumerate(_SLOT.iter_unpack(self._map)):
            if slot != self.slot and pid and count < mine and _running(pid):
                return True
        return False

    def close(self) -> None:
        """Free this worker's slot; the last worker out removes the file."""
        self.pid, self.count = 0, 0
        self._write()
        last = not any(pid for pid, _ in _SLOT.iter_unpack(self._map))
        self._map.close()
        if last:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the pid: alive
        return True
    return True


class BalancedListener:
    """Accepts on a shared listening socket, deferring to less loaded workers.

    Quacks like the ``asyncio.Server`` uvicorn keeps (``close``,
    ``wait_closed``); each accepted socket is handed to
    ``loop.connect_accepted_socket`` with the server's protocol factory.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        share: ConnectionShare,
        ssl: Any = None,
    ) -> None:
        self._loop, self._sock, self._factory = loop, sock, protocol_factory
        self._share, self._ssl = share, ssl
        self._fd = sock.fileno()
        self._reading = False
        self._closed = False
        self._pending: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        # Not while a pause runs (an accept that just hit EMFILE started one).
        if not self._closed and not self._reading and self._pending is None:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _pause(self, seconds: float, accept_then: bool) -> None:
        """Stop watching the socket for ``seconds``; then accept one if asked."""
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._pending = self._loop.call_later(seconds, self._wake, accept_then)

    def _wake(self, accept: bool) -> None:
        self._pending = None
        if self._closed:
            return
        if accept:  # still waiting after the grace time: nobody less loaded took it
            self._accept_one()
        self._resume()

    def _readable(self) -> None:
        if self._share.others_hold_fewer():
            self._pause(DEFER_SECONDS, accept_then=True)
        else:
            self._accept_one()

    def _accept_one(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRORS:
                logger.warning("accept paused: %s", exc)
                self._pause(_RESOURCE_PAUSE_SECONDS, accept_then=False)
            else:
                logger.warning("accept failed: %s", exc)
            return
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except (OSError, ValueError) as exc:  # a TLS handshake or a reset
            logger.debug("connection dropped before serving: %s", exc)
            conn.close()

    def close(self) -> None:
        """Stop accepting (the socket itself is the caller's to close)."""
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    async def wait_closed(self) -> None:
        """Wait for connections still being set up."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


_share: ConnectionShare | None = None


def connections_changed(count: int) -> None:
    """Publish this worker's open connections (no-op unless balancing)."""
    if _share is not None:
        _share.changed(count)


def share_path(directory: Path, parent_pid: int) -> Path:
    """The shared file of the workers of the ``bentoml serve`` process given."""
    return directory / f"accept-{parent_pid}.slots"


def _balanced(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    create_server = loop.create_server

    async def balanced_create_server(
        protocol_factory: Callable[[], asyncio.Protocol], *args: Any, **kwargs: Any
    ) -> Any:
        sock = kwargs.get("sock")
        if _share is None or sock is None or args:
            return await create_server(protocol_factory, *args, **kwargs)
        return BalancedListener(
            loop, sock, protocol_factory, _share, ssl=kwargs.get("ssl")
        )

    loop.create_server = balanced_create_server  # type: ignore[method-assign]
    return loop


def loop_factory(
    use_subprocess: bool = False,
) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvicorn's ``auto`` loop factory, its loops serving shared sockets balanced."""
    from uvicorn.loops.auto import auto_loop_factory

    make = auto_loop_factory(use_subprocess=use_subprocess)
    return lambda: _balanced(make())


def install(worker_index: int | None, directory: Path) -> None:
    """Balance this worker's accepts with its siblings' (1-based ``worker_index``).

    The shared file lives in ``directory`` (created if missing). ``None`` (not
    a ``bentoml serve`` worker): nothing changes.
    """
    global _share
    if worker_index is None or _share is not None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    _share = ConnectionShare(share_path(directory, os.getppid()), worker_index - 1)
    atexit.register(_share.close)
    uvicorn.config.LOOP_FACTORIES["auto"] = LOOP_FACTORY
