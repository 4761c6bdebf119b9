"""The scoring service's online read plan, resolved from the Feast registry by a child.

The service must check its models' features against the Feast registry and learn
which view (and so which hash fields) holds each one. Reading the registry takes
Feast, and importing Feast costs a process about 170 MB (pandas, pyarrow,
SQLAlchemy) that it never frees. Each scoring worker would carry that for its
whole life only to read a few field names once. So the worker resolves its plan
in a short-lived child (``python -m core.store.read_plan``) that imports Feast,
reads the same registry with the same settings (the child inherits the worker's
environment), prints the plan as JSON and exits; the worker keeps the plan.
A feature the registry lacks still fails the worker's start, with the same error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from core.store.online_reader import FeatureNotRegistered, ViewFields
from core.store.state_store import StateLayout
from infra.settings import PROJECT_ROOT, Settings

# Exit status of the child for a feature the registry lacks (any other failure
# exits 1 with Python's traceback).
_NOT_REGISTERED = 3
_CHILD_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class ReadPlan:
    """The user hash's layout and, per view, the fields of the features read."""

    layout: StateLayout
    views: list[ViewFields]

    def to_json(self) -> bytes:
        """The plan as JSON (field names, which are bytes, as hex)."""
        layout = self.layout
        return orjson.dumps(
            {
                "layout": {
                    "project": layout.project,
                    "serialization_version": layout.serialization_version,
                    "key_ttl_seconds": layout.key_ttl_seconds,
                    "view": layout.view,
                    "direct_key": layout.direct_key,
                },
                "views": [
                    {
                        "view": v.view,
                        "features": list(v.features),
                        "fields": [f.hex() for f in v.fields],
                        "ts_field": v.ts_field.hex(),
                    }
                    for v in self.views
                ],
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> ReadPlan:
        """Inverse of :meth:`to_json`."""
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            layout=StateLayout(**data["layout"]),
            views=[
                ViewFields(
                    view=v["view"],
                    features=tuple(v["features"]),
                    fields=tuple(bytes.fromhex(f) for f in v["fields"]),
                    ts_field=bytes.fromhex(v["ts_field"]),
                )
                for v in data["views"]
            ],
        )


def resolve_here(settings: Settings, redis_url: str, names: Sequence[str]) -> ReadPlan:
    """The plan, read from the Feast registry in this process (imports Feast).

    Raises:
        FeatureNotRegistered: A name is not a feature of any view.
    """
    from core.store.feast_config import feature_store
    from core.store.online_reader import resolve_views

    store = feature_store(settings, redis_url)
    return ReadPlan(StateLayout.of(store), resolve_views(store, names))


def resolve_read_plan(
    settings: Settings, redis_url: str, names: Sequence[str]
) -> ReadPlan:
    """The plan, resolved by a child process (see the module docstring).

    ``settings`` must be this process's environment's (the child reads its own
    from the environment it inherits); the scoring service's always are.

    Raises:
        FeatureNotRegistered: A name is not a feature of any view.
        RuntimeError: The child failed otherwise (its stderr's tail included).
    """
    done = subprocess.run(
        [sys.executable, "-m", "core.store.read_plan", redis_url, *names],
        capture_output=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "SEGSCORE_HOME": str(settings.home)},
        timeout=_CHILD_TIMEOUT_SECONDS,
        check=False,
    )
    message = done.stderr.decode(errors="replace").strip()
    if done.returncode == _NOT_REGISTERED:
        raise FeatureNotRegistered(message)
    if done.returncode != 0:
        raise RuntimeError(
            f"resolving the online read plan failed ({done.returncode}): "
            f"{message[-2000:]}"
        )
    return ReadPlan.from_json(done.stdout)


def main(argv: Sequence[str]) -> int:
    """``python -m core.store.read_plan REDIS_URL NAME...``: the plan on stdout."""
    from infra.settings import get_settings

    redis_url, *names = argv
    try:
        plan = resolve_here(get_settings(), redis_url, names)
    except FeatureNotRegistered as exc:
        print(str(exc), file=sys.stderr)
        return _NOT_REGISTERED
    sys.stdout.buffer.write(plan.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
