"""Segment names and descriptions, made from each segment's feature profile.

The vocabulary follows the features that vary in the data the segmenter used:
browsing names ("Window shoppers", "Lapsed visitors") need a browsing feature
that varies, "Cart abandoners" needs a cart feature that varies, so a
purchase-only log gets buyer names only (lapsed, one-time, repeat, recent,
high-value). Names are plain, unique and at most four words; a description
states the one or two features that set the segment apart, in plain units.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.feature_catalog import CATALOGUE
from core.registry import Segment

# Behaviour a feature speaks to; names and qualifiers are chosen per role.
_ROLE_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("frequency", ("orders_", "purchases_", "purchase_days_")),
    ("monetary", ("revenue_",)),
    ("basket", ("avg_order_value",)),
    ("idle", ("hours_since_last_event", "days_since_last_")),
    ("activity", ("events_", "sessions_", "engagement_score")),
    ("browsing", ("product_views_", "avg_viewed_price_", "distinct_categories_")),
    ("cart", ("cart_adds_", "cart_abandonments_", "cart_removes_", "view_to_cart")),
    ("conversion", ("conversion_rate",)),
    ("tenure", ("tenure_days", "days_since_first_")),
)

# Qualifier for a segment above / below the others sharing its name.
_ADJECTIVES: dict[str, tuple[str, str]] = {
    "idle": ("Lapsed", "Recent"),
    "monetary": ("High-spend", "Low-spend"),
    "basket": ("Big-basket", "Small-basket"),
    "frequency": ("Frequent", "Infrequent"),
    "activity": ("Active", "Quiet"),
    "browsing": ("Heavy-browsing", "Light-browsing"),
    "cart": ("Cart-heavy", "Cart-light"),
    "conversion": ("High-converting", "Low-converting"),
    "tenure": ("Long-standing", "New"),
}

# Plain-unit phrases; {v} is the segment's mean in the feature's unit.
_PHRASES: dict[str, str] = {
    "events_24h": "{v} events in 24 hours",
    "events_7d": "{v} events in 7 days",
    "sessions_7d": "{v} sessions in 7 days",
    "sessions_30d": "{v} sessions in 30 days",
    "product_views_24h": "{v} product views in 24 hours",
    "product_views_30d": "{v} product views in 30 days",
    "cart_adds_24h": "{v} cart adds in 24 hours",
    "cart_adds_30d": "{v} cart adds in 30 days",
    "cart_abandonments_24h": "{v} abandoned carts in 24 hours",
    "view_to_cart_rate_7d": "{v} cart adds per product view",
    "avg_viewed_price_7d": "mean viewed price {v}",
    "purchases_7d": "{v} purchases in 7 days",
    "revenue_7d": "{v} spent in 7 days",
    "orders_30d": "{v} orders in 30 days",
    "orders_90d": "{v} orders in 90 days",
    "revenue_90d": "{v} spent in 90 days",
    "avg_order_value_90d": "{v} per order",
    "purchase_days_90d": "{v} purchase days in 90 days",
    "conversion_rate_30d": "buys on {v} of active days",
    "hours_since_last_event": "last event {v} ago",
    "days_since_last_purchase": "last purchase {v} days ago",
    "tenure_days": "first seen {v} days ago",
    "days_since_first_purchase": "first purchase {v} days ago",
    "orders_lifetime": "{v} orders in all",
    "revenue_lifetime": "{v} spent in all",
    "purchase_days_lifetime": "{v} purchase days in all",
    "purchase_gap_mean_days": "{v} days between purchases",
    "engagement_score": "engagement score {v}",
}

_SHARES = frozenset({"conversion_rate_30d"})
_RATIOS = frozenset({"view_to_cart_rate_7d"})


def feature_role(feature: str) -> str | None:
    """The behaviour a feature speaks to (``"frequency"``, ``"idle"`` ...), if any."""
    for role, prefixes in _ROLE_PREFIXES:
        if feature.startswith(prefixes):
            return role
    return None


def describe_segments(
    frame: pd.DataFrame,
    labels: np.ndarray,
    features: Sequence[str],
    weights: Mapping[str, float] | None = None,
) -> list[Segment]:
    """Name and describe each segment from its profile vs. the population.

    Gaps are standardised on the log1p scale the model clusters on (robust to
    a few whales). Only features that vary in ``frame`` take part, so a
    purchase-only log never yields browsing or cart names.

    Args:
        frame: Raw (unscaled) feature values, one row per user.
        labels: Segment id of each row.
        features: Columns to profile.
        weights: Relative weight of each feature in the distance (default 1);
            lightly weighted features are mentioned less readily.

    Returns:
        One :class:`Segment` per id, ordered by id, with unique names; the
        description is ``"<name>: <feature> vs. <average>; <feature> vs. ..."``
        and the profile holds the segment's raw feature means.
    """
    features = list(features)
    weights = weights or {}
    values = frame[features].to_numpy(dtype=np.float64)
    logs = np.log1p(np.maximum(values, 0.0))
    pop_std = logs.std(axis=0)
    varies = pop_std > 1e-12
    pop_mean = values.mean(axis=0)
    roles = [feature_role(n) for n in features]
    vocab = {r for r, v in zip(roles, varies, strict=True) if r is not None and v}
    ids = sorted(set(labels.tolist()))
    members = [labels == seg_id for seg_id in ids]
    means = np.array([values[m].mean(axis=0) for m in members])
    gaps = _gaps(logs, members, np.ones(len(logs), dtype=bool))
    # How much a segment buys is judged against the users who bought in the
    # windows: against everyone, a log where most users did not buy lately
    # makes every recent buyer look frequent and big-basket.
    buyers, ever = _bought(values, features)
    buying = _gaps(logs, members, buyers) if buyers.sum() >= 2 else gaps
    buying_role = np.array([r in _BUYING_ROLES for r in roles], dtype=bool)
    role_gaps = [
        _role_gaps(np.where(buying_role, b, g), roles, varies)
        for g, b in zip(gaps, buying, strict=True)
    ]
    bases = [
        _base_name(role_gaps[i], _Buying.of(values, m, buyers, ever, features), vocab)
        for i, m in enumerate(members)
    ]
    names = _unique_names(bases, role_gaps, vocab)
    weight = np.array([weights.get(n, 1.0) for n in features])
    # Per-order amounts and purchase ages mean nothing for users without orders
    # (0, or the tenure): they are quoted among buyers, and not for segments
    # that hardly buy.
    basket = np.array([_role_of_order(n) for n in features], dtype=bool)
    ages = np.array([_age_of_purchase(n) for n in features], dtype=bool)
    quoted_pop = pop_mean.copy()
    quoted_gaps = gaps.copy()
    for mask, who in ((basket, buyers), (ages, ever)):
        if who.sum() >= 2:
            quoted_pop[mask] = values[who][:, mask].mean(axis=0)
            quoted_gaps[:, mask] = _gaps(logs, members, who)[:, mask]
    segments = []
    for i, seg_id in enumerate(ids):
        quoted = means[i].copy()
        mentionable = varies.copy()
        for mask, who in ((basket, buyers), (ages, ever)):
            mine = members[i] & who
            if mine.sum() < 0.2 * members[i].sum():
                mentionable &= ~mask
            elif mine.any():
                quoted[mask] = values[mine][:, mask].mean(axis=0)
        picked = _distinguishing(i, quoted_gaps, weight, mentionable)
        text = "; ".join(_phrase(features[j], quoted[j], quoted_pop[j]) for j in picked)
        segments.append(
            Segment(
                id=int(seg_id),
                name=names[i],
                description=f"{names[i]}: {text or 'close to average'}",
                size=int(members[i].sum()),
                profile={n: float(v) for n, v in zip(features, means[i], strict=True)},
            )
        )
    return segments


_BUYING_ROLES = frozenset({"frequency", "monetary", "basket"})


def _role_of_order(feature: str) -> bool:
    """Per-order amounts: 0 for users without an order in the window."""
    return feature_role(feature) == "basket"


def _age_of_purchase(feature: str) -> bool:
    """Purchase ages: the tenure for users who never bought."""
    return feature.startswith(
        ("days_since_last_purchase", "days_since_first_purchase", "purchase_gap_")
    )


def _lifetime(feature: str) -> bool:
    return feature.endswith("_lifetime")


def _gaps(
    logs: np.ndarray, members: Sequence[np.ndarray], ref: np.ndarray
) -> np.ndarray:
    """Segment mean minus reference mean on the log1p scale, in reference sd."""
    mean, std = logs[ref].mean(axis=0), logs[ref].std(axis=0)
    ok = std > 1e-12
    diff = np.array([logs[m].mean(axis=0) - mean for m in members])
    return np.where(ok, diff / np.where(ok, std, 1.0), 0.0)


def _bought(
    values: np.ndarray, features: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Users with an order in a window, and users who ever ordered.

    Without a lifetime count everyone counts as having ordered once (a
    transaction log holds only customers).
    """
    window = [
        j
        for j, n in enumerate(features)
        if feature_role(n) == "frequency" and not _lifetime(n)
    ]
    lifetime = [
        j
        for j, n in enumerate(features)
        if feature_role(n) == "frequency" and _lifetime(n)
    ]
    every = np.ones(len(values), dtype=bool)
    recent = (values[:, window] > 0).any(axis=1) if window else every
    ever = (values[:, lifetime] > 0).any(axis=1) | recent if lifetime else every
    return recent, ever


