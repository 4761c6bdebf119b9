"""The one settings object, read from the environment (prefix ``SEGSCORE_``).

Every component reads its hosts, paths and tunables from here; nothing else in the
code base names a host or a port.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Runtime configuration for every segscore process."""

    model_config = SettingsConfigDict(env_prefix="SEGSCORE_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".segscore",
        description="State directory: stack record, offline store, registry, models.",
    )
    redis_url: str | None = Field(
        default=None, description="Online store; unset means start a local redis."
    )
    kafka_broker: str | None = Field(
        default=None,
        description="host:port of a Kafka broker; unset means start a local tansu.",
    )
    events_topic: str = "events"
    dlq_topic: str = "events-dlq"
    topic_partitions: int = 2
    consumer_group: str = "segscore-features"

    batch_max_events: int = Field(
        default=2000, description="Micro-batch size limit of the stream worker."
    )
    batch_max_seconds: float = Field(
        default=0.05, description="Micro-batch time limit of the stream worker."
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=50, description="How long a fetch may wait for data to arrive."
    )
    consumer_session_timeout_ms: int = Field(
        default=6000,
        description="Consumer-group session timeout: how soon a dead worker's "
        "partitions move to another.",
    )
    consumer_heartbeat_interval_ms: int = 2000
    commit_interval_seconds: float = Field(
        default=1.0,
        description="How often the worker commits the offsets of written batches.",
    )
    consumer_rebalance_timeout_ms: int = 10_000
    commit_durability_lag_seconds: float = Field(
        default=2.0,
        description="Offsets of a batch are committed only this long after its "
        "states were written, so a store that loses its last writes (Redis AOF "
        "fsynced every second, a failover to an asynchronous replica) is never "
        "behind the committed offsets; the worker then replays what it lost.",
    )
    state_cache_users: int = Field(
        default=200_000,
        description="User states the worker keeps in memory (least recently used "
        "beyond this are re-read from Redis).",
    )
    allowed_lateness_seconds: int = 600
    max_future_seconds: int = 300
    max_event_bytes: int = 16_384
    min_event_time: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Events timed before this are rejected with reason too_old.",
    )

    worker_id: str | None = Field(
        default=None,
        description="Names this worker's metrics file and series; unset: host-pid.",
    )
    worker_metrics_port: int = Field(
        default=0, description="Serve the worker's Prometheus metrics here; 0 = off."
    )
    worker_metrics_addr: str = "127.0.0.1"
    worker_metrics_interval_seconds: float = Field(
        default=5.0,
        description="How often the worker rewrites home/metrics/<worker-id>.prom.",
    )

    backfill_workers: int = Field(
        default=0,
        description="Processes for large backfills; 0 = one per core (at most 4).",
    )
    label_horizon_days: int = 7
    snapshot_every_days: int = 1

    api_key: str | None = None
    feature_repo: Path = PROJECT_ROOT / "feature_repo"

    @field_validator("min_event_time")
    @classmethod
    def _zoned(cls, value: datetime) -> datetime:
        """A floor given without a zone means UTC, not this machine's local time."""
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @cached_property
    def data_dir(self) -> Path:
        """Offline store, registry and event files live here."""
        return self.home / "data"

    @property
    def stack_file(self) -> Path:
        """Where ``segscore up`` records what runs and where."""
        return self.home / "stack.json"

    @property
    def bentoml_home(self) -> Path:
        """BentoML model store root, unless BENTOML_HOME says otherwise."""
        return Path(os.environ.get("BENTOML_HOME", self.home / "bentoml"))


def get_settings() -> Settings:
    """Read settings from the environment now (not cached: tests change it)."""
    return Settings()
