"""Per-user feature state, kept in the Feast online store's own Redis hash.

Each user has one Redis hash in Feast's layout (key = serialized entity key +
project; field = murmur3 of ``view:feature``; values are Feast ``Value`` protos).
The stream view's online row is the ``state`` blob (event-time buckets, see
:mod:`core.user_state`) plus Feast's ``_ts`` field, so ``get_online_features``
and ``feast serve`` read it like any pushed feature. Next to it, in a field Feast
never asks for, lies the worker's replay-detection data (recent event ids and the
highest source offset applied).

Why one hash: the worker writes a user's whole state with one ``HSET``, so the
readable state and the dedupe data can never disagree after a crash, and a batch
costs one pipelined round trip. The feature columns are not materialised online:
every window depends on *when* it is read, so readers derive them from the state
at the instant of the read (:func:`core.feature_math.stream_features`); values
frozen at write time would be wrong for any user who has since gone idle.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import orjson
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from core.feature_catalog import STATE_FEATURE
from core.names import JOIN_KEY, STREAM_VIEW
from core.rules.state import Membership
from core.store.feast_wire import (
    bytes_value,
    field_hash,
    parse_value,
    read_bytes_value,
    varint,
)
from core.store.guarded_write import WriteGuard, write_guarded
from core.user_state import UserState

if TYPE_CHECKING:
    from feast import FeatureStore

DEDUPE_FIELD = b"segscore:dedupe"
# The user's rule memberships (JSON rule -> [since, until]), beside the state in
# the same hash so /score reads them in its one HMGET; written by the worker.
MEMBERS_FIELD = b"segscore:members"
# Records written with the state but not produced yet (live segment changes and
# fired triggers: JSON ``[changes, triggers]``), beside the state in the same
# ``HSET``. A field of its own so that emptying it once the broker has them is an
# ``HDEL``, not a rewrite of the whole state (see streams.outbox).
OUTBOX_FIELD = b"segscore:outbox"


@dataclass(frozen=True)
class StateLayout:
    """Where a user's state lives: Feast's key and field names for the stream view."""

    project: str
    serialization_version: int = 3
    key_ttl_seconds: int | None = None
    view: str = STREAM_VIEW
    # Whether the direct key build agrees with Feast's (see _key), when already
    # checked where Feast was loaded; None: checked on first use.
    direct_key: bool | None = field(default=None, compare=False)

    @classmethod
    def of(cls, store: FeatureStore) -> StateLayout:
        """The layout the Feast store ``store`` reads (the key build checked)."""
        config = store.config
        layout = cls(
            project=config.project,
            serialization_version=config.entity_key_serialization_version,
            key_ttl_seconds=getattr(config.online_store, "key_ttl_seconds", None),
        )
        return replace(layout, direct_key=layout.direct_key_agrees())

    @cached_property
    def state_field(self) -> bytes:
        """The hash field of the ``state`` feature."""
        return field_hash(f"{self.view}:{STATE_FEATURE}")

    @cached_property
    def ts_field(self) -> bytes:
        """The hash field of the view's event timestamp."""
        return f"_ts:{self.view}".encode()

    def key(self, user_id: str) -> bytes:
        """The Redis key of one user's hash."""
        return self._key(user_id)

    def feast_key(self, user_id: str) -> bytes:
        """The key as Feast's own function builds it (an ``EntityKey`` proto)."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        entity = EntityKey(
            join_keys=[JOIN_KEY], entity_values=[Value(string_val=user_id)]
        )
        return _redis_key(self.project, entity, self.serialization_version)

    @cached_property
    def _key(self) -> Callable[[str], bytes]:
        """Feast's key without a proto per user, when it provably agrees.

        Feast's v3 serialization of one string join key is a constant prefix (key
        count, key name), then ``<type><length><utf-8 id>``, then the project.
        Building that directly is checked against :meth:`feast_key` on a few ids
        and used only if it agrees; the proto path cost the worker and every
        scoring request a few microseconds per user.
        """
        agrees = self.direct_key
        if agrees is None:
            agrees = self.direct_key_agrees()
        return self._direct_key if agrees else self.feast_key

    def direct_key_agrees(self) -> bool:
        """Whether the direct key build equals Feast's on a few ids (imports Feast)."""
        probes = ("u1", "", "ünïcødé-✓", "x" * 128)
        return self.serialization_version == 3 and all(
            self._direct_key(p) == self.feast_key(p) for p in probes
        )

    @cached_property
    def _direct_key(self) -> Callable[[str], bytes]:
        """Feast's v3 key of one string join key, built without a proto."""
        string_type = 2  # feast.protos ValueType.STRING
        join_key = JOIN_KEY.encode()
        prefix = struct.pack("<III", 1, string_type, len(join_key)) + join_key
        project = self.project.encode()
        head = struct.Struct("<II")

        def key(user_id: str) -> bytes:
            raw = user_id.encode()
            return b"".join((prefix, head.pack(string_type, len(raw)), raw, project))

        return key