def _role_gaps(
    gaps: np.ndarray, roles: Sequence[str | None], varies: np.ndarray
) -> dict[str, float]:
    by_role: dict[str, list[float]] = {}
    for gap, role, ok in zip(gaps, roles, varies, strict=True):
        if role is not None and ok:
            by_role.setdefault(role, []).append(float(gap))
    return {role: float(np.mean(g)) for role, g in by_role.items()}


@dataclass(frozen=True)
class _Buying:
    """How a segment's members buy: shares of recent, past, one-time buyers."""

    recent_share: float  # ordered in a window
    # The rest need a lifetime count (None without one): ever ordered, ordered
    # exactly once, ordered twice or more.
    ever_share: float | None
    one_time_share: float | None = None
    repeat_share: float | None = None

    @classmethod
    def of(
        cls,
        values: np.ndarray,
        members: np.ndarray,
        recent: np.ndarray,
        ever: np.ndarray,
        features: Sequence[str],
    ) -> _Buying:
        lifetime = [
            j
            for j, n in enumerate(features)
            if feature_role(n) == "frequency" and _lifetime(n)
        ]
        if not members.any():
            return cls(0.0, None, None)
        share = float(recent[members].mean())
        if not lifetime:
            return cls(share, None, None)
        # Purchase days, when present, count "one-time" as one buying day.
        days = [j for j in lifetime if features[j].startswith("purchase_days")]
        count = values[members, (days or lifetime)[0]]
        return cls(
            share,
            float(ever[members].mean()),
            float(np.mean(count == 1)),
            float(np.mean(count >= 2)),
        )


