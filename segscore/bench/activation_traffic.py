"""Traffic of `segscore bench activation`: crafted causes, paced producer, reader.

The live phase offers a fixed rate of events whose event time is their send time.
Most are background traffic of users the backlog already made (the mix of
:class:`~segscore.bench.stream_events.EventFactory`); a share is crafted so that
the worker must answer with a known record, each on a user never seen before:

``new``
    One ``page_view``: the user's first placement, a segment change with
    ``from`` null caused by that event.
``cart``
    One ``add_to_cart`` and nothing after it: the ``cart_abandoned`` timer fires
    ``cart_after`` seconds of event time later, caused by that event (and the
    first placement, as for ``new``). Only sent while the timer falls due with
    traffic still flowing: a partition's clock is its newest event time, so a
    timer due after the traffic stops waits for the idle clock instead.
``repeat``
    Three views of one product, ``REPEAT_GAP_SECONDS`` apart: ``repeat_interest``
    fires on the third (and the first placement, caused by whichever of the
    three was the user's latest in the batch that placed them).

The producer keeps every event's send time by ``event_id``; a reader *process*
(apart from the producer, so neither starves the other of the interpreter) reads
the ``segment-changes`` and ``triggers`` topics from the beginning and stamps each
record with the time it was read. Nothing here reads the broker's end offsets:
the bundled tansu reports them behind records it has acknowledged.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from core.events import Event, EventType
from segscore.bench.stream_events import EventFactory, send_paced
from segscore.simulator import CATEGORIES

# Crafted scenarios per second, as shares of the offered rate (at least one each).
NEW_SHARE = 0.01
CART_SHARE = 0.005
REPEAT_SHARE = 0.002
REPEAT_GAP_SECONDS = 0.2
# A cart's timer must fall due at least this long before the last send.
CART_MARGIN_SECONDS = 2.0
# The reader says "quiet" once it has read nothing for this long.
QUIET_SECONDS = 1.0

RULES_TEMPLATE = """\
# segscore bench activation: the shipped rules, with a cart timer short enough
# to fire within the run.
rules:
  - name: cart_abandoned
    on: add_to_cart
    after: {cart_after}s
    unless: [purchase]
    cooldown: 6h

  - name: repeat_interest
    on: product_view
    per: product_id
    count: 3
    within: 24h
    cooldown: 24h

  - name: hot_lead
    when: propensity >= 0.5 and events_1h >= 3
    lasts: 30m
    cooldown: 12h

  - name: lapsing
    on: purchase
    when: purchase_days_lifetime >= 3 and purchase_gap_mean_days <= 30
    after: 2 * purchase_gap_mean_days * day
    unless: [purchase]
    cooldown: 30d
"""


def rules_text(cart_after: float) -> str:
    """The bench's rules file: the four shipped rules, the cart timer shortened."""
    return RULES_TEMPLATE.format(cart_after=f"{cart_after:g}")


@dataclass(frozen=True)
class Expected:
    """A record the worker owes: ``key`` kind, for ``user_id``, caused by one of
    ``causes``. ``kind`` is ``first_placement`` or a rule name."""

    kind: str
    user_id: str
    causes: frozenset[str]


@dataclass
class LivePlan:
    """The live phase's events in send order (``ts`` is set when sent)."""

    payloads: list[dict[str, Any]]
    expected: list[Expected]
    scenarios: dict[str, int] = field(default_factory=dict)


