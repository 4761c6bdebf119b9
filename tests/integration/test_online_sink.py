"""The worker's direct writer stores exactly what Feast's own push stores."""

from __future__ import annotations

from infra import local_stack
from infra.feast_config import apply_repo, feature_store
from infra.settings import Settings
from streams.events import Event, EventType
from streams.feature_catalog import STATE_FEATURE
from streams.online_sink import STREAM_COLUMNS, OnlineWriter, push_online
from streams.processor import online_row
from streams.user_state import UserState, apply_event

T0 = 1_800_000_000.0


def _row(uid: str, n: int) -> dict[str, object]:
    state = UserState()
    for i in range(n):
        etype = EventType.PURCHASE if i == n - 1 else EventType.PRODUCT_VIEW
        event = Event(
            event_id=f"{uid}-{i}",
            user_id=uid,
            event_type=etype,
            ts=(T0 + 60 * i) * 1000,
            price=10.0 + i,
            revenue=5.0 if etype is EventType.PURCHASE else None,
            session_id="s1",
        )
        apply_event(state, event, 600)
    return online_row(uid, state, T0 + 60 * n)


def test_direct_writer_matches_feast_push(stack_settings: Settings) -> None:
    stack = local_stack.current(stack_settings)
    store = feature_store(stack_settings, stack.redis_url)
    apply_repo(store)
    refs = [f"user_stream_features:{n}" for n in (*STREAM_COLUMNS, STATE_FEATURE)]

    push_online(store, [_row("sink-a", 3), _row("sink-b", 1)])
    OnlineWriter(store).write([_row("sink-c", 3), _row("sink-d", 1)])
    got = store.get_online_features(
        features=refs,
        entity_rows=[{"user_id": u} for u in ("sink-a", "sink-b", "sink-c", "sink-d")],
    ).to_dict(include_event_timestamps=True)

    for name, column in got.items():
        if name == "user_id":
            continue
        assert column[0] == column[2], name
        assert column[1] == column[3], name
    assert got["purchases_1h"] == [1.0, 1.0, 1.0, 1.0]
    assert got["last_purchase_ts"][0] == T0 + 120
    assert got["cart_adds_24h"][1] == 0.0
    assert UserState.from_bytes(got[STATE_FEATURE][2]).last_event_ts == T0 + 120
