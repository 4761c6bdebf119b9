"""The scoring service's online read: Feast's Redis hashes, read directly.

Feast's Redis store keeps every feature view of an entity in ONE hash (key = the
serialized entity key + project; field = murmur3 of ``view:feature``; values are
Feast ``Value`` protos; ``_ts:<view>`` holds each view's event timestamp). The
stream worker already writes that layout itself (:mod:`core.store.state_store`), and
this module reads it back the same way: one ``HMGET`` per user, pipelined, for
exactly the fields the models need (plus any extra field of the same hash the
caller names, such as the worker's rule memberships).

Why not ``FeatureStore.get_online_features_async``: for one user it cost ~0.3 ms
and for 100 users ~8 ms (proto responses, per-feature status vectors, ``to_dict``),
more than the whole scoring path. The views and features are still resolved from
the Feast registry at start-up, so a feature the registry does not know fails
loudly there, and :func:`read_columns` returns what ``OnlineResponse.to_dict(
include_event_timestamps=True)`` returns for the same request (a test compares
them on real Redis): one column per feature, ``None`` where nothing is stored, and
``<feature>__ts`` columns with the view's write time in epoch seconds.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ResponseError

try:  # redis-py's own parser internals, used only when they are these
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _AsyncHiredisParser as _HiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: the plain path
    _HiredisParser = None  # type: ignore[assignment,misc]
    _NOT_ENOUGH_DATA = object()

from core.store.feast_wire import field_hash, parse_value, read_bytes_value
from core.store.state_store import StateLayout

if TYPE_CHECKING:
    from feast import FeatureStore

# A Feast ``Value`` holding a double is field 5, wire type 1 (64-bit): tag byte
# 0x29 then 8 little-endian bytes. Most fields read are such doubles, or the state
# blob (bytes); decoding those directly skips a proto object per value (and
# importing Feast at all). Anything else goes through the proto.
_DOUBLE_TAG = 0x29
_DOUBLE = struct.Struct("<d")


class FeatureNotRegistered(RuntimeError):
    """A model input is not a feature of any view in the Feast registry."""


@dataclass(frozen=True)
class ViewFields:
    """The hash fields of one feature view's requested features."""

    view: str
    features: tuple[str, ...]
    fields: tuple[bytes, ...]
    ts_field: bytes


def resolve_views(store: FeatureStore, names: Sequence[str]) -> list[ViewFields]:
    """Which view holds each stored feature, from the Feast registry.

    Args:
        store: The Feast store (its registry decides the owners).
        names: Stored feature names, as the models need them.

    Returns:
        One entry per view, features in the order of ``names``.

    Raises:
        FeatureNotRegistered: A name is not a feature of any (non on-demand) view.
    """
    owner: dict[str, str] = {}
    for view in store.list_feature_views():
        for feature in view.features:
            owner.setdefault(feature.name, view.name)
    missing = [name for name in names if name not in owner]
    if missing:
        raise FeatureNotRegistered(
            f"features {missing} are not in the Feast registry; run `feast apply` "
            "(or `segscore up`) for this feature repo"
        )
    by_view: dict[str, list[str]] = {}
    for name in names:
        by_view.setdefault(owner[name], []).append(name)
    return [
        ViewFields(
            view=view,
            features=tuple(features),
            fields=tuple(field_hash(f"{view}:{name}") for name in features),
            ts_field=f"_ts:{view}".encode(),
        )
        for view, features in by_view.items()
    ]


def decode_value(raw: bytes | None) -> Any:
    """A stored Feast ``Value`` as the Python value ``to_dict`` gives (or ``None``)."""
    if not raw:
        return None
    if raw[0] == _DOUBLE_TAG and len(raw) == 9:
        return _DOUBLE.unpack_from(raw, 1)[0]
    blob = read_bytes_value(raw)
    if blob is not None:
        return blob
    value = parse_value(raw)
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(value, kind)


def decode_timestamp(raw: bytes | None) -> float | None:
    """A stored ``_ts:<view>`` field as epoch seconds (``None`` when absent)."""
    if not raw:
        return None
    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return stamp.seconds + stamp.nanos / 1e9


