"""The worker's hand-built Feast fields equal what Feast's own writer would store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from core.store.feast_wire import bytes_value
from core.store.state_store import (
    DEDUPE_FIELD,
    StateLayout,
    _timestamp,
    decode_fields,
    encode_fields,
    save_states,
)
from core.user_state import UserState
from infra import local_stack
from infra.settings import Settings

LAYOUT = StateLayout(project="unit")


@pytest.mark.parametrize(
    "ts", [1_800_000_000.0, 1_800_000_000.123, 1_800_000_000.999999, 1_763_900_000.5]
)
def test_timestamp_field_equals_feasts_encoding(ts: float) -> None:
    state = UserState(last_event_ts=ts)
    want = Timestamp()
    want.FromDatetime(datetime.fromtimestamp(ts, tz=UTC))
    assert encode_fields(LAYOUT, state)[LAYOUT.ts_field] == want.SerializeToString()


def test_fields_decode_to_the_same_state() -> None:
    state = UserState(
        last_event_ts=1_800_000_000.0, seen={"e1": 1.0}, offsets={"t:0": 41}
    )
    state.minutes[30_000_000] = (1.0,) * 8
    state.sessions["s1"] = (1.0, 2.0)
    fields = encode_fields(LAYOUT, state)
    back = decode_fields(fields[LAYOUT.state_field], fields[b"segscore:dedupe"])
    assert back == state


@pytest.mark.parametrize("user_id", ["u-42", "500000007", "ß∂ƒ-user", "a" * 300])
@pytest.mark.parametrize("version", [2, 3])
def test_user_keys_equal_feasts_own_serialization(user_id: str, version: int) -> None:
    layout = StateLayout(project="shop", serialization_version=version)
    assert layout.key(user_id) == layout.feast_key(user_id)


def test_a_stored_value_that_is_not_a_state_raises_instead_of_starting_afresh() -> None:
    # Starting afresh would overwrite the stored data with the next event.
    not_bytes = Value(string_val="hello").SerializeToString()
    with pytest.raises(ValueError, match="not a bytes value"):
        decode_fields(not_bytes, None)
    with pytest.raises(DecodeError):
        decode_fields(b"\x07 garbage", None)


def test_saved_hashes_hold_exactly_the_encoded_fields_and_expire(
    stack_settings: Settings,
) -> None:
    # save_states stages raw HSET/EXPIRE commands (not redis-py's hset helper):
    # what lands in Redis must still be encode_fields' mapping, with the TTL.
    client = redis.Redis.from_url(local_stack.current(stack_settings).redis_url)
    layout = StateLayout(project="encoding-unit", key_ttl_seconds=3_600)
    states = {
        f"enc-{i}": UserState(
            last_event_ts=1_800_000_000.0 + i / 7,
            seen={f"e{i}": 1.0},
            offsets={"t:0": i},
        )
        for i in range(3)
    }
    keys: dict[str, bytes] = {}
    save_states(client, layout, states, keys)
    for uid, state in states.items():
        assert client.hgetall(keys[uid]) == encode_fields(layout, state)
        assert 0 < client.ttl(keys[uid]) <= 3_600
    no_ttl = StateLayout(project="encoding-unit-no-ttl")
    save_states(client, no_ttl, {"enc-0": states["enc-0"]})
    assert client.ttl(no_ttl.key("enc-0")) == -1  # no expiry asked, none set
    assert (
        client.hget(no_ttl.key("enc-0"), DEDUPE_FIELD) == states["enc-0"].dedupe_bytes()
    )


# Lengths whose varint takes 1, 2, 3 and 4 bytes, at and around each boundary.
@pytest.mark.parametrize(
    "size", [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_151, 2_097_152]
)
def test_hand_encoded_bytes_value_equals_the_protobuf_encoding(size: int) -> None:
    blob = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert bytes_value(blob) == Value(bytes_val=blob).SerializeToString()


@pytest.mark.parametrize(
    "seconds", [-62_135_596_800, -1, 0, 1, 127, 128, 2**31, 1_800_000_000, 2**40]
)
@pytest.mark.parametrize("nanos", [0, 1, 127, 128, 1_000, 500_000_000, 999_999_999])
def test_hand_encoded_timestamp_equals_the_protobuf_encoding(
    seconds: int, nanos: int
) -> None:
    want = Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
    assert _timestamp(seconds, nanos) == want
    assert _timestamp(seconds, nanos) == want  # again, from the seconds cache
