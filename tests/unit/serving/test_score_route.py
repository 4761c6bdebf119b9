"""POST /score's short path: it takes only what the request model takes, unchanged.

:func:`serving.score_route.parse_score_body` must never accept a body that
:class:`serving.schemas.ScoreRequest` refuses, nor read one differently; every
body it declines goes to BentoML's route, whose answers the integration tests
check (tests/integration/test_service_http.py, test_http_hardening.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.responses import Response

from serving.schemas import ScoreRequest
from serving.score_route import FIELDS, ScoreEndpoint, parse_score_body


def _model(body: bytes) -> tuple[list[str], bool, int] | None:
    # BentoML reads an empty body as {} (its JSON serde).
    try:
        request = ScoreRequest.model_validate_json(body or b"{}")
    except ValidationError:
        return None
    return request.user_ids, request.explain, request.top_k


def test_the_checked_fields_are_the_models() -> None:
    # A new field in the model must be taught to the short path, or it would
    # be accepted and ignored.
    handled = {"user_ids", "explain", "top_k"}
    assert set(ScoreRequest.model_fields) == handled
    assert handled == FIELDS


@pytest.mark.parametrize(
    "body",
    [
        {"user_ids": ["u"]},
        {"user_ids": ["u-1", "u-2"], "explain": False, "top_k": 50},
        {"user_ids": ["x" * 128], "top_k": 1},
        {"user_ids": [f"u{i}" for i in range(1000)], "explain": True},
        {"user_ids": ["\x00", "ünï", "\U0001f600", " "]},
        {"top_k": 3, "user_ids": ["a", "a"]},
    ],
)
def test_valid_bodies_are_read_as_the_model_reads_them(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    assert parse_score_body(raw) == _model(raw) is not None


@pytest.mark.parametrize(
    "raw",
    [
        # Repeated keys: the last one counts, for both.
        b'{"user_ids": ["a"], "user_ids": ["b"]}',
        b'{"user_ids": ["a"], "top_k": "x", "top_k": 4}',
        b' {"user_ids": ["a"]}\n',
        rb'{"user_ids": ["\ud83d\ude00"]}',
    ],
)
def test_unusual_spellings_read_alike(raw: bytes) -> None:
    assert parse_score_body(raw) == _model(raw) is not None


BAD = [
    {"user_ids": ["x" * 129]},
    {"user_ids": []},
    {"user_ids": ["u"], "top_k": 100_000},
    {"user_ids": [f"u{i}" for i in range(1001)]},
    {"user_ids": [f"u{i}" for i in range(995)] + [""] * 5},
    {"user_ids": ["u"], "top_k": 0},
    {"user_ids": ["u"], "top_k": "5"},
    {"user_ids": ["u"], "top_k": True},
    {"user_ids": ["u"], "top_k": 5.0},
    {"user_ids": ["u"], "explain": "yes"},
    {"user_ids": ["u"], "explain": 1},
    {"user_ids": ["u"], "explain": None},
    {"user_ids": [1]},
    {"user_ids": "u"},
    {"user_ids": None},
    {"user_ids": ["u"], "topk": 3},
    {},
    [],
    "u",
]


@pytest.mark.parametrize("body", BAD)
def test_bad_bodies_are_left_to_the_model(body: object) -> None:
    raw = json.dumps(body).encode()
    assert _model(raw) is None
    assert parse_score_body(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b'{"user_ids": ["u"]} trailing',
        rb'{"user_ids": ["ok", "\ud800"]}',
        rb'{"user_ids": ["u"], "\ud800": 1}',
        b'{"user_ids": ["\xff"]}',
        b'\xef\xbb\xbf{"user_ids": ["u"]}',
        b'{"user_ids": ["u"], "top_k": 18446744073709551616}',
        b'{"user_ids": ["u"], "top_k": 1e1}',
        b'{"user_ids": ["u"], "top_k": NaN}',
    ],
)
def test_what_orjson_or_the_check_declines_goes_to_the_model(raw: bytes) -> None:
    # Some of these the model accepts (a byte-order mark), most it names; either
    # way it, not the short path, decides.
    assert parse_score_body(raw) is None


_ids = st.lists(st.text(max_size=130), max_size=3) | st.lists(
    st.text(min_size=1, max_size=4), min_size=998, max_size=1002
)
_json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "user_ids": _ids | _json_values,
        "explain": st.booleans() | _json_values,
        "top_k": st.integers(min_value=-2, max_value=60) | _json_values,
        "extra": _json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(_bodies)
def test_the_short_path_takes_exactly_what_the_model_takes(
    body: dict[str, Any],
) -> None:
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:  # lone surrogates: covered above
        return
    assert parse_score_body(raw) == _model(raw)


# ------------------------------------------------------------- the middleware


class FakeEngine:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], bool, int]] = []
        self.fail = fail

    async def score(self, user_ids: list[str], explain: bool, top_k: int) -> Response:
        self.calls.append((user_ids, explain, top_k))
        if self.fail:
            raise RuntimeError("boom")
        return Response(b'{"scores": []}', media_type="application/json")


class Inner:
    """The rest of the service: records what reached it and answers 418."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def _run(
    endpoint: ScoreEndpoint,
    body: bytes,
    path: str = "/score",
    method: str = "POST",
    messages: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    incoming = list(
        messages or [{"type": "http.request", "body": body, "more_body": False}]
    )

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "headers": []}
    asyncio.run(endpoint(scope, receive, send))
    return sent