def encode_fields(layout: StateLayout, state: UserState) -> dict[bytes, bytes]:
    """The hash fields holding ``state`` (it must have seen at least one event)."""
    state_value, ts_value, dedupe = _field_values(state)
    fields = {
        layout.state_field: state_value,
        layout.ts_field: ts_value,
        DEDUPE_FIELD: dedupe,
    }
    outbox = outbox_value(state)
    if outbox is not None:
        fields[OUTBOX_FIELD] = outbox
    return fields


def _field_values(state: UserState) -> tuple[bytes, bytes, bytes]:
    """The values of the state, timestamp and dedupe fields, in that order."""
    last = state.last_event_ts
    assert last is not None
    # Seconds and nanos directly: Timestamp.FromDatetime was a tenth of the
    # worker's time in a profile.
    # Rounded to microseconds as datetime.fromtimestamp (Feast's path) rounds.
    seconds = math.floor(last)
    micros = round((last - seconds) * 1e6)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return (
        bytes_value(state.to_bytes(with_dedupe=False)),
        _timestamp(seconds, micros * 1000),
        state.dedupe_bytes(),
    )


# The two protobuf messages of a write, encoded by hand (tests/unit/core/
# test_state_store_encoding.py proves the bytes equal the library's): building a
# message per field cost twice as much, and this runs once per user written.
@lru_cache(maxsize=4096)
def _seconds_field(seconds: int) -> bytes:
    """A ``Timestamp``'s field 1 (int64 varint); consecutive writes share it."""
    return b"\x08" + varint(seconds)


def _timestamp(seconds: int, nanos: int) -> bytes:
    """``Timestamp(seconds=..., nanos=...).SerializeToString()``.

    Proto3 leaves out fields that are zero; a negative ``seconds`` (a time before
    1970, which no accepted event has) takes the library's path.
    """
    if seconds <= 0:
        return Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
    if not nanos:
        return _seconds_field(seconds)
    return _seconds_field(seconds) + b"\x10" + varint(nanos)


def outbox_value(state: UserState) -> bytes | None:
    """The :data:`OUTBOX_FIELD` value of ``state``; None when nothing is pending."""
    changes, fired = state.segment_outbox, state.rules.outbox
    if not (changes or fired):
        return None
    return orjson.dumps([changes, fired])


def decode_fields(
    state_value: bytes | None, dedupe: bytes | None, outbox: bytes | None = None
) -> UserState:
    """Inverse of :func:`encode_fields`; a user never seen gets a fresh state.

    ``outbox``: the :data:`OUTBOX_FIELD` value, whose records join any an older
    worker kept in the dedupe data.

    Raises:
        ValueError: The stored fields are not a state (the worker then sends the
            user's events to the DLQ rather than overwrite what is stored).
        google.protobuf.message.DecodeError: Likewise, for an unreadable field.
    """
    blob = None
    if state_value:
        blob = read_bytes_value(state_value)
        if blob is None:
            value = parse_value(state_value)
            if value.WhichOneof("val") != "bytes_val":
                # Silently starting afresh would overwrite what is stored.
                raise ValueError("the stored state is not a bytes value")
            blob = value.bytes_val
    state = UserState.from_bytes(blob, dedupe)
    if outbox:
        changes, fired = orjson.loads(outbox)
        state.segment_outbox = _merged(state.segment_outbox, changes)
        state.rules.outbox = _merged(state.rules.outbox, fired)
    return state


