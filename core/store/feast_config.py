"""Build the Feast repo configuration from settings and the running stack.

No host lives in committed YAML: code builds a :class:`RepoConfig` directly, and
``segscore up`` writes ``feature_repo/feature_store.yaml`` (git-ignored) so that the
plain ``feast`` CLI works against the same stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import yaml

from core.names import PROJECT
from infra.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

# The offline store class (core.store.asof_offline_store), named without
# importing it: Feast loads it by this path. Importing Feast took over a second
# of a starting stream worker, which needs only repo_config_dict.
STORE_TYPE = "core.store.asof_offline_store.AsofDuckDBOfflineStore"


def redis_connection_string(
    redis_url: str, fail_fast_seconds: float | None = None
) -> str:
    """Translate ``redis://[:password@]host:port/db`` into Feast's form.

    With ``fail_fast_seconds`` the client times out after that long and does not
    retry: redis-py's default retry policy turns a refused connection into a ~10 s
    stall, and a scoring request would rather get a 503 at once. Feast passes the
    extra ``key=value`` pairs (JSON-decoded) to the redis-py client.
    """
    url = urlparse(redis_url)
    parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
    if url.password:
        parts.append(f"password={url.password}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    db = (url.path or "/0").lstrip("/") or "0"
    parts.append(f"db={db}")
    if fail_fast_seconds is not None:
        parts.append(f"socket_timeout={fail_fast_seconds}")
        parts.append(f"socket_connect_timeout={fail_fast_seconds}")
        parts.append("retry=null")
    return ",".join(parts)


def repo_config_dict(
    settings: Settings,
    redis_url: str,
    fail_fast_seconds: float | None = None,
    skip_write_dedup: bool = False,
) -> dict:
    """The feature_store.yaml content for this settings + stack."""
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": {
            "registry_type": "file",
            "path": str(settings.data_dir / "registry.db"),
            "cache_ttl_seconds": 60,
        },
        "online_store": {
            "type": "redis",
            "connection_string": redis_connection_string(redis_url, fail_fast_seconds),
            "skip_dedup": skip_write_dedup,
        },
        # Feast's DuckDB store with the point-in-time join done as one ASOF
        # join: a 2M-row propensity set took ~12 s in the stock store's window
        # query (which was itself ~20x faster than the "file"/dask store).
        "offline_store": {"type": STORE_TYPE},
        "entity_key_serialization_version": 3,
    }


def feature_store(
    settings: Settings,
    redis_url: str,
    fail_fast_seconds: float | None = None,
    skip_write_dedup: bool = False,
) -> FeatureStore:
    """A FeatureStore bound to the repo in settings and the given Redis.

    ``skip_write_dedup`` drops Feast's check that a written row is newer than the
    stored one; only for a writer that orders its rows itself.
    """
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    # RepoConfig loads it by STORE_TYPE; imported here too so that whatever ships
    # this module (the bento's include list, an import-closure check) ships it.
    import core.store.asof_offline_store  # noqa: F401

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        repo_path=settings.feature_repo,
        **repo_config_dict(settings, redis_url, fail_fast_seconds, skip_write_dedup),
    )
    return FeatureStore(repo_path=str(settings.feature_repo), config=config)


def write_feature_store_yaml(settings: Settings, redis_url: str, path: Path) -> Path:
    """Write a feature_store.yaml for the ``feast`` CLI."""
    path.write_text(yaml.safe_dump(repo_config_dict(settings, redis_url)))
    return path
