"""Outboxes produced in the background, emptied by the worker's next write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from core.store.state_store import OUTBOX_FIELD
from core.user_state import UserState
from infra.settings import Settings
from streams.outbox import Outbox, drain
from streams.triggers import Triggers
from tests.support.worker_fakes import LAYOUT, batch_of, event_json, make_rig

RULES = """
rules:
  - name: carted
    on: add_to_cart
    after: 1m
"""


def _state(*ids: str, fired: tuple[str, ...] = ()) -> UserState:
    state = UserState()
    state.segment_outbox = tuple({"id": i} for i in ids)
    state.rules.outbox = tuple({"id": i} for i in fired)
    return state


def test_a_record_is_taken_once_until_acknowledged_then_never_again() -> None:
    outbox = Outbox()
    states = {"u": _state("u:1", fired=("u:r1",))}
    first = outbox.take_new(states)
    assert [(p.id, p.trigger) for p in first] == [("u:1", False), ("u:r1", True)]
    # In flight: a later batch touching the user does not send them again.
    states["u"].segment_outbox += ({"id": "u:2"},)
    assert [p.id for p in outbox.take_new(states)] == ["u:2"]
    outbox.acknowledged(first)
    # Acknowledged but still in the state (not drained yet): not sent again.
    assert outbox.take_new(states) == []
    assert outbox.take_acked() == {"u": {"u:1", "u:r1"}}
    assert not outbox.has_acked()


def test_draining_empties_or_rewrites_the_field_and_skips_unknown_users() -> None:
    done = _state("a:1")
    left = _state("b:1", "b:2")
    cached = _state(fired=("c:r1",))
    peeked = {"c": (cached, b"key-c")}
    commands = drain(
        {"a": {"a:1"}, "b": {"b:1"}, "c": {"c:r1"}, "gone": {"gone:1"}},
        {"a": done, "b": left},
        peeked.get,
        lambda user: f"key-{user}".encode(),
    )
    assert done.segment_outbox == () and cached.rules.outbox == ()
    assert left.segment_outbox == ({"id": "b:2"},)
    assert commands == [
        (b"HDEL", b"key-a", OUTBOX_FIELD),
        (b"HSET", b"key-b", OUTBOX_FIELD, orjson.dumps([[{"id": "b:2"}], []])),
        (b"HDEL", b"key-c", OUTBOX_FIELD),
    ]  # a user neither written nor cached is left alone: "gone" has no command


def test_restored_acknowledgements_are_drained_by_the_next_write() -> None:
    outbox = Outbox()
    outbox.acknowledged(outbox.take_new({"u": _state("u:1")}))
    taken = outbox.take_acked()
    outbox.restore(taken)  # the write that was to empty it failed
    assert outbox.take_acked() == {"u": {"u:1"}}


class _HeldTopic:
    """A topic whose acknowledgements wait until released."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.futures: list[asyncio.Future[None]] = []

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append(orjson.loads(value))
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def release(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


def test_a_batch_does_not_wait_for_its_records_and_the_field_goes_once_acked(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path)
    engine = rig.engine
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    engine.triggers = Triggers(Settings(home=tmp_path, rules_path=rules))
    topic = _HeldTopic()
    engine.triggers_topic = topic
    key = LAYOUT.key("ann")

    async def run() -> None:
        carted = batch_of(event_json("a1", "ann", 3600, "add_to_cart"))
        await engine.handle(carted, rig.dlq)
        # Another user's event moves the partition's clock past the timer.
        later = batch_of(event_json("b1", "bob", 60), first_offset=1)
        await engine.handle(later, rig.dlq)
        engine._next_tick = 0.0
        await engine.fire_timers()
        await asyncio.sleep(0.01)  # the delivery's task runs
        # fire_timers returned with the record sent but not acknowledged: the
        # stored outbox still holds it, and settling waits for the broker.
        assert [r["caused_by"] for r in topic.sent] == ["a1"]
        assert OUTBOX_FIELD in rig.redis.data[key]
        settling = asyncio.ensure_future(engine.settle())
        await asyncio.sleep(0.01)
        assert not settling.done()
        topic.release()
        await settling
        assert OUTBOX_FIELD in rig.redis.data[key], "emptied by the next write"
        engine._next_tick = 0.0
        await engine.fire_timers()
        assert OUTBOX_FIELD not in rig.redis.data[key]
        # A later batch of the same user does not send the record again.
        await engine.handle(
            batch_of(event_json("a2", "ann", 30), first_offset=2), rig.dlq
        )
        await engine.settle()

    asyncio.run(run())
    assert [r["caused_by"] for r in topic.sent] == ["a1"]
    assert engine.counts["triggers"] == 1
    assert rig.state("ann").rules.outbox == ()