def _endpoint(engine: FakeEngine, inner: Inner) -> ScoreEndpoint:
    return ScoreEndpoint(inner, engine=lambda: engine, server="BentoML Service/x")


def test_a_valid_body_is_scored_without_reaching_bentoml() -> None:
    engine, inner = FakeEngine(), Inner()
    sent = _run(
        _endpoint(engine, inner),
        b"",
        messages=[
            {"type": "http.request", "body": b'{"user_ids": ', "more_body": True},
            {"type": "http.request", "body": b'["a"], "top_k": 3}'},
        ],
    )

    assert engine.calls == [(["a"], True, 3)]
    assert inner.bodies == []
    start, body = sent
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"14"
    assert headers[b"server"] == b"BentoML Service/x"
    assert body == {"type": "http.response.body", "body": b'{"scores": []}'}


def test_a_bad_body_goes_on_to_bentoml_unchanged() -> None:
    engine, inner = FakeEngine(), Inner()
    raw = b'{"user_ids": [], "top_k": 3}'
    sent = _run(_endpoint(engine, inner), raw)

    assert engine.calls == []
    assert inner.bodies == [raw]
    assert sent[0]["status"] == 418


@pytest.mark.parametrize(("path", "method"), [("/segments", "GET"), ("/score", "GET")])
def test_other_routes_pass_through_untouched(path: str, method: str) -> None:
    engine, inner = FakeEngine(), Inner()
    _run(_endpoint(engine, inner), b"untouched", path=path, method=method)

    assert engine.calls == []
    assert inner.bodies == [b"untouched"]


def test_a_failure_is_bentomls_500_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="serving.score_route"):
        sent = _run(_endpoint(FakeEngine(fail=True), Inner()), b'{"user_ids": ["u"]}')

    assert sent[0]["status"] == 500
    payload = orjson.loads(sent[1]["body"])
    assert payload == {
        "error": "An unexpected error has occurred, please check the server log."
    }
    assert "boom" in caplog.text  # the traceback is logged, not sent


def test_a_client_gone_before_its_body_gets_nothing() -> None:
    engine, inner = FakeEngine(), Inner()
    sent = _run(_endpoint(engine, inner), b"", messages=[{"type": "http.disconnect"}])

    assert sent == [] and engine.calls == [] and inner.bodies == []