def _base_name(
    g: dict[str, float], buying: _Buying, vocab: set[str]
) -> tuple[str, frozenset[str]]:
    """A plain name and the roles it already speaks to.

    A lifetime order count tells one-time from repeat buyers; without it a
    90-day window cannot, so those names need it.
    """

    def gap(role: str) -> float:
        return g.get(role, 0.0)

    one_time = (buying.one_time_share or 0.0) >= 0.75
    repeat = (buying.repeat_share or 0.0) >= 0.75
    if gap("frequency") >= 0.75 and gap("monetary") >= 0.75:
        return "High-value frequent buyers", frozenset({"frequency", "monetary"})
    lapsed = gap("idle") >= 0.75 or gap("activity") <= -1.0
    if buying.recent_share < 0.2:
        if buying.ever_share is not None and buying.ever_share >= 0.5:
            # Bought before the windows, not in them.
            if one_time:
                return "Lapsed one-time buyers", frozenset({"idle", "frequency"})
            if repeat:
                return "Lapsed repeat buyers", frozenset({"idle", "frequency"})
            return "Lapsed buyers", frozenset({"idle"})
        if "cart" in vocab and gap("cart") >= 0.3:
            return "Cart abandoners", frozenset({"cart", "frequency"})
        if "browsing" in vocab:
            if lapsed:
                return "Lapsed visitors", frozenset({"idle", "activity", "frequency"})
            return "Window shoppers", frozenset({"browsing", "frequency"})
        # Purchase-only data: these customers bought before the windows.
        return "Lapsed customers", frozenset({"idle", "frequency"})
    if lapsed:
        return "Lapsed buyers", frozenset({"idle", "activity"})
    if gap("basket") >= 0.75:
        return "Big-basket buyers", frozenset({"basket"})
    if gap("basket") <= -0.5:
        return "Bargain buyers", frozenset({"basket"})
    if one_time:
        return "One-time buyers", frozenset({"frequency"})
    if gap("frequency") >= 0.5 or repeat:
        return "Repeat buyers", frozenset({"frequency"})
    if gap("idle") <= -0.75:
        return "Recent buyers", frozenset({"idle"})
    return "Occasional buyers", frozenset({"frequency"})


