"""The pure parts of a user's profile (``GET /users/{user_id}``) and of /score's rules.

Nothing here does I/O: the service reads the user's hash fields and recent-events
list from Redis in one round trip and hands the raw values here, with the read
instant. So what a profile shows is testable without Redis or BentoML.

Rule memberships come from the worker's :data:`core.store.state_store.MEMBERS_FIELD`
(``{rule: [since, until|null]}``); one is active at ``t`` when ``since <= t`` and
``until`` is null or later than ``t`` (:meth:`core.rules.state.RuleState.active`,
the worker's own test). The worker's live segment comes from the dedupe field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from core import scoring
from core.store.recent_events import decode_recent
from core.store.state_store import decode_member_spans
from core.user_state import UserState
from serving.schemas import ProfileQuery

logger = logging.getLogger(__name__)


def iso(epoch_seconds: float) -> str:
    """An epoch time as ISO-8601 in UTC with a ``Z`` (millisecond precision)."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def active_rules(raw: bytes | None, at: float) -> list[dict[str, Any]]:
    """The memberships of a stored members field active at ``at``, oldest first.

    Args:
        raw: The :data:`~core.store.state_store.MEMBERS_FIELD` value, or None.
        at: The instant, epoch seconds.

    Returns:
        ``{"rule", "since", "until"}`` per membership (times ISO-8601, ``until``
        None when open), by ``since`` then rule name, so answers are stable. A
        membership whose time cannot be written as a date is left out.
    """
    if not raw:
        # Most users are in no rule: /score pays one test for them.
        return []
    # RuleState.active's test (since <= at < until), written out rather than
    # called: a RuleState and a Membership per entry were most of the cost, and
    # /score runs this for every user in a rule. tests/unit/serving/
    # test_profile.py holds the two to the same answers.
    active = sorted(
        (since, rule, until)
        for rule, (since, until) in decode_member_spans(raw).items()
        if since <= at and (until is None or at < until)
    )
    rules = []
    for since, rule, until in active:
        try:
            end = None if until is None else _iso_cached(until)
            rules.append({"rule": rule, "since": _iso_cached(since), "until": end})
        except (OverflowError, OSError, ValueError):
            continue
    return rules


# A user's membership times stay the same from one request to the next, so
# their text is kept (about 2 MB at most); formatting was ~2 us per time.
_iso_cached = lru_cache(maxsize=8192)(iso)


def add_rules(
    scores: Sequence[dict[str, Any]], members: Sequence[bytes | None], at: float
) -> None:
    """Give each score of a /score payload its active memberships at ``at``."""
    for entry, raw in zip(scores, members, strict=True):
        entry["rules"] = active_rules(raw, at)


def live_segment(
    dedupe: bytes | None, names: Mapping[int, str]
) -> dict[str, Any] | None:
    """The segment the worker last placed the user in, or None.

    Named from the serving segmenter's catalogue (``names``), as /score names
    its segments. A dedupe field that cannot be read gives None (logged): the
    profile still answers with everything else.
    """
    if not dedupe:
        return None
    try:
        segment = UserState.from_bytes(None, dedupe).segment
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        logger.warning("unreadable worker data in a profile: %r", exc)
        return None
    if segment is None:
        return None
    return {"id": segment, "name": names.get(segment, f"segment {segment}")}


def feature_ages_by_name(
    stored: scoring.StoredColumns, names: Sequence[str], as_of: float
) -> dict[str, float | None]:
    """Each stored feature's age at ``as_of`` (``core.scoring.feature_ages``)."""
    return {name: scoring.feature_ages(stored, (name,), 1, as_of)[0] for name in names}


def parse_query(
    user_id: str, params: Sequence[tuple[str, str]], max_events: int
) -> ProfileQuery | list[dict[str, Any]]:
    """The profile request, or its errors in the shape of /score's 422 ``detail``.

    ``params`` are the query string's pairs; a name given twice is an error (which
    value was meant cannot be known), as is a name the endpoint does not take.
    """
    values: dict[str, Any] = {"user_id": user_id}
    repeated = []
    for name, value in params:
        if name in values:
            repeated.append(name)
        values[name] = value
    if repeated:
        return [
            {"type": "repeated", "loc": [name], "msg": "given more than once"}
            for name in sorted(set(repeated))
        ]
    try:
        return ProfileQuery.model_validate(values, context={"max_events": max_events})
    except ValidationError as exc:
        return [
            {"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False)
        ]


def profile_payload(
    user_id: str,
    score: dict[str, Any],
    model_versions: dict[str, str],
    as_of: float,
    *,
    rules: list[dict[str, Any]],
    live: dict[str, Any] | None,
    events: list[dict[str, Any]],
    ages: dict[str, float | None],
) -> dict[str, Any]:
    """The ``GET /users/{user_id}`` body (:class:`serving.schemas.UserProfile`).

    ``score`` is the user's entry of :func:`core.scoring.score`'s payload, so the
    segment, propensity and explanation are exactly what /score answers.
    """
    return {
        "user_id": user_id,
        "as_of": iso(as_of),
        "segment": score["segment"],
        "live_segment": live,
        "propensity": score["propensity"],
        "base_value": score["base_value"],
        "explanation": score["explanation"],
        "cold_start": score["cold_start"],
        "feature_age_seconds": score["feature_age_seconds"],
        "stale": score["stale"],
        "feature_ages": ages,
        "rules": rules,
        "recent_events": events,
        "model_versions": model_versions,
    }


def recent_events(reply: object) -> list[dict[str, Any]]:
    """The events of the profile's ``LRANGE`` reply (an error reply: none, logged)."""
    if isinstance(reply, list):
        return decode_recent(reply)
    if reply is not None:
        logger.warning("recent events unreadable in a profile: %r", reply)
    return []