def _payload(
    event_id: str, user: str, kind: EventType, product: int | None
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if product is not None:
        extra = {
            "product_id": f"p{product:05d}",
            "category": CATEGORIES[product % len(CATEGORIES)],
            "price": 19.9,
        }
    event = Event.model_construct(
        event_id=event_id,
        user_id=user,
        event_type=kind,
        ts=0.0,
        session_id=f"s-{user}",
        device="mobile",
        channel="web",
        country="DE",
        **extra,
    )
    return orjson.loads(event.to_json())


def plan_live(
    rate: int,
    duration: float,
    known_users: Sequence[str],
    cart_after: float,
    seed: int,
    tag: str = "",
) -> LivePlan:
    """Background events of ``known_users`` with crafted scenarios laid in.

    Each second gets ``rate`` * the scenario's share of each scenario (at least
    one), in free slots; a cart only while its timer falls due before the
    traffic ends (:data:`CART_MARGIN_SECONDS`). The crafted users are
    ``<tag>new...``, ``<tag>cart...`` and ``<tag>rep...``: a plan with another
    tag has users nobody has seen yet, as a repeat of the live phase needs.
    """
    total = max(1, int(rate * duration))
    rng = np.random.default_rng(seed)
    users = [known_users[i] for i in rng.integers(0, len(known_users), size=total)]
    payloads = [
        orjson.loads(e.to_json())
        for e in EventFactory(seed + 1).batch(users, [0.0] * total)
    ]
    taken: set[int] = set()
    expected: list[Expected] = []
    counts = {"new": 0, "cart": 0, "repeat": 0}
    gap = max(1, round(rate * REPEAT_GAP_SECONDS))

    def free_slot(lo: int, hi: int, span: int = 0) -> int | None:
        """A random slot in [lo, hi) with ``span`` and ``2 * span`` after it free."""
        for _ in range(50):
            if hi <= lo:
                return None
            slot = int(rng.integers(lo, hi))
            wanted = {slot, slot + span, slot + 2 * span}
            if max(wanted) < total and not wanted & taken:
                taken.update(wanted)
                return slot
        return None

    def put(slot: int, user: str, kind: EventType, product: int | None) -> str:
        event_id = f"{user}-{slot}"
        payloads[slot] = _payload(event_id, user, kind, product)
        return event_id

    cart_until = max(0.0, duration - cart_after - CART_MARGIN_SECONDS)
    for second in range(int(np.ceil(duration))):
        lo, hi = second * rate, min(total, (second + 1) * rate)
        for _ in range(max(1, round(rate * NEW_SHARE))):
            slot = free_slot(lo, hi)
            if slot is not None:
                user = f"{tag}new{counts['new']:06d}"
                cause = put(slot, user, EventType.PAGE_VIEW, None)
                expected.append(Expected("first_placement", user, frozenset([cause])))
                counts["new"] += 1
        if second + 1 <= cart_until:
            for _ in range(max(1, round(rate * CART_SHARE))):
                slot = free_slot(lo, hi)
                if slot is not None:
                    user = f"{tag}cart{counts['cart']:06d}"
                    cause = put(slot, user, EventType.ADD_TO_CART, 7)
                    one = frozenset([cause])
                    expected.append(Expected("cart_abandoned", user, one))
                    expected.append(Expected("first_placement", user, one))
                    counts["cart"] += 1
        for _ in range(max(1, round(rate * REPEAT_SHARE))):
            slot = free_slot(lo, hi, gap)
            if slot is not None:
                user = f"{tag}rep{counts['repeat']:06d}"
                product = int(rng.integers(0, 5000))
                views = [
                    put(slot + k * gap, user, EventType.PRODUCT_VIEW, product)
                    for k in range(3)
                ]
                expected.append(
                    Expected("repeat_interest", user, frozenset(views[-1:]))
                )
                expected.append(Expected("first_placement", user, frozenset(views)))
                counts["repeat"] += 1
    return LivePlan(payloads, expected, counts)


@dataclass
class Sent:
    """What the paced producer did: each event's send time (epoch s) by id."""

    sent_at: dict[str, float]
    first: float
    last: float

    @property
    def rate(self) -> float:
        """Events per second achieved."""
        return len(self.sent_at) / max(self.last - self.first, 1e-9)


async def paced_send(broker: str, topic: str, plan: LivePlan, rate: int) -> Sent:
    """Send the plan at ``rate`` events/s, each timed (event time) at its send."""
    sent_at: dict[str, float] = {}

    def note(_: int, payload: dict[str, Any], now: float) -> None:
        sent_at[payload["event_id"]] = now

    t0, last = await send_paced(broker, topic, plan.payloads, rate, note)
    return Sent(sent_at, t0, last)


def activation_reader(
    broker: str,
    topics: list[str],
    partitions: int,
    fetch_wait_ms: int,
    inbox: Any,
    outbox: Any,
) -> None:
    """Child process: read ``topics`` from the beginning; report each record read.

    Puts ``{"ready": True}`` once assigned, ``{"records": [...]}`` per fetch (each
    row: topic, the record's fields the bench needs, and ``read`` = time.time()
    when the fetch returned), ``{"quiet": True}`` the first time nothing came for
    :data:`QUIET_SECONDS`, and ``{"done": True}`` after ``None`` in ``inbox``.
    """
    asyncio.run(_read(broker, topics, partitions, fetch_wait_ms, inbox, outbox))


async def _read(
    broker: str,
    topics: list[str],
    partitions: int,
    fetch_wait_ms: int,
    inbox: Any,
    outbox: Any,
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    try:
        consumer.assign(
            [TopicPartition(t, p) for t in topics for p in range(partitions)]
        )
        await consumer.seek_to_beginning()
        outbox.put({"ready": True})
        heard = time.time()
        said_quiet = False
        while True:
            try:
                if inbox.get_nowait() is None:
                    break
            except queue.Empty:
                pass
            fetched = await consumer.getmany(timeout_ms=100)
            read = time.time()
            rows = []
            for tp, records in fetched.items():
                for record in records:
                    body = orjson.loads(record.value)
                    rows.append(
                        {
                            "topic": tp.topic,
                            "id": body.get("id"),
                            "user_id": body.get("user_id"),
                            "caused_by": body.get("caused_by"),
                            "rule": body.get("rule"),
                            "kind": body.get("kind"),
                            "at_ts": body.get("at_ts"),
                            "first": "from" in body and body["from"] is None,
                            "read": read,
                        }
                    )
            if rows:
                outbox.put({"records": rows})
                heard = read
            elif not said_quiet and read - heard >= QUIET_SECONDS:
                outbox.put({"quiet": True})
                said_quiet = True
    finally:
        await consumer.stop()
    outbox.put({"done": True})


class Matcher:
    """Which expected records have been read (incremental, records deduplicated)."""

    def __init__(self, expected: Sequence[Expected], changes_topic: str) -> None:
        self.expected = list(expected)
        self.changes_topic = changes_topic
        self.records: dict[tuple[str, str], dict[str, Any]] = {}  # first read wins
        self.duplicates = 0
        self._seen: set[tuple[str, str, str]] = set()

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Take a fetch's rows from the reader."""
        for row in rows:
            key = (row["topic"], str(row["id"]))
            if key in self.records:
                self.duplicates += 1  # at-least-once: a resend has the same id
                continue
            self.records[key] = row
            if row["topic"] == self.changes_topic:
                if row["first"]:
                    self._seen.add(
                        ("first_placement", row["user_id"], row["caused_by"])
                    )
            else:
                self._seen.add((row["rule"], row["user_id"], row["caused_by"]))

    def missing(self) -> list[Expected]:
        """The expected records not read yet."""
        return [
            e
            for e in self.expected
            if not any((e.kind, e.user_id, c) in self._seen for c in e.causes)
        ]
