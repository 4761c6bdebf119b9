"""State blobs in the JSON layout written before the binary one (core.state_codec).

Stores may still hold them, so decoding them stays tested; this writes them.
"""

from __future__ import annotations

import orjson

from core.user_state import UserState


def json_blob(state: UserState, with_dedupe: bool = True) -> bytes:
    """``state`` as the JSON layout stored it, with every lifetime fact."""
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