def _unique_names(
    bases: Sequence[tuple[str, frozenset[str]]],
    role_gaps: Sequence[dict[str, float]],
    vocab: set[str],
) -> list[str]:
    """Qualify names that several segments share by what sets each apart.

    Each segment sharing a name takes the adjective of the role where it differs
    most from the others of that name ("Recent occasional buyers" beside
    "Lapsed occasional buyers"); a number is the last resort.
    """
    names = [base for base, _ in bases]
    taken = set(names)
    for base in dict.fromkeys(names):
        group = [i for i, (b, _) in enumerate(bases) if b == base]
        if len(group) < 2:
            continue
        taken.discard(base)
        for i in group:
            others = [j for j in group if j != i]
            contrast = {
                role: role_gaps[i].get(role, 0.0)
                - float(np.mean([role_gaps[j].get(role, 0.0) for j in others]))
                for role in vocab
                if role in _ADJECTIVES and role not in bases[i][1]
            }
            name = base
            for role in sorted(contrast, key=lambda r: -abs(contrast[r])):
                adjective = _ADJECTIVES[role][0 if contrast[role] > 0 else 1]
                candidate = f"{adjective} {base[0].lower()}{base[1:]}"
                if adjective.lower() not in base.lower() and candidate not in taken:
                    name = candidate
                    break
            suffix = 2
            while name in taken:
                name, suffix = f"{base} {suffix}", suffix + 1
            names[i] = name
            taken.add(name)
    return names


def _distinguishing(
    i: int, gaps: np.ndarray, weight: np.ndarray, varies: np.ndarray
) -> list[int]:
    """The feature most apart from the population, then the one most apart from
    the nearest other segment (so neighbours' descriptions differ)."""
    if not varies.any():
        return []
    score = np.where(varies, np.abs(gaps[i]) * weight, -1.0)
    first = int(np.argmax(score))
    picked = [first]
    if len(gaps) > 1:
        distance = np.linalg.norm(gaps - gaps[i], axis=1)
        distance[i] = np.inf
        nearest = int(np.argmin(distance))
        apart = np.where(varies, np.abs(gaps[i] - gaps[nearest]) * weight, -1.0)
        # Also apart from the population, so the quoted average shows a difference.
        apart[(np.abs(gaps[i]) < 0.25) | (np.arange(len(apart)) == first)] = -1.0
        second = int(np.argmax(apart))
        if apart[second] > 0:
            picked.append(second)
    return picked


def _plain(value: float) -> str:
    if abs(value) < 0.005:
        return "0"
    if abs(value) < 1:
        return f"{value:.2f}"
    if abs(value) < 10:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _phrase(feature: str, value: float, average: float) -> str:
    """``"2.1 orders in 90 days vs. 0.8 on average"``, in the feature's unit."""
    if feature in _SHARES:
        seg, pop = f"{value:.0%}", f"{average:.0%}"
    elif feature in _RATIOS:
        seg, pop = _plain(value), _plain(average)
    elif feature.startswith("hours_"):
        days = max(value, average) >= 48
        scale, unit = (24.0, "days") if days else (1.0, "hours")
        seg, pop = f"{_plain(value / scale)} {unit}", _plain(average / scale)
    else:
        seg, pop = _plain(value), _plain(average)
    template = _PHRASES.get(feature)
    if template is None:
        spec = CATALOGUE.get(feature)
        label = spec.description if spec else feature.replace("_", " ")
        # Catalogue descriptions carry notes in parentheses; names stay flat.
        label = re.sub(r"\s*\([^)]*\)", "", label).strip().lower()
        template = f"{label} {{v}}"
    return f"{template.format(v=seg)} vs. {pop} on average"