def _merged(
    kept: tuple[dict[str, Any], ...], stored: list[dict[str, Any]]
) -> tuple[dict[str, Any], ...]:
    """Records of both places, each id once (the field's copy wins)."""
    ids = {record.get("id") for record in stored}
    return (*(r for r in kept if r.get("id") not in ids), *stored)


def load_states(
    client: redis.Redis,
    layout: StateLayout,
    user_ids: Iterable[str],
    keys: dict[str, bytes] | None = None,
) -> dict[str, UserState]:
    """States of ``user_ids`` (one pipelined round trip); unknown users start fresh.

    ``keys`` maps user ids to Redis keys already computed (a cache); it is filled in.
    """
    ids = list(user_ids)
    if not ids:
        return {}
    keys = {} if keys is None else keys
    fields = (layout.state_field, DEDUPE_FIELD, OUTBOX_FIELD)
    pipe = client.pipeline(transaction=False)
    for uid in ids:
        key = keys.get(uid)
        if key is None:
            key = keys[uid] = layout.key(uid)
        pipe.hmget(key, fields)
    replies = pipe.execute()
    return {
        uid: decode_fields(state, dedupe, outbox)
        for uid, (state, dedupe, outbox) in zip(ids, replies, strict=True)
    }


def save_states(
    client: redis.Redis,
    layout: StateLayout,
    states: dict[str, UserState],
    keys: dict[str, bytes] | None = None,
    *,
    first: Sequence[Sequence[Any]] = (),
    last: Sequence[Sequence[Any]] = (),
    guard: WriteGuard | None = None,
) -> None:
    """Write states back, one ``HSET`` per user, in one pipelined round trip.

    ``first`` and ``last`` are raw commands sent in the same round trip before
    and after the states' (a pipeline runs them in order on one connection):
    what must exist whenever a state does, such as a timer's index entry, goes
    first; what may only go once the state is written goes last.
    A user with rule state also gets :data:`MEMBERS_FIELD` (their memberships),
    one with records not produced yet :data:`OUTBOX_FIELD` (emptying that field
    is the caller's: an ``HDEL`` once the broker has them).

    With a ``guard``, all of it (``first``, the states, ``last``) is written in
    transactions that run only while the guard's fences allow them
    (:func:`core.store.guarded_write.write_guarded`).

    Raises:
        WriteFenced: The guard refused the write (nothing of it was written
            unless the fence rose in the middle of it; see that module).
    """
    if not (states or first or last):
        return
    keys = {} if keys is None else keys
    ttl = layout.key_ttl_seconds
    state_field, ts_field = layout.state_field, layout.ts_field
    pipe = client.pipeline(transaction=False) if guard is None else None
    commands: list[tuple[Any, ...]] = []
    stage: Callable[..., Any]
    if pipe is not None:
        # Commands staged as raw arguments, not through ``pipe.hset(mapping=...)``:
        # its layers, and a str command name (which redis-py re-encodes and
        # splits for every command), cost ~3 us of the ~25 us per user written.
        # Errors still raise from execute(); the replies are not used, so the
        # reply callbacks (which a bytes name skips) would change nothing.
        stage = pipe.pipeline_execute_command
    else:

        def stage(*command: Any) -> None:
            commands.append(command)

    for command in first:
        stage(*command)
    for uid, state in states.items():
        key = keys.get(uid)
        if key is None:
            key = keys[uid] = layout.key(uid)
        state_value, ts_value, dedupe = _field_values(state)
        fields = (state_field, state_value, ts_field, ts_value, DEDUPE_FIELD, dedupe)
        extra: tuple[bytes, ...] = ()
        if not state.rules.empty():
            extra = (MEMBERS_FIELD, members_value(state))
        outbox = outbox_value(state)
        if outbox is not None:
            extra = (*extra, OUTBOX_FIELD, outbox)
        stage(b"HSET", key, *fields, *extra)
        if ttl:
            stage(b"EXPIRE", key, ttl)
    for command in last:
        stage(*command)
    if pipe is not None:
        pipe.execute()
    else:
        assert guard is not None
        write_guarded(client, guard, commands)


def members_value(state: UserState) -> bytes:
    """The :data:`MEMBERS_FIELD` value: rule -> ``[since, until]`` (until: null)."""
    members = state.rules.members
    return orjson.dumps({rule: [m.since, m.until] for rule, m in members.items()})


