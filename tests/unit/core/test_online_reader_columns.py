"""The online read's columns, and what the scoring path may leave undecoded."""

from __future__ import annotations

import struct

from google.protobuf.timestamp_pb2 import Timestamp

from core.feature_catalog import HISTORY_NAMES, STATE_FEATURE
from core.scoring import ScoringModels, score
from core.store.feast_wire import bytes_value
from core.store.online_reader import OnlineReader, ViewFields
from core.store.state_store import StateLayout
from core.user_state import UserState
from tests.support.model_bundles import tiny_bundles

AS_OF = 1_800_000_000.0
STREAM = ViewFields("user_stream", (STATE_FEATURE,), (b"s",), b"_ts:user_stream")
HISTORY = ViewFields(
    "user_history",
    HISTORY_NAMES,
    tuple(f"h{i}".encode() for i in range(len(HISTORY_NAMES))),
    b"_ts:user_history",
)


def _double(value: float) -> bytes:
    return b"\x29" + struct.pack("<d", value)


def _stamp(seconds: int) -> bytes:
    return Timestamp(seconds=seconds).SerializeToString()


def _reader() -> OnlineReader:
    layout = StateLayout(project="unit", direct_key=True)
    return OnlineReader(None, layout, [STREAM, HISTORY])  # type: ignore[arg-type]


def _replies() -> list[list[bytes | None]]:
    state = UserState(last_event_ts=AS_OF - 60, first_seen_ts=AS_OF - 86_400)
    blob = bytes_value(state.to_bytes(with_dedupe=False))
    history = [_double(float(i + 1)) for i in range(len(HISTORY_NAMES))]
    # Field order: the stream view (state, its ts), then history (values, ts).
    with_state = [blob, _stamp(1_799_999_000), *history, _stamp(1_799_000_000)]
    history_only = [None, None, *history, _stamp(1_799_000_000)]
    nothing: list[bytes | None] = [None] * len(with_state)
    return [with_state, history_only, nothing]


def test_history_values_of_users_with_a_state_are_left_undecoded() -> None:
    reader, replies = _reader(), _replies()
    full = reader.columns(replies)
    lean = reader.columns(replies, only_without=STATE_FEATURE)
    assert lean[STATE_FEATURE] == full[STATE_FEATURE]
    assert full[STATE_FEATURE][0] and full[STATE_FEATURE][1] is None
    for i, name in enumerate(HISTORY_NAMES):
        assert full[name] == [float(i + 1), float(i + 1), None]
        assert lean[name] == [None, float(i + 1), None]
        # Write times are read for everyone: feature ages use them.
        assert lean[name + "__ts"] == full[name + "__ts"] == [1.7990e9, 1.7990e9, None]


def test_scores_are_the_same_from_the_lean_columns() -> None:
    models = ScoringModels.from_bundles(*tiny_bundles())
    reader, replies = _reader(), _replies()
    ids = ["with-state", "history-only", "unknown"]
    full = score(ids, reader.columns(replies), AS_OF, models, top_k=50)
    lean = score(
        ids,
        reader.columns(replies, only_without=STATE_FEATURE),
        AS_OF,
        models,
        top_k=50,
    )
    assert lean == full
    # Not vacuous: the stored history row would differ from the state's own.
    assert full["scores"][0] != full["scores"][1]