class OnlineReader:
    """Reads the models' stored features for many users in one round trip.

    ``extra_fields`` are more fields of the same hash read by the same
    ``HMGET`` (the service reads the worker's rule memberships so), after the
    features; :meth:`extra` picks one out of the replies.

    ``timeout`` bounds a whole read (``TimeoutError`` beyond it). Give the client
    no ``socket_timeout`` then: redis-py arms a timer per reply, which for 100
    users was more of the read than hiredis parsing all of them.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        layout: StateLayout,
        views: list[ViewFields],
        extra_fields: Sequence[bytes] = (),
        timeout: float | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.layout = layout
        self.views = views
        fields: list[bytes] = []
        # Per view: its feature columns with their index in the HMGET reply, and
        # the index of the view's timestamp field.
        self._plan: list[tuple[tuple[tuple[str, int], ...], int]] = []
        for view in views:
            columns = []
            for name, field in zip(view.features, view.fields, strict=True):
                columns.append((name, len(fields)))
                fields.append(field)
            self._plan.append((tuple(columns), len(fields)))
            fields.append(view.ts_field)
        self._extra_index = {}
        for field in extra_fields:
            self._extra_index[field] = len(fields)
            fields.append(field)
        self.fields = tuple(fields)
        self._feature_index = {
            name: index for columns, _ in self._plan for name, index in columns
        }
        self.feature_names = tuple(n for v in views for n in v.features)

        self._ts_indexes = tuple(ts_index for _, ts_index in self._plan)
        self._command = _Hmget(self.fields)
        # Per ``fetch_preferring`` feature: its short read, built on first use.
        self._preferring: dict[str, tuple[_Hmget, tuple[int, ...]]] = {}
        self._key = layout.key

    def key(self, user_id: str) -> bytes:
        """The Redis key of a user's hash (Feast's entity key layout)."""
        return self._key(user_id)

    def pack(self, user_ids: Sequence[str]) -> bytes:
        """One RESP-encoded ``HMGET`` per user, concatenated."""
        return self._command.pack(self._key, user_ids)

    async def fetch(self, user_ids: Sequence[str]) -> list[list[bytes | None]]:
        """The raw ``HMGET`` replies, one per user, in request order.

        What a redis-py pipeline does (one write, then one reply per command on
        the same pooled connection), without packing each command in Python:
        for 100 users that was about half of the read. A connection that fails
        mid-way is dropped, never returned to the pool with replies pending.
        """
        replies, _ = await self.fetch_with(user_ids, ())
        return replies

    async def fetch_with(
        self, user_ids: Sequence[str], commands: Sequence[Sequence[bytes | int]]
    ) -> tuple[list[list[bytes | None]], list[Any]]:
        """:meth:`fetch`, plus raw ``commands`` sent after it in the same round trip.

        Returns the ``HMGET`` replies and one reply per command. A command that
        Redis answers with an error (say, a key of the wrong type) gets its
        :class:`~redis.exceptions.ResponseError` as its reply instead of failing
        the whole read; the error reply is read in full, so the connection stays
        in step. Connection errors and timeouts raise as in :meth:`fetch`.
        """
        data = self.pack(user_ids) + b"".join(_resp(c) for c in commands)
        return await self._round_trip(data, len(user_ids), len(commands))

    async def fetch_preferring(
        self, user_ids: Sequence[str], feature: str
    ) -> list[list[bytes | None]]:
        """:meth:`fetch`, reading the other features only where ``feature`` is not.

        The scoring path derives every feature from the state blob, so for a user
        who has one the rest of the row goes unused (:meth:`columns` with
        ``only_without``). One round trip reads ``feature``, every view's
        timestamp and the extra fields; a second reads the whole row of the users
        without ``feature`` who have some view stored (their fallback), and of
        nobody else: a user with nothing stored is a cold start. Fields not read
        are ``None``, as :meth:`columns` reads them. For 100 users this is ~5
        fields each instead of ~20: Redis, hiredis and the decoding each handle
        a quarter as many values.
        """
        async with asyncio.timeout(self.timeout):  # both trips together
            return await self._fetch_preferring(user_ids, feature)

    async def _fetch_preferring(
        self, user_ids: Sequence[str], feature: str
    ) -> list[list[bytes | None]]:
        short, positions = self._short_read(feature)
        data = short.pack(self._key, user_ids)
        replies, _ = await self._round_trip(data, len(user_ids))
        blank: list[bytes | None] = [None] * len(self.fields)
        rows: list[list[bytes | None]] = []
        fallback: list[int] = []
        for i, reply in enumerate(replies):
            row = blank.copy()
            for position, value in zip(positions, reply, strict=True):
                row[position] = value
            rows.append(row)
            # reply[0] is the feature; the views' timestamps follow it.
            if not reply[0] and any(reply[1 : 1 + len(self._ts_indexes)]):
                fallback.append(i)
        if fallback:
            whole = await self.fetch([user_ids[i] for i in fallback])
            for i, row in zip(fallback, whole, strict=True):
                rows[i] = row
        return rows

    def _short_read(self, feature: str) -> tuple[_Hmget, tuple[int, ...]]:
        """The ``HMGET`` of ``feature``, the views' timestamps and the extra fields,
        with each of its fields' position in a whole row."""
        known = self._preferring.get(feature)
        if known is None:
            positions = (
                self._feature_index[feature],
                *self._ts_indexes,
                *self._extra_index.values(),
            )
            known = (_Hmget([self.fields[p] for p in positions]), positions)
            self._preferring[feature] = known
        return known

    async def _round_trip(
        self, data: bytes, hmgets: int, commands: int = 0
    ) -> tuple[list[list[bytes | None]], list[Any]]:
        """Send ``data`` on a pooled connection; read ``hmgets`` replies, then
        ``commands`` more (an error reply kept as its exception)."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command(data, check_health=False)
                replies = await _read_replies(conn, hmgets)
                extra: list[Any] = []
                for _ in range(commands):
                    try:
                        extra.append(await conn.read_response())
                    except ResponseError as exc:
                        extra.append(exc)
            return replies, extra
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def extra(
        self, replies: Sequence[Sequence[bytes | None]], field: bytes
    ) -> list[bytes | None]:
        """One of ``extra_fields`` out of :meth:`fetch`'s replies, per user."""
        index = self._extra_index[field]
        return [reply[index] for reply in replies]

    def columns(
        self,
        replies: Sequence[Sequence[bytes | None]],
        only_without: str | None = None,
    ) -> dict[str, list]:
        """Decode replies into feature columns plus ``<feature>__ts`` columns.

        ``only_without``: a feature that, where stored, makes the others' values
        unneeded (the scoring path derives every feature from the state blob):
        for a user who has it, the other features' values read ``None``, not
        decoded. Their ``__ts`` columns are decoded for everyone.
        """
        out: dict[str, list] = {}
        present: list[bool] | None = None
        if only_without is not None:
            index = self._feature_index[only_without]
            present = [bool(reply[index]) for reply in replies]
        everyone = present is not None and all(present)
        for columns, ts_index in self._plan:
            # One write time per view and user, shared by the view's features.
            stamps = [decode_timestamp(reply[ts_index]) for reply in replies]
            for name, index in columns:
                if everyone and name != only_without:
                    out[name] = [None] * len(replies)
                elif present is None or name == only_without:
                    out[name] = [decode_value(reply[index]) for reply in replies]
                else:
                    out[name] = [
                        None if has else decode_value(reply[index])
                        for reply, has in zip(replies, present, strict=True)
                    ]
                out[name + "__ts"] = stamps
        return out

    async def read_columns(self, user_ids: Sequence[str]) -> dict[str, list]:
        """Stored features of ``user_ids`` as columns (see the module docstring)."""
        return self.columns(await self.fetch(user_ids))


