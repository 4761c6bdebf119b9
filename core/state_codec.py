"""The stored form of a :class:`~core.user_state.UserState`: a binary layout.

A blob is a header, the state's numbers as one run of little-endian doubles, and
its names as JSON (layout below). Every feature read takes the doubles straight
into numpy (:mod:`core.state_block`), many users at once, without building a
Python object per number: that is why the layout is binary. Decoding into a
:class:`UserState` (the stream worker's load) unpacks the same doubles.

Layout (:data:`HEADER`, then ``doubles`` doubles, then the names):

- header: :data:`MAGIC`, then seven uint32 counts: minute, hour and day buckets,
  sessions, categories, recent cart adds, recent purchases;
- :data:`SCALARS` doubles: engagement and its time, the first, last and last
  purchase times, the lifetime facts (``None`` is NaN);
- the minute, the hour and the day buckets, each kind as its keys and then its
  counters (``SLOTS``, ``SLOTS`` and ``DAY_SLOTS`` per bucket), in dict order
  (window sums add buckets in that order);
- each session's ``[first, last]`` times, each category's last time, the cart-add
  times, the purchase times;
- JSON ``[session ids, category names, seen, offsets]`` (the dedupe data empty in
  Feast's copy), in the order of their numbers.

Blobs written before this layout are JSON (the keys below); they still decode.
``m``/``h``/``d`` the minute, hour and day buckets as ``[key, *counters]``
rows, ``ss`` sessions (id -> [first, last]), ``c`` categories, ``ca``/``pu``
recent cart-add and purchase times, ``e`` engagement, ``t`` first/last event and
last purchase times, ``l`` the lifetime facts (absent, or without the last one,
in blobs older than them), ``s``/``o`` the dedupe data (empty in Feast's copy).
"""

from __future__ import annotations

import math
import struct
from array import array
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from core.user_state import UserState


def offsets_of(stored: Any) -> dict[str, int]:
    """Stored per-partition offsets; the old format (one int) reads as none.

    The old single offset did not say which partition it belonged to, so it
    cannot be compared with any; forgetting it is safe: a replay within the
    lateness is still caught by event id, and an older one is refused as late.
    """
    if isinstance(stored, dict):
        return {str(k): int(v) for k, v in stored.items()}
    return {}


# JSON never starts with a NUL byte: the first byte tells the layouts apart.
MAGIC = b"\x00SB2"
HEADER = struct.Struct("<4s7I")
SCALARS = 13
# Counters of a minute or hour bucket, and of a day bucket (core.user_state).
SLOTS, DAY_SLOTS = 8, 6
_NAN = math.nan
_LITTLE = struct.pack("=d", 1.0) == struct.pack("<d", 1.0)


def _or_none(value: float) -> float | None:
    return None if value != value else value  # NaN is the one value unequal to itself


def _int_or_none(value: float) -> int | None:
    return None if value != value else int(value)


def numbers_of(state: UserState) -> bytes:
    """The header and the doubles of ``state``'s blob: all that feature reads use.

    The backfill's snapshots are these alone (a blob without its names, which
    :func:`decode` cannot turn back into a state).
    """
    minutes, hours, days = state.minutes, state.hours, state.days
    nan = _NAN
    numbers = [
        state.engagement,
        nan if state.engagement_ts is None else state.engagement_ts,
        nan if state.first_seen_ts is None else state.first_seen_ts,
        nan if state.last_event_ts is None else state.last_event_ts,
        nan if state.last_purchase_ts is None else state.last_purchase_ts,
        state.orders_lifetime,
        state.revenue_lifetime,
        state.purchase_days_lifetime,
        nan if state.first_purchase_ts is None else state.first_purchase_ts,
        state.purchase_gap_sum,
        state.purchase_gap_sq_sum,
        nan if state.pruned_purchase_day is None else state.pruned_purchase_day,
        nan
        if state.pruned_previous_purchase_day is None
        else state.pruned_previous_purchase_day,
    ]
    # Keys, then counters, per kind of bucket. Gathered in a list and converted
    # once: a third faster than extending an array item by item.
    for buckets in (minutes, hours, days):
        numbers += buckets
        for counters in buckets.values():
            numbers += counters
    for span in state.sessions.values():
        numbers += span
    numbers += state.categories.values()
    numbers += state.cart_adds
    numbers += state.purchases
    doubles = array("d", numbers)
    if not _LITTLE:
        doubles.byteswap()
    head = HEADER.pack(
        MAGIC,
        len(minutes),
        len(hours),
        len(days),
        len(state.sessions),
        len(state.categories),
        len(state.cart_adds),
        len(state.purchases),
    )
    return head + doubles.tobytes()


def encode(state: UserState, with_dedupe: bool) -> bytes:
    """``state`` in the binary layout; the dedupe data only if ``with_dedupe``."""
    names = orjson.dumps(
        [
            list(state.sessions),
            list(state.categories),
            state.seen if with_dedupe else {},
            state.offsets if with_dedupe else {},
        ]
    )
    return numbers_of(state) + names


# Doubles per item of each kind, after the scalars (layout order).
ITEM_DOUBLES = (1 + SLOTS, 1 + SLOTS, 1 + DAY_SLOTS, 2, 1, 1, 1)