def decode_members(raw: bytes | None) -> dict[str, Membership]:
    """Inverse of :func:`members_value`, for readers (the scoring service).

    Lenient on purpose: memberships are shown beside a score, and a field that
    cannot be read (or one entry of it) must not fail the score. An unreadable
    field reads as no memberships, an unreadable entry is left out.
    """
    return {
        rule: Membership(float(since), None if until is None else float(until))
        for rule, (since, until) in decode_member_spans(raw).items()
    }


def decode_member_spans(raw: bytes | None) -> dict[str, tuple[float, float | None]]:
    """:func:`decode_members` as ``(since, until)`` pairs, for the hot path.

    /score runs it for every user who is in a rule: a ``Membership`` per entry
    cost more than the rest of the decoding.
    """
    if not raw:
        return {}
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if type(decoded) is not dict:
        return {}
    spans: dict[str, tuple[float, float | None]] = {}
    for rule, span in decoded.items():
        if type(span) is not list or len(span) != 2:
            continue
        since, until = span
        # Exact types: bool is an int to Python, but never a time.
        if type(since) not in _NUMBERS or not math.isfinite(since):
            continue
        if until is None:
            spans[rule] = (since, None)
        elif type(until) in _NUMBERS and math.isfinite(until):
            spans[rule] = (since, until)
    return spans


_NUMBERS = (int, float)


# Replaces a user's hash fields only when the stored state is not newer: its
# event-time stamp (Feast's ``_ts`` Timestamp proto, decoded here so the worker's
# hot path writes nothing extra) is at most the incoming one. One script call per
# user, so the check and the write are atomic against a worker's HSET.
# KEYS[1]: the hash. ARGV: ts field, incoming ts value, TTL (0: none), then field,
# value pairs. Returns 1 written, 0 kept (stored is newer), -1 kept (unreadable).
_SEED_IF_NOT_NEWER = """
local function stamp(raw)
  local seconds, nanos, pos = 0, 0, 1
  while pos <= #raw do
    local tag = string.byte(raw, pos)
    pos = pos + 1
    local value, scale, byte = 0, 1, 128
    while byte >= 128 do
      if pos > #raw then return nil end
      byte = string.byte(raw, pos)
      value = value + (byte % 128) * scale
      scale = scale * 128
      pos = pos + 1
    end
    if tag == 8 then seconds = value
    elseif tag == 16 then nanos = value
    else return nil end
  end
  return seconds, nanos
end
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored and #stored > 0 then
  local s, n = stamp(stored)
  local is, inn = stamp(ARGV[2])
  if s == nil or is == nil then return -1 end
  if s > is or (s == is and n > inn) then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


@dataclass(frozen=True)
class SeedOutcome:
    """What a conditional write did: users written, and users left as they were."""

    written: list[str]
    kept_newer: list[str]
    kept_unreadable: list[str]


def save_states_unless_newer(
    client: redis.Redis,
    layout: StateLayout,
    states: dict[str, UserState],
) -> SeedOutcome:
    """Write states, except over a stored state with a later event time.

    For seeding from a backfill while a worker may already run: a user whose
    stored state has seen an event newer than the incoming state's last one keeps
    it (the worker has moved past the backfill's cut-off), as does a stored stamp
    that cannot be read. The comparison and the write happen in one Lua script
    per user, in one pipelined round trip.
    """
    if not states:
        return SeedOutcome([], [], [])
    script = client.register_script(_SEED_IF_NOT_NEWER)
    ttl = layout.key_ttl_seconds or 0
    pipe = client.pipeline(transaction=False)
    users = list(states)
    for uid in users:
        state_value, ts_value, dedupe = _field_values(states[uid])
        script(
            keys=[layout.key(uid)],
            args=[
                layout.ts_field,
                ts_value,
                ttl,
                layout.state_field,
                state_value,
                layout.ts_field,
                ts_value,
                DEDUPE_FIELD,
                dedupe,
            ],
            client=pipe,
        )
    replies = pipe.execute()
    by_reply: dict[int, list[str]] = {1: [], 0: [], -1: []}
    for uid, reply in zip(users, replies, strict=True):
        by_reply[int(reply)].append(uid)
    return SeedOutcome(
        written=by_reply[1], kept_newer=by_reply[0], kept_unreadable=by_reply[-1]
    )
