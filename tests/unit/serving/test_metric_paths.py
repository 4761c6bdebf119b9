"""Profile paths reach BentoML's metrics as the route's template, ids kept aside."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.metric_paths import (
    PROFILE_TEMPLATE,
    REAL_PATH,
    profile_user_id,
    templated,
)


def _seen(path: str, kind: str = "http") -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    scope = {"type": kind, "path": path, "raw_path": path.encode()}
    asyncio.run(templated(app)(scope, None, None))
    return seen


def test_a_profile_path_becomes_the_template_and_keeps_the_real_one():
    seen = _seen("/users/team/a b")
    assert seen["path"] == PROFILE_TEMPLATE
    assert seen["raw_path"] == PROFILE_TEMPLATE.encode()
    assert profile_user_id(seen, routed="{user_id}") == "team/a b"


def test_other_paths_and_other_scopes_pass_unchanged():
    for path in ("/score", "/users", "/segments", "/metrics"):
        seen = _seen(path)
        assert seen["path"] == path and REAL_PATH not in seen
    assert _seen("/users/u1", kind="lifespan")["path"] == "/users/u1"


def test_an_untemplated_request_keeps_the_routed_id():
    assert profile_user_id({"path": "/users/u9"}, routed="u9") == "u9"


def test_one_wrapper_per_app():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    assert templated(app) is templated(app)
