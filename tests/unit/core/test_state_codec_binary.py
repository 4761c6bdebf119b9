"""The binary state layout: what a damaged blob does, and what it holds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.events import EventType
from core.state_block import parse_blobs
from core.state_codec import HEADER, MAGIC, numbers_of
from core.user_state import UserState, apply_fields


def _state() -> UserState:
    state = UserState()
    for i, etype in enumerate((EventType.PRODUCT_VIEW, EventType.PURCHASE)):
        apply_fields(state, f"e{i}", etype, 1.8e9 + 60 * i, "s1", "tea", 5.0, 9.0, 600)
    return state


@pytest.mark.parametrize(
    ("damage", "reads_fail"),
    [
        pytest.param(lambda b: b[: HEADER.size + 40], True, id="cut-in-the-numbers"),
        pytest.param(lambda b: b[:10], True, id="cut-in-the-header"),
        pytest.param(lambda b: MAGIC[:1] + b"SB9" + b[4:], True, id="unknown-version"),
        # Reads need none of the names.
        pytest.param(lambda b: b[:-3], False, id="cut-in-the-names"),
    ],
)
def test_a_damaged_blob_is_a_value_error(
    damage: Callable[[bytes], bytes], reads_fail: bool
) -> None:
    blob = damage(_state().to_bytes(with_dedupe=False))
    with pytest.raises(ValueError):
        UserState.from_bytes(blob)
    if reads_fail:
        with pytest.raises(ValueError):
            parse_blobs([blob])
    else:
        assert parse_blobs([blob]).n == 1


def test_reads_need_only_the_numbers() -> None:
    state = _state()
    whole, numbers = state.to_bytes(with_dedupe=False), numbers_of(state)
    assert whole.startswith(numbers) and len(numbers) % 8 == 0
    a, b = parse_blobs([whole]), parse_blobs([numbers])
    assert (a.scalars == b.scalars)[~(a.scalars != a.scalars)].all()
    assert (a.hours.values == b.hours.values).all()
    assert (a.hours.keys == b.hours.keys).all()
    assert a.sessions.values.tolist() == [[1.8e9, 1.8e9 + 60]]
