"""POST /events bodies: the stream's contract, all or nothing, fields named."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.events import Event, Rejection, parse_event
from infra.settings import Settings
from serving.collector import BadRequest, EventError, error_body, validate_body

NOW = 1_800_000_000.0
SETTINGS = Settings(collector_max_events=5, max_event_bytes=2_000)


def _event(i: int = 0, **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": f"e-{i}",
        "user_id": f"u-{i}",
        "event_type": "product_view",
        "ts": (NOW - 60) * 1000,
        "price": 12.5,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def _validate(document: Any) -> tuple[list[Event], list[EventError]] | BadRequest:
    return validate_body(orjson.dumps(document), SETTINGS, now=NOW)


@pytest.mark.parametrize(
    "document",
    [_event(), [_event(), _event(1)], {"events": [_event(), _event(1)]}],
    ids=["object", "list", "events-key"],
)
def test_the_three_shapes_are_accepted(document: Any) -> None:
    found = _validate(document)
    assert not isinstance(found, BadRequest)
    events, errors = found
    assert errors == []
    if isinstance(document, dict):
        document = document.get("events", [document])
    expected = document
    assert [e.event_id for e in events] == [e["event_id"] for e in expected]
    # What is produced is what the worker parses back to the same event.
    for event in events:
        assert parse_event(event.to_json(), now=NOW) == event


def test_every_bad_event_is_named_by_index_and_field() -> None:
    found = _validate(
        [
            _event(0),
            _event(1, price=-1),
            _event(2, user_id=None),
            _event(3, event_type="hover"),
            _event(4, ts=(NOW + 3600) * 1000),
        ]
    )
    assert not isinstance(found, BadRequest)
    errors = found[1]
    assert [(e.index, e.field) for e in errors] == [
        (1, "events[1].price"),
        (2, "events[2].user_id"),
        (3, "events[3].event_type"),
        (4, "events[4].ts"),
    ]
    assert [e.reason for e in errors] == [
        "invalid:price",
        "missing:user_id",
        "unknown_event_type",
        "future_ts",
    ]
    assert errors[2].detail.startswith("event_type: 'hover' is not one of page_view")
    body = error_body(errors)
    assert body["detail"].startswith("events[1].price")
    assert body["invalid_events"] == 4 and len(body["errors"]) == 4


def test_a_single_bad_event_names_the_bare_field() -> None:
    found = _validate(_event(revenue=-5, event_type="purchase"))
    assert not isinstance(found, BadRequest)
    assert [e.field for e in found[1]] == ["revenue"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"42", 422, "body"),
        (b'"text"', 422, "body"),
        (b"[]", 422, "events"),
        (b'{"events": {}}', 422, "events"),
        (orjson.dumps([_event(i) for i in range(6)]), 413, "events"),
    ],
    ids=["not-json", "number", "string", "empty", "events-not-list", "too-many"],
)
def test_bodies_that_are_no_request(body: bytes, status: int, field: str) -> None:
    found = validate_body(body, SETTINGS, now=NOW)
    assert isinstance(found, BadRequest)
    assert (found.status, found.field) == (status, field)
    assert found.detail.startswith(field)


def test_non_objects_and_oversized_events_in_a_batch() -> None:
    found = _validate([_event(0), 7, _event(2, category="x" * 3_000)])
    assert not isinstance(found, BadRequest)
    assert [(e.field, e.reason) for e in found[1]] == [
        ("events[1]", "malformed_json"),
        ("events[2]", "oversized"),
    ]


FIELD_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(10**12), max_value=10**15),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["purchase", "add_to_cart", "hover", ""]),
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "event_id": FIELD_VALUES,
                "user_id": FIELD_VALUES,
                "event_type": FIELD_VALUES,
                "ts": st.one_of(FIELD_VALUES, st.just((NOW - 5) * 1000)),
                "price": FIELD_VALUES,
                "revenue": FIELD_VALUES,
                "quantity": FIELD_VALUES,
            },
        ),
        min_size=1,
        max_size=5,
    )
)
def test_accepted_exactly_when_the_worker_would_accept_each(
    items: list[dict[str, Any]],
) -> None:
    found = _validate(items)
    assert not isinstance(found, BadRequest)
    events, errors = found
    verdicts = [parse_event(orjson.dumps(item), now=NOW) for item in items]
    bad = [i for i, v in enumerate(verdicts) if isinstance(v, Rejection)]
    assert [e.index for e in errors] == bad
    assert [e.reason for e in errors] == [verdicts[i].reason for i in bad]
    if not bad:
        assert events == verdicts
