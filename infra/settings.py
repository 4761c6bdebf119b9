"""The one settings object, read from the environment (prefix ``SEGSCORE_``).

Every component reads its hosts, paths and tunables from here; nothing else in the
code base names a host or a port. A ``SEGSCORE_`` variable that names no setting
is an error (:class:`SettingsError`, with the likely intended name), not silently
ignored: a mistyped limit would otherwise leave the default in force unnoticed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "SEGSCORE_"


class SettingsError(ValueError):
    """The environment's ``SEGSCORE_`` variables are not valid settings."""


class Settings(BaseSettings):
    """Runtime configuration for every segscore process."""

    # pydantic-settings reads only the fields' own variables from the environment
    # (extra="forbid" refuses unknown ones from a dotenv file and keyword
    # arguments alone); _RefuseUnknownVariables covers the environment.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # Where state lives and how to reach the stack (infra/local_stack.py).
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
    feature_repo: Path = PROJECT_ROOT / "feature_repo"

    # Topics and the worker's consumer group (infra/topics.py).
    events_topic: str = "events"
    dlq_topic: str = "events-dlq"
    segment_changes_topic: str = Field(
        default="segment-changes",
        description="Live segment changes, keyed by user (streams/live_segments.py).",
    )
    live_segments: bool = Field(
        default=True,
        description="The worker places every touched user with the serving "
        "segmenter and produces each change to segment_changes_topic.",
    )
    topic_partitions: int = 2
    consumer_group: str = "segscore-features"
    worker_processes: int = Field(
        default=0,
        ge=0,
        description="Stream worker processes that `segscore worker` runs, in one "
        "consumer group (each is single-threaded by Python's interpreter lock). "
        "0: one per core, at most topic_partitions (bench stream on 2 cores: "
        "one process 8,000-11,000 events/s, two 18,300-19,900).",
    )

    # Stream worker (streams/).
    batch_max_events: int = Field(
        default=10_000,
        description="Micro-batch size limit of the stream worker. Reached only "
        "by a worker behind its partitions (one keeping up takes what arrives in "
        "batch_max_seconds): larger batches then write each busy user once for "
        "more of their events (2,000 -> 10,000: +30 % events/s in bench "
        "activation).",
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

    # The event contract: what the worker and the importer accept (core/events.py).
    allowed_lateness_seconds: int = 600
    max_future_seconds: int = 300
    max_event_bytes: int = 16_384
    min_event_time: datetime = Field(
        default=datetime(1990, 1, 1, tzinfo=UTC),
        description="Events timed before this are rejected with reason too_old: "
        "late enough to catch zero and unit-mistaken times (seconds read as "
        "milliseconds land before 1973), early enough for old shops' logs.",
    )

    # Training (training/).
    backfill_workers: int = Field(
        default=0,
        description="Processes for large backfills; 0 = one per core (at most 4).",
    )
    label_horizon_days: int = 7
    snapshot_every_days: int = Field(
        default=7,
        ge=1,
        description="Training snapshots: every user seen so far is snapshotted "
        "every this many days (counted back from the last day of the data), or "
        "less often when snapshot_grid_rows_per_event caps the rows.",
    )
    snapshot_grid_rows_per_event: float = Field(
        default=1.0,
        ge=0,
        description="Training snapshots: the grid's spacing widens (whole days) "
        "until it gives at most this many rows per event, so the training cost "
        "grows with events, not users x days; 0 = no cap.",
    )
    snapshot_at_activity: bool = Field(
        default=True,
        description="Training snapshots: also snapshot each user at the end of "
        "every day they had an event, so rows grow with events, not users x days.",
    )

    # Scoring service (serving/).
    api_key: str | None = Field(
        default=None,
        description="Required as X-API-Key on every request but the probes and "
        "/metrics; unset = open.",
    )
    segmenter_version: str | None = Field(
        default=None,
        description="Pin the segmenter to this model store tag (name:version or "
        "just the version); unset = follow the champion.",
    )
    propensity_version: str | None = Field(
        default=None,
        description="Pin the propensity model to this tag; unset = the champion.",
    )
    stale_after_seconds: float = Field(
        default=90 * 86_400.0,
        gt=0,
        description="/score and batch-score flag a user stale when their newest "
        "event is older than this (90 days).",
    )
    triggers: bool = Field(
        default=True,
        description="The worker runs the rules file's behavioural triggers and "
        "produces each fired one to triggers_topic.",
    )
    triggers_topic: str = Field(
        default="triggers",
        description="Fired behavioural triggers, keyed by user (streams/triggers.py).",
    )
    rules_path: Path | None = Field(
        default=None,
        description="The triggers' rules file (YAML, docs/triggers.md); None: the "
        "shipped core/rules/default_rules.yaml. Reloaded when it changes.",
    )
    rules_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a worker checks the rules file for a change.",
    )
    timer_idle_seconds: float = Field(
        default=3.0,
        gt=0,
        description="A partition with no record for this long lets its timers "
        "fire by the wall clock (minus this) instead of by its newest event time.",
    )
    profile_recent_events: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Last events kept per user for GET /users/{id} (0: none).",
    )
    model_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a worker checks champions.json for a promotion.",
    )
    online_connect_timeout_seconds: float = Field(
        default=0.05,
        gt=0,
        description="Connecting to Redis; a store that is down answers 503 "
        "within this (a refused connection: at once).",
    )
    online_read_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Waiting for Redis replies; a stalled store answers 503 "
        "after this. Not shorter: it also counts the time a busy worker takes "
        "to get back to the reply (other requests' scoring), and a tight bound "
        "turned CPU contention into spurious 503s.",
    )
    max_body_bytes: int = Field(
        default=256 * 1024,
        gt=0,
        description="Largest accepted request body (1000 ids of 128 characters "
        "fit in ~135 KB).",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A /score body must arrive within this after its headers, "
        "or the request gets a 408 naming body (and the connection is closed).",
    )
    request_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="BentoML's whole-request timeout (a 504). Longer than the "
        "body deadline, so that a slow body is answered 408, not 504.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description="A request's headers must arrive within this after the "
        "connection opens (or the next request starts on a kept-alive one), or "
        "the connection gets a 408 naming headers and is closed.",
    )
    max_connections_per_worker: int = Field(
        default=512,
        ge=1,
        description="Open connections per worker process; a connection beyond "
        "it gets a 503 and is closed before anything is read, so slow or idle "
        "clients cannot exhaust the worker's file descriptors.",
    )
    trace_requests: bool = Field(
        default=False,
        description="Trace /score and /segments with OpenTelemetry. Off by "
        "default: without an exporter configured in BentoML's tracing settings "
        "the spans go nowhere, and creating them cost ~10 % of a one-user request.",
    )
    serve_workers: int = Field(
        default=1,
        ge=1,
        description="BentoML worker processes (each loads the models).",
    )
    balance_connections: bool = Field(
        default=True,
        description="Workers accept new connections so that each holds an even "
        "share (serving/accept_balance.py). Off: whichever worker wakes first "
        "accepts, and keep-alive clients may pile onto one worker.",
    )

    # The HTTP event collector, POST /events on the service (serving/collector.py).
    collector_key: str | None = Field(
        default=None,
        description="Also accepted as X-API-Key on POST /events (only there): a "
        "write-only key a site may embed, unlike api_key, which reads scores.",
    )
    collector_max_events: int = Field(
        default=1000, ge=1, description="Events in one POST /events request."
    )
    collector_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="Largest POST /events body (1000 events of up to 4 KB).",
    )
    collector_produce_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="POST /events waits this long for the broker to acknowledge "
        "every event (acks=all), else answers 503 with Retry-After.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources, then the check for unknown variables."""
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _RefuseUnknownVariables(settings_cls),
        )

    @field_validator("min_event_time")
    @classmethod
    def _zoned(cls, value: datetime) -> datetime:
        """A floor given without a zone means UTC, not this machine's local time."""
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _slow_body_is_a_408(self) -> Settings:
        if self.request_timeout_seconds <= self.body_timeout_seconds:
            raise ValueError(
                "request_timeout_seconds must exceed body_timeout_seconds "
                f"({self.request_timeout_seconds} <= {self.body_timeout_seconds})"
            )
        return self

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


