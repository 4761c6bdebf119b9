"""The feature catalogue: every feature described once.

Feast definitions, the models' feature lists, the serving response and the docs are
all generated from these specs, so a feature's name, meaning, window and unit cannot
drift between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Group(StrEnum):
    """Where a feature is computed and stored."""

    STREAM = "stream"  # kept fresh by the Faust worker, pushed to the online store
    HISTORY = "history"  # 30/90-day and lifetime, derived from the state when read
    REQUEST = "request"  # derived at read time from stored timestamps (ages)


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, meaning, window, unit and storage group."""

    name: str
    description: str
    unit: str
    group: Group
    window: str = ""


def _windowed(
    stem: str, meaning: str, unit: str, windows: tuple[str, ...]
) -> tuple[FeatureSpec, ...]:
    return tuple(
        FeatureSpec(f"{stem}_{w}", meaning, unit, Group.STREAM, w) for w in windows
    )


_WINDOWS = ("1h", "24h", "7d")

STREAM_FEATURES: tuple[FeatureSpec, ...] = (
    *_windowed("events", "All events", "count", _WINDOWS),
    *_windowed("product_views", "Product views", "count", _WINDOWS),
    *_windowed("cart_adds", "Add-to-cart events", "count", _WINDOWS),
    *_windowed("cart_removes", "Remove-from-cart events", "count", _WINDOWS),
    *_windowed("purchases", "Purchase events", "count", _WINDOWS),
    *_windowed("revenue", "Revenue of purchases", "currency", _WINDOWS),
    *_windowed("sessions", "Distinct sessions with an event", "count", _WINDOWS),
    FeatureSpec(
        "distinct_categories_24h",
        "Distinct product categories touched",
        "count",
        Group.STREAM,
        "24h",
    ),
    FeatureSpec(
        "avg_viewed_price_24h",
        "Mean price of viewed products (0 without priced views)",
        "currency",
        Group.STREAM,
        "24h",
    ),
    FeatureSpec(
        "avg_viewed_price_7d",
        "Mean price of viewed products (0 without priced views)",
        "currency",
        Group.STREAM,
        "7d",
    ),
    FeatureSpec(
        "view_to_cart_rate_7d",
        "Cart adds per product view (0 without views)",
        "ratio",
        Group.STREAM,
        "7d",
    ),
    FeatureSpec(
        "cart_abandonments_24h",
        "Cart adds not followed by a purchase within 30 minutes",
        "count",
        Group.STREAM,
        "24h",
    ),
    FeatureSpec(
        "engagement_score",
        "Events weighted by kind (view 1, cart 3, checkout 4, purchase 5), "
        "decayed with a one-day half-life",
        "score",
        Group.STREAM,
        "decayed",
    ),
    FeatureSpec(
        "last_event_ts", "Event time of the latest event", "epoch s", Group.STREAM
    ),
    FeatureSpec(
        "last_purchase_ts", "Event time of the latest purchase", "epoch s", Group.STREAM
    ),
)

HISTORY_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("orders_90d", "Purchase events", "count", Group.HISTORY, "90d"),
    FeatureSpec(
        "revenue_90d", "Revenue of purchases", "currency", Group.HISTORY, "90d"
    ),
    FeatureSpec(
        "avg_order_value_90d",
        "Revenue per purchase (0 without purchases)",
        "currency",
        Group.HISTORY,
        "90d",
    ),
    FeatureSpec(
        "purchase_days_90d",
        "Distinct days with a purchase",
        "days",
        Group.HISTORY,
        "90d",
    ),
    FeatureSpec("orders_30d", "Purchase events", "count", Group.HISTORY, "30d"),
    FeatureSpec("sessions_30d", "Sessions started", "count", Group.HISTORY, "30d"),
    FeatureSpec("product_views_30d", "Product views", "count", Group.HISTORY, "30d"),
    FeatureSpec("cart_adds_30d", "Add-to-cart events", "count", Group.HISTORY, "30d"),
    FeatureSpec(
        "conversion_rate_30d",
        "Share of active days with a purchase",
        "ratio",
        Group.HISTORY,
        "30d",
    ),
    FeatureSpec(
        "orders_lifetime", "Purchase events", "count", Group.HISTORY, "lifetime"
    ),
    FeatureSpec(
        "revenue_lifetime",
        "Revenue of purchases",
        "currency",
        Group.HISTORY,
        "lifetime",
    ),
    FeatureSpec(
        "purchase_days_lifetime",
        "Distinct days with a purchase",
        "days",
        Group.HISTORY,
        "lifetime",
    ),
    FeatureSpec(
        "purchase_gap_mean_days",
        "Mean gap between consecutive purchase days (0 with fewer than two)",
        "days",
        Group.HISTORY,
        "lifetime",
    ),
    FeatureSpec(
        "purchase_gap_std_days",
        "Standard deviation of the gaps between consecutive purchase days "
        "(0 with fewer than two purchase days)",
        "days",
        Group.HISTORY,
        "lifetime",
    ),
    FeatureSpec(
        "first_purchase_ts",
        "Event time of the first purchase",
        "epoch s",
        Group.HISTORY,
    ),
    FeatureSpec(
        "previous_purchase_ts",
        "Start (00:00 UTC) of the second-latest distinct UTC purchase day by the "
        "read's day (missing with fewer than two purchase days)",
        "epoch s",
        Group.HISTORY,
    ),
    FeatureSpec(
        "first_seen_ts", "Event time of the first event", "epoch s", Group.HISTORY
    ),
)

