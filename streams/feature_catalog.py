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
    HISTORY = "history"  # computed by the backfill from long history, batch view
    REQUEST = "request"  # derived at read time from stored timestamps (ages)


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, meaning, window, unit and storage group."""

    name: str
    description: str
    unit: str
    group: Group
    window: str = ""


STREAM_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("events_1h", "All events", "count", Group.STREAM, "1h"),
    FeatureSpec("events_24h", "All events", "count", Group.STREAM, "24h"),
    FeatureSpec("events_7d", "All events", "count", Group.STREAM, "7d"),
    FeatureSpec("product_views_24h", "Product views", "count", Group.STREAM, "24h"),
    FeatureSpec("cart_adds_24h", "Add-to-cart events", "count", Group.STREAM, "24h"),
    FeatureSpec(
        "cart_removes_24h", "Remove-from-cart events", "count", Group.STREAM, "24h"
    ),
    FeatureSpec("purchases_7d", "Purchase events", "count", Group.STREAM, "7d"),
    FeatureSpec("revenue_7d", "Revenue of purchases", "currency", Group.STREAM, "7d"),
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
    FeatureSpec(
        "first_seen_ts", "Event time of the first event", "epoch s", Group.HISTORY
    ),
)

REQUEST_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "hours_since_last_event",
        "Hours from the latest event to the read time (capped at 90 days)",
        "hours",
        Group.REQUEST,
    ),
    FeatureSpec(
        "days_since_last_purchase",
        "Days from the latest purchase to the read time (capped at 90 days)",
        "days",
        Group.REQUEST,
    ),
    FeatureSpec(
        "tenure_days",
        "Days from the first event to the read time (capped at 90 days)",
        "days",
        Group.REQUEST,
    ),
)

CATALOGUE: dict[str, FeatureSpec] = {
    spec.name: spec for spec in STREAM_FEATURES + HISTORY_FEATURES + REQUEST_FEATURES
}

# Timestamps are stored so ages can be derived at read time; models never see them raw.
TIMESTAMP_FEATURES = frozenset({"last_event_ts", "last_purchase_ts", "first_seen_ts"})

SEGMENTATION_FEATURES: tuple[str, ...] = (
    "events_7d",
    "product_views_24h",
    "cart_adds_24h",
    "purchases_7d",
    "revenue_7d",
    "orders_90d",
    "revenue_90d",
    "avg_order_value_90d",
    "purchase_days_90d",
    "hours_since_last_event",
)

PROPENSITY_FEATURES: tuple[str, ...] = (
    "events_1h",
    "events_24h",
    "events_7d",
    "product_views_24h",
    "cart_adds_24h",
    "cart_removes_24h",
    "purchases_7d",
    "revenue_7d",
    "orders_90d",
    "revenue_90d",
    "avg_order_value_90d",
    "purchase_days_90d",
    "hours_since_last_event",
    "days_since_last_purchase",
    "tenure_days",
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


REQUEST_SOURCES: dict[str, tuple[str, ...]] = {
    "hours_since_last_event": ("last_event_ts",),
    "days_since_last_purchase": ("last_purchase_ts",),
    "tenure_days": ("first_seen_ts",),
}


def markdown_table() -> str:
    """The catalogue as a Markdown table, for the docs."""
    lines = ["| feature | group | window | unit | meaning |", "|---|---|---|---|---|"]
    for spec in CATALOGUE.values():
        lines.append(
            f"| `{spec.name}` | {spec.group} | {spec.window or '-'} | {spec.unit} "
            f"| {spec.description} |"
        )
    return "\n".join(lines)