# --- unknown variables ---


def variable_names() -> list[str]:
    """The environment variable of every setting (``SEGSCORE_HOME``, ...)."""
    return [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Variables of ``environ`` with the settings' prefix that name no setting.

    Matched without regard to case, as pydantic-settings reads them; returned as
    spelled in ``environ``, sorted.
    """
    known = {name.lower() for name in variable_names()}
    prefix = ENV_PREFIX.lower()
    return sorted(
        name
        for name in environ
        if name.lower().startswith(prefix) and name.lower() not in known
    )


def describe_unknown(names: Iterable[str]) -> str:
    """One line naming each unknown variable, with the closest setting if any."""
    fields = list(Settings.model_fields)
    parts = []
    for name in names:
        # Compared without the shared prefix, which would make anything look close.
        close = difflib.get_close_matches(name[len(ENV_PREFIX) :].lower(), fields, n=1)
        hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
        parts.append(name + hint)
    return (
        f"unknown {ENV_PREFIX} variable(s): {', '.join(parts)}; "
        "the settings are the fields of infra/settings.py"
    )


class _RefuseUnknownVariables(PydanticBaseSettingsSource):
    """A settings source that contributes nothing and refuses unknown variables.

    A source, not a validator: an exception raised here reaches the caller as it
    is (a :class:`SettingsError` with one clear line), not wrapped in pydantic's
    validation report.
    """

    def get_field_value(
        self, field: FieldInfo, field_name: str
    ) -> tuple[Any, str, bool]:
        """No value for any field."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """Raise :class:`SettingsError` if the environment holds unknown names."""
        unknown = unknown_variables(os.environ)
        if unknown:
            raise SettingsError(describe_unknown(unknown))
        return {}


def _one_line(exc: ValidationError) -> str:
    """A validation report as one line, each error named by its variable."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        where = f"{ENV_PREFIX}{field.upper()}: " if field else ""
        given = f" (got {error['input']!r})" if field else ""
        parts.append(f"{where}{error['msg']}{given}")
    return "invalid settings: " + "; ".join(parts)


def get_settings() -> Settings:
    """Read settings from the environment now (not cached: tests change it).

    Raises:
        SettingsError: An unknown ``SEGSCORE_`` variable, or a value that is not
            valid; the message is one line naming the variables.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from exc