# Column order of each stored group: the order the feature functions return.
STREAM_NAMES: tuple[str, ...] = tuple(spec.name for spec in STREAM_FEATURES)
HISTORY_NAMES: tuple[str, ...] = tuple(spec.name for spec in HISTORY_FEATURES)

REQUEST_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "hours_since_last_event",
        "Hours from the latest event to the read time (0 if never seen)",
        "hours",
        Group.REQUEST,
    ),
    FeatureSpec(
        "days_since_last_purchase",
        "Days from the latest purchase to the read time "
        "(never purchased: equals tenure_days)",
        "days",
        Group.REQUEST,
    ),
    FeatureSpec(
        "tenure_days",
        "Days from the first event to the read time (0 if never seen)",
        "days",
        Group.REQUEST,
    ),
    FeatureSpec(
        "days_since_first_purchase",
        "Days from the first purchase to the read time "
        "(never purchased: equals tenure_days)",
        "days",
        Group.REQUEST,
    ),
    FeatureSpec(
        "days_since_previous_purchase",
        "Days from the start of the second-latest purchase day to the read time "
        "(fewer than two purchase days: equals tenure_days)",
        "days",
        Group.REQUEST,
    ),
)

# Not a model input: the serialized state the stream features are read from.
STATE_FEATURE = "state"

CATALOGUE: dict[str, FeatureSpec] = {
    spec.name: spec for spec in STREAM_FEATURES + HISTORY_FEATURES + REQUEST_FEATURES
}

# Timestamps are stored so ages can be derived at read time; models never see them raw.
TIMESTAMP_FEATURES = frozenset(
    {
        "last_event_ts",
        "last_purchase_ts",
        "first_seen_ts",
        "first_purchase_ts",
        "previous_purchase_ts",
    }
)

SEGMENTATION_FEATURES: tuple[str, ...] = (
    "events_7d",
    "sessions_7d",
    "view_to_cart_rate_7d",
    "avg_viewed_price_7d",
    "orders_90d",
    "revenue_90d",
    "avg_order_value_90d",
    "purchase_days_90d",
    "sessions_30d",
    "product_views_30d",
    "cart_adds_30d",
    "conversion_rate_30d",
    "hours_since_last_event",
    # Lifetime recency and frequency: what tells customers apart on a
    # purchase-only log, where most of them bought nothing in the last 90 days.
    "orders_lifetime",
    "days_since_last_purchase",
)

PROPENSITY_FEATURES: tuple[str, ...] = (
    "events_1h",
    "events_24h",
    "events_7d",
    "product_views_24h",
    "cart_adds_1h",
    "cart_adds_24h",
    "cart_removes_24h",
    "purchases_7d",
    "revenue_7d",
    "sessions_7d",
    "distinct_categories_24h",
    "avg_viewed_price_24h",
    "cart_abandonments_24h",
    "engagement_score",
    "view_to_cart_rate_7d",
    "orders_90d",
    "revenue_90d",
    "avg_order_value_90d",
    "purchase_days_90d",
    "orders_30d",
    "conversion_rate_30d",
    "hours_since_last_event",
    "days_since_last_purchase",
    "tenure_days",
    "orders_lifetime",
    "revenue_lifetime",
    "purchase_days_lifetime",
    "purchase_gap_mean_days",
    "purchase_gap_std_days",
    "days_since_first_purchase",
    "days_since_previous_purchase",
)


def stored_features(model_features: tuple[str, ...]) -> list[str]:
    """The stored (stream/history) features a model's inputs are derived from."""
    needed: list[str] = []
    for name in model_features:
        spec = CATALOGUE[name]
        if spec.group is Group.REQUEST:
            needed.extend(REQUEST_SOURCES[name])
        else:
            needed.append(name)
    return list(dict.fromkeys(needed))


# The timestamps each age is derived from, fallbacks included (see
# core.feature_math.request_features: a purchase age of someone who never
# purchased falls back to the tenure).
REQUEST_SOURCES: dict[str, tuple[str, ...]] = {
    "hours_since_last_event": ("last_event_ts", "first_seen_ts"),
    "days_since_last_purchase": ("last_purchase_ts", "first_seen_ts"),
    "tenure_days": ("first_seen_ts",),
    "days_since_first_purchase": (
        "first_purchase_ts",
        "last_purchase_ts",
        "first_seen_ts",
    ),
    "days_since_previous_purchase": ("previous_purchase_ts", "first_seen_ts"),
}


def markdown_table() -> str:
    """The catalogue as a Markdown table, for the docs."""
    lines = [
        "# Feature catalogue",
        "",
        "Generated from `core/feature_catalog.py` by `segscore catalogue`; "
        "a test keeps this file equal to it.",
        "Windows are read at request time from bucketed state "
        "(see `core/feature_math.py`).",
        "",
        "| feature | group | window | unit | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in CATALOGUE.values():
        lines.append(
            f"| `{spec.name}` | {spec.group} | {spec.window or '-'} | {spec.unit} "
            f"| {spec.description} |"
        )
    return "\n".join(lines) + "\n"
