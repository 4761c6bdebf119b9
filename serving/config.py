"""Settings of the scoring service only (prefix ``SEGSCORE_``, like the rest).

Kept beside the service rather than in :mod:`infra.settings` because nothing else
reads them; the shared settings object ignores these names (``extra="ignore"``).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """Tunables of ``serving.service``."""

    model_config = SettingsConfigDict(env_prefix="SEGSCORE_", extra="ignore")

    segmenter_version: str | None = Field(
        default=None,
        description="Pin the segmenter to this model store tag (name:version or "
        "just the version); unset = follow the champion.",
    )
    propensity_version: str | None = Field(
        default=None,
        description="Pin the propensity model to this tag; unset = the champion.",
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

    @model_validator(mode="after")
    def _slow_body_is_a_408(self) -> ServingSettings:
        if self.request_timeout_seconds <= self.body_timeout_seconds:
            raise ValueError(
                "request_timeout_seconds must exceed body_timeout_seconds "
                f"({self.request_timeout_seconds} <= {self.body_timeout_seconds})"
            )
        return self


def get_serving_settings() -> ServingSettings:
    """Read the serving settings from the environment now."""
    return ServingSettings()
