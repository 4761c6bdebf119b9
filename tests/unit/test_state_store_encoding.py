"""The worker's hand-built Feast fields equal what Feast's own writer would store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from streams.state_store import StateLayout, decode_fields, encode_fields
from streams.user_state import UserState

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
