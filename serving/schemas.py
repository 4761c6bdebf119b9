"""Request and response models of the scoring API: the HTTP contract.

The request model is what BentoML validates every ``POST /score`` body against, so a
bad field becomes a 4xx naming that field before any scoring code runs (422 once
:mod:`serving.limits` has looked at it). Types are strict: ``"yes"`` is not a
boolean, ``"5"`` and ``true`` are not a ``top_k``, ``1`` is not a user id. The response
models document the answer (OpenAPI) and are what the tests check responses against;
the handler itself serialises plain dicts of the same shape, because building a
pydantic object per user would cost more than the scoring on the hot path.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

MAX_USERS_PER_REQUEST = 1000
MAX_USER_ID_CHARS = 128
MAX_TOP_K = 50
# The largest profile_recent_events setting (infra/settings.py); the setting
# itself bounds the ``events`` of a request.
MAX_PROFILE_EVENTS = 1000


def _encodable(user_id: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which no store key can hold;
    # refused here as a bad field rather than failing later as a server error.
    try:
        user_id.encode()
    except UnicodeEncodeError:
        raise ValueError("user id must be valid Unicode (no lone surrogates)") from None
    return user_id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _printable_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A key is echoed in an error's ``loc``; a lone surrogate in it could not be
    # written as UTF-8, so it is shown escaped.
    return {k.encode("utf-8", "backslashreplace").decode(): v for k, v in pairs}


def _parse_with_surrogates(json_data: str | bytes | bytearray) -> object | None:
    """The document as the standard library reads it (lone surrogates kept).

    None when it is not JSON to the standard library either (NaN and Infinity
    included), or too deeply nested to parse.
    """
    try:
        return json.loads(
            json_data,
            parse_constant=_reject_constant,
            object_pairs_hook=_printable_keys,
        )
    except (ValueError, RecursionError):
        return None


def _decimal_text(value: object) -> object:
    # Query values arrive as text; pydantic's lax int would also take "5.0",
    # " 5" and "1_0". Only plain decimal digits are a number here, as a JSON
    # body's strict types allow only a JSON integer.
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError("must be a whole number written in decimal digits")
        return int(value)
    return value


QueryInt = Annotated[StrictInt, BeforeValidator(_decimal_text)]
# Bounds inside the type, not on an Optional field: there pydantic's JSON schema
# would show them as "ge"/"le", which OpenAPI does not know.
EventCount = Annotated[
    StrictInt, Field(ge=0, le=MAX_PROFILE_EVENTS), BeforeValidator(_decimal_text)
]

UserId = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_USER_ID_CHARS),
    AfterValidator(_encodable),
]


class ScoreRequest(BaseModel):
    """Body of ``POST /score``."""

    # The title keeps validation errors saying "ScoreRequest", not the name of the
    # subclass BentoML derives from this model. Unknown fields are rejected so a
    # typo such as ``topk`` is reported instead of silently using the default.
    model_config = ConfigDict(title="ScoreRequest", extra="forbid")

    @classmethod
    def model_validate_json(
        cls, json_data: str | bytes | bytearray, **kwargs: Any
    ) -> Self:
        """Validate a JSON body (BentoML's entry point); lone surrogates name a field.

        pydantic's JSON parser refuses a lone surrogate escape (``"\\ud800"``) as
        invalid JSON, which would be a 400 naming nothing. Such a body is parsed
        again by the standard library, which keeps the surrogate, and validated
        as an object: the field holding it is then named (422). Only bodies that
        failed take this path.
        """
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            if any(e["type"] != "json_invalid" for e in exc.errors()):
                raise
            parsed = _parse_with_surrogates(json_data)
            if parsed is None:
                raise
            return cls.model_validate(parsed, **kwargs)

    user_ids: list[UserId] = Field(
        min_length=1,
        max_length=MAX_USERS_PER_REQUEST,
        description="Users to score, 1..1000 ids of 1..128 characters each.",
        examples=[["u-1", "u-2"]],
    )
    explain: StrictBool = Field(
        default=True, description="Return the top-k SHAP contributions per user."
    )
    top_k: StrictInt = Field(
        default=5,
        ge=1,
        le=MAX_TOP_K,
        description="How many contributions to return, largest |contribution| first.",
    )


class SegmentRef(BaseModel):
    """The segment a user is assigned to."""

    id: int
    name: str


class Contribution(BaseModel):
    """One feature's part in the propensity of one user."""

    feature: str = Field(description="Model input name, as in the feature catalogue.")
    value: float = Field(description="The input value, in the feature's own unit.")
    contribution: float = Field(
        description="Exact TreeSHAP contribution to the raw log-odds."
    )


class RuleMembership(BaseModel):
    """A behavioural rule the user is "in" at the time of the answer."""

    rule: str = Field(description="The rule's name, as in the rules file.")
    since: str = Field(description="When the membership began (ISO-8601, UTC).")
    until: str | None = Field(
        description="When it ends (ISO-8601, UTC); null: until the rule cancels it."
    )


class UserScore(BaseModel):
    """Segment, propensity and explanation of one user."""

    user_id: str
    segment: SegmentRef
    propensity: float = Field(
        ge=0.0, le=1.0, description="Calibrated probability of a purchase in 7 days."
    )
    base_value: float = Field(
        description="Expected raw log-odds of the model; base_value plus the sum of "
        "all contributions is the user's raw log-odds."
    )
    explanation: list[Contribution] = Field(
        description="Top-k contributions by magnitude; empty when explain is false."
    )
    cold_start: bool = Field(
        description="No stored features for this user: population defaults were used."
    )
    feature_age_seconds: float | None = Field(
        description="Seconds since the user's real-time (stream) features were "
        "last written; null when none are stored."
    )
    stale: bool = Field(
        description="feature_age_seconds exceeds SEGSCORE_STALE_AFTER_SECONDS "
        "(90 days): the user's newest event is that old, so the score describes "
        "a customer as they were then. Always false for a cold start.",
    )
    # A default so that core.scoring's payload (which knows no rules: batch
    # scoring has none) still validates; the service always sends the field.
    rules: list[RuleMembership] = Field(
        default_factory=list,
        description="The rule memberships active at the time of the answer "
        "(since <= now < until), oldest first; empty for a cold start.",
    )


class ScoreResponse(BaseModel):
    """Answer of ``POST /score``: one score per requested id, in request order."""

    model_versions: dict[str, str] = Field(
        description="Model store tags of the segmenter and the propensity model."
    )
    scores: list[UserScore]


class SegmentInfo(BaseModel):
    """One entry of the segment catalogue."""

    id: int
    name: str
    description: str
    size: int = Field(description="Training users in the segment.")
    profile: dict[str, float] = Field(description="Segment centroid, natural units.")


class SegmentsResponse(BaseModel):
    """Answer of ``GET /segments``."""

    model_version: str
    segments: list[SegmentInfo]


class ErrorResponse(BaseModel):
    """Body of every error this service answers itself (e.g. 503)."""

    error: str
    detail: str | None = None


class ProfileQuery(BaseModel):
    """What ``GET /users/{user_id}`` reads from its path and query string.

    Validated by the service itself (the route is not a BentoML API), with the
    same id rules as :class:`ScoreRequest`, so an error names the same field.
    """

    model_config = ConfigDict(title="ProfileQuery", extra="forbid")

    user_id: UserId = Field(description="1..128 characters, as in POST /score.")
    events: EventCount | None = Field(
        default=None,
        description="How many of the last events to return, 0.."
        "SEGSCORE_PROFILE_RECENT_EVENTS (default: that setting, 20).",
    )
    top_k: QueryInt = Field(
        default=5,
        ge=1,
        le=MAX_TOP_K,
        description="Contributions in the explanation, as in POST /score.",
    )

    @field_validator("events")
    @classmethod
    def _within_kept(cls, events: int | None, info: ValidationInfo) -> int | None:
        # The worker keeps only profile_recent_events per user, so asking for
        # more is a mistake worth naming; the service passes the setting.
        kept = (info.context or {}).get("max_events")
        if events is not None and kept is not None and events > kept:
            raise ValueError(f"at most {kept} (SEGSCORE_PROFILE_RECENT_EVENTS)")
        return events


class SegmentOfWorker(BaseModel):
    """The segment the stream worker last placed the user in."""

    id: int
    name: str = Field(
        description="Its name in the serving segmenter's catalogue (the worker "
        "places users with the same champion, unless a promotion is under way)."
    )


class RecentEvent(BaseModel):
    """One of the user's last events, in the stream's wire form (docs/events.md)."""

    model_config = ConfigDict(extra="allow")

    event_id: str
    user_id: str
    event_type: str
    ts: int = Field(description="Event time, epoch milliseconds.")


class UserProfile(BaseModel):
    """Answer of ``GET /users/{user_id}``: everything known about one user."""

    user_id: str
    as_of: str = Field(description="The read instant (ISO-8601, UTC).")
    segment: SegmentRef = Field(
        description="The segment as POST /score computes it at as_of."
    )
    live_segment: SegmentOfWorker | None = Field(
        description="The segment the stream worker placed the user in as of "
        "their latest event; null when the worker has not placed them."
    )
    propensity: float = Field(ge=0.0, le=1.0)
    base_value: float
    explanation: list[Contribution] = Field(
        description="Top-k contributions by magnitude, as in POST /score."
    )
    cold_start: bool
    feature_age_seconds: float | None
    stale: bool
    feature_ages: dict[str, float | None] = Field(
        description="Seconds since each stored feature was written, by the name "
        "read online (``state`` stands for every stream feature; the history "
        "features share their view's write time); null where nothing is stored."
    )
    rules: list[RuleMembership]
    recent_events: list[RecentEvent] = Field(
        description="The user's last events, newest first, at most `events`."
    )
    model_versions: dict[str, str]


class ValidationErrorResponse(BaseModel):
    """A 422: the request broke the schema; each bad field is in ``detail[].loc``."""

    error: str
    detail: list[dict[str, Any]]
