"""Request paths as the metrics see them: one path per endpoint, never a user id.

BentoML's metrics middleware labels every request's series with the raw path, so
each ``GET /users/{user_id}`` would open series of its own: unbounded cardinality
for Prometheus, and user ids kept in /metrics where ``segscore forget`` cannot
erase them. BentoML offers no option for it (its ``skip_paths`` only spares one
gauge). :func:`templated` is the outermost layer of each worker's application
(installed with the connection guards, :mod:`serving.connections`): a profile
request's path becomes the route's template before BentoML sees it, and the real
path travels in the scope for the profile route (:func:`profile_user_id`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

PROFILE_PREFIX = "/users/"
PROFILE_TEMPLATE = "/users/{user_id}"
# Where the real path of a templated request is kept in its ASGI scope.
REAL_PATH = "segscore.real_path"

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]
_wrapped: dict[int, App] = {}


def templated(app: App) -> App:
    """``app`` behind a layer that templates profile paths (one wrapper per app)."""
    wrapper = _wrapped.get(id(app))
    if wrapper is not None:
        return wrapper

    async def template_paths(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROFILE_PREFIX):
            scope[REAL_PATH] = scope["path"]
            scope["path"] = PROFILE_TEMPLATE
            scope["raw_path"] = PROFILE_TEMPLATE.encode()
        await app(scope, receive, send)

    # Kept with the app, so the id cannot be reused by another object.
    template_paths.wrapped = app  # type: ignore[attr-defined]
    _wrapped[id(app)] = template_paths
    return template_paths


def profile_user_id(scope: Scope, routed: str) -> str:
    """The user id of a profile request: from its real path when templated.

    ``routed`` is the id the router took from the path (the real one when the
    request did not pass :func:`templated`, as in in-process tests).
    """
    real = scope.get(REAL_PATH)
    return routed if real is None else real[len(PROFILE_PREFIX) :]