def doubles_in(counts: tuple[int, ...]) -> int:
    """How many doubles a blob with these header counts holds."""
    return SCALARS + sum(n * k for n, k in zip(counts, ITEM_DOUBLES, strict=True))


def _buckets(
    values: tuple[float, ...], at: int, n: int, width: int
) -> tuple[dict[int, tuple[float, ...]], int]:
    """``n`` buckets (keys, then ``width`` counters each) from ``values[at:]``."""
    keys = map(int, values[at : at + n])
    counters = iter(values[at + n : at + n + n * width])
    return dict(
        zip(keys, zip(*[counters] * width, strict=True), strict=True)
    ), at + n + n * width


def _decode_binary(cls: type[UserState], blob: bytes) -> UserState:
    _, *counts = HEADER.unpack_from(blob)
    n_min, n_hour, n_day, n_sess, n_cat, n_add, n_pur = counts
    n = doubles_in(tuple(counts))
    end = HEADER.size + 8 * n
    values = struct.unpack_from(f"<{n}d", blob, HEADER.size)
    session_ids, category_names, seen, offsets = orjson.loads(blob[end:])
    (
        engagement,
        engagement_ts,
        first,
        last,
        last_purchase,
        orders,
        revenue,
        purchase_days,
        first_purchase,
        gap_sum,
        gap_sq_sum,
        pruned,
        pruned_previous,
    ) = values[:SCALARS]
    minutes, at = _buckets(values, SCALARS, n_min, SLOTS)
    hours, at = _buckets(values, at, n_hour, SLOTS)
    days, at = _buckets(values, at, n_day, DAY_SLOTS)
    spans = iter(values[at : at + 2 * n_sess])
    sessions = dict(zip(session_ids, zip(spans, spans, strict=True), strict=True))
    at += 2 * n_sess
    categories = dict(zip(category_names, values[at : at + n_cat], strict=True))
    at += n_cat
    state = cls(
        minutes=minutes,
        hours=hours,
        days=days,
        sessions=sessions,
        categories=categories,
        cart_adds=values[at : at + n_add],
        purchases=values[at + n_add : at + n_add + n_pur],
        engagement=engagement,
        engagement_ts=_or_none(engagement_ts),
        first_seen_ts=_or_none(first),
        last_event_ts=_or_none(last),
        last_purchase_ts=_or_none(last_purchase),
        seen=seen,
        offsets=offsets_of(offsets),
    )
    state.orders_lifetime = orders
    state.revenue_lifetime = revenue
    state.purchase_days_lifetime = int(purchase_days)
    state.first_purchase_ts = _or_none(first_purchase)
    state.purchase_gap_sum = gap_sum
    state.purchase_gap_sq_sum = gap_sq_sum
    state.pruned_purchase_day = _int_or_none(pruned)
    state.pruned_previous_purchase_day = _int_or_none(pruned_previous)
    return state


def decode(cls: type[UserState], blob: bytes) -> UserState:
    """The state ``blob`` holds, in either layout (JSON ones of any age).

    Raises:
        ValueError: ``blob`` is not a state (``orjson.JSONDecodeError`` among
            them).
    """
    if blob[:1] == MAGIC[:1]:
        if blob[: len(MAGIC)] != MAGIC:
            raise ValueError(f"unknown state layout {bytes(blob[:4])!r}")
        try:
            return _decode_binary(cls, blob)
        except struct.error as exc:  # cut short
            raise ValueError(f"state blob cut short: {exc}") from exc
    raw: dict[str, Any] = orjson.loads(blob)
    first, last, last_purchase = raw["t"]
    # Rows unpacked into tuple displays: twice as fast as tuple(r[1:]). Every
    # writer stored int keys and SLOTS (DAY_SLOTS) counters, as JSON decodes.
    state = cls(
        minutes={k: (a, b, c, d, e, f, g, h) for k, a, b, c, d, e, f, g, h in raw["m"]},
        hours={k: (a, b, c, d, e, f, g, h) for k, a, b, c, d, e, f, g, h in raw["h"]},
        days={k: (a, b, c, d, e, f) for k, a, b, c, d, e, f in raw["d"]},
        sessions={k: (a, b) for k, (a, b) in raw["ss"].items()},
        categories=raw["c"],
        cart_adds=tuple(raw["ca"]),
        purchases=tuple(raw["pu"]),
        engagement=raw["e"][0],
        engagement_ts=raw["e"][1],
        first_seen_ts=first,
        last_event_ts=last,
        last_purchase_ts=last_purchase,
        seen=raw["s"],
        offsets=offsets_of(raw.get("o")),
    )
    lifetime = raw.get("l")
    if lifetime is not None:
        (
            state.orders_lifetime,
            state.revenue_lifetime,
            state.purchase_days_lifetime,
            state.first_purchase_ts,
            state.purchase_gap_sum,
            state.purchase_gap_sq_sum,
            state.pruned_purchase_day,
        ) = lifetime[:7]
    if lifetime is not None and len(lifetime) > 7:
        state.pruned_previous_purchase_day = lifetime[7]
    else:
        # Imported here, not at the top: that module builds on core.user_state,
        # which builds on this one.
        from core.lifetime_from_buckets import (
            derive_lifetime,
            derive_pruned_previous_day,
        )

        if lifetime is None:
            derive_lifetime(state)
        else:
            state.pruned_previous_purchase_day = derive_pruned_previous_day(state)
    return state