async def _read_replies(conn: Any, n: int) -> list[Any]:
    """The next ``n`` replies on ``conn``; an error reply raises.

    With redis-py's hiredis parser, replies are taken from its reader in one
    loop, reading the socket only when the reader needs more: ``read_response``
    per reply went through two coroutine layers each (~5 us, a fifth of a
    100-user read). Any other parser: one ``read_response`` per reply.
    """
    parser = getattr(conn, "_parser", None)
    if _HiredisParser is None or not isinstance(parser, _HiredisParser):
        return [await conn.read_response() for _ in range(n)]
    replies: list[Any] = []
    while len(replies) < n:
        if not parser._connected:
            raise ConnectionError("connection closed while reading")
        reply = parser._reader.gets()
        if reply is _NOT_ENOUGH_DATA:
            await parser.read_from_socket()
        elif isinstance(reply, Exception):
            raise reply
        else:
            replies.append(reply)
    return replies


class _Hmget:
    """``HMGET <key> <fields>`` for many keys: the fields' RESP encoding computed
    once, a request's commands joined into one write."""

    def __init__(self, fields: Sequence[bytes]) -> None:
        self.fields = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
        self.head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)

    def pack(self, key: Any, user_ids: Sequence[str]) -> bytes:
        """One command per user (``key`` gives each user's hash), concatenated."""
        head, fields = self.head, self.fields
        parts = []
        for uid in user_ids:
            k = key(uid)
            parts.append(b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, fields))
        return b"".join(parts)


def _resp(command: Sequence[bytes | int]) -> bytes:
    """One command in the Redis protocol (RESP2), from bytes and int arguments."""
    args = [a if isinstance(a, bytes) else str(a).encode() for a in command]
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in args
    )
