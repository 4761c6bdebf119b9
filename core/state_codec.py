"""The stored form of a :class:`~core.user_state.UserState`: compact JSON.

Keys: ``m``/``h``/``d`` the minute, hour and day buckets as ``[key, *counters]``
rows, ``ss`` sessions (id -> [first, last]), ``c`` categories, ``ca``/``pu``
recent cart-add and purchase times, ``e`` engagement, ``t`` first/last event and
last purchase times, ``l`` the lifetime facts (absent, or without the last one,
in blobs older than them), ``s``/``o`` the dedupe data (empty in Feast's copy).

Decoding is the scoring path's largest per-user cost, so it is written for speed
(see :func:`decode`). A binary layout (every float as a double, cut into the
bucket tuples by ``zip``) was measured against it: barely 5% faster to decode,
since building ~300 floats and ~45 tuples costs more than parsing them, for
blobs 20% larger and readers that must be upgraded before writers. Not taken.
"""

from __future__ import annotations

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


def encode(state: UserState, with_dedupe: bool) -> bytes:
    """``state`` as compact JSON, without the dedupe data unless ``with_dedupe``."""
    return orjson.dumps(
        {
            "m": [[k, *v] for k, v in state.minutes.items()],
            "h": [[k, *v] for k, v in state.hours.items()],
            "d": [[k, *v] for k, v in state.days.items()],
            "ss": state.sessions,
            "c": state.categories,
            "ca": state.cart_adds,
            "pu": state.purchases,
            "e": [state.engagement, state.engagement_ts],
            "t": [state.first_seen_ts, state.last_event_ts, state.last_purchase_ts],
            "l": [
                state.orders_lifetime,
                state.revenue_lifetime,
                state.purchase_days_lifetime,
                state.first_purchase_ts,
                state.purchase_gap_sum,
                state.purchase_gap_sq_sum,
                state.pruned_purchase_day,
                state.pruned_previous_purchase_day,
            ],
            "s": state.seen if with_dedupe else {},
            "o": state.offsets if with_dedupe else {},
        }
    )


def decode(cls: type[UserState], blob: bytes) -> UserState:
    """The state ``blob`` holds, including blobs older than its lifetime facts.

    Raises:
        ValueError: ``blob`` is not a state (``orjson.JSONDecodeError`` among them).
    """
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
