"""The segmenter on frames shaped like real logs: duplicate rows, purchase-only
data, a dominant mode, and the names and descriptions it gives them."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_score

from core.registry import SegmenterBundle
from training.report.segmenter_section import segmenter_section
from training.segmenter import DOMINANT_SHARE, dominant_mode_sentence, fit_segmenter

# The inputs fixed here (not read from the catalogue) so the frames below keep
# their meaning when the catalogue's segmentation list changes.
FEATURES = (
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
)
LIFETIME_FEATURES = (*FEATURES, "orders_lifetime", "days_since_last_purchase")
BROWSING_WORDS = ("shopper", "brows", "visitor", "abandon", "cart", "view")
K_RANGE = range(2, 6)


def clickstream(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Browsers (no carts, no orders), cart abandoners (no orders), buyers."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, n, p=[0.45, 0.3, 0.25])

    def noise() -> np.ndarray:
        return rng.lognormal(0.0, 0.3, n)

    views = 30 * noise()
    carts = np.where(kind == 0, 0.0, np.where(kind == 1, 8.0, 3.0) * noise())
    orders = np.where(kind == 2, 2 * noise(), 0.0)
    basket = np.where(kind == 2, 50 * noise(), 0.0)
    columns = {
        "events_7d": 15 * noise(),
        "sessions_7d": 3 * noise(),
        "view_to_cart_rate_7d": carts / views,
        "avg_viewed_price_7d": 40 * noise(),
        "orders_90d": orders,
        "revenue_90d": orders * basket,
        "avg_order_value_90d": basket,
        "purchase_days_90d": 0.9 * orders,
        "sessions_30d": 10 * noise(),
        "product_views_30d": views,
        "cart_adds_30d": carts,
        "conversion_rate_30d": np.where(kind == 2, 0.3 * noise(), 0.0),
        "hours_since_last_event": 60 * noise(),
    }
    return pd.DataFrame(columns)[list(FEATURES)], kind


def purchase_only(
    n: int = 900, lapsed: float = 0.7, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """A transaction log's customers: every view and cart feature is 0.

    ``lapsed`` of them bought only before the 90-day window, so they share one
    feature vector (zeros, last event at the 90-day cap), as on real logs.
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, n, p=[lapsed, (1 - lapsed) * 2 / 3, (1 - lapsed) / 3])
    f = {c: np.zeros(n) for c in FEATURES}
    f["hours_since_last_event"] = np.full(n, 2160.0)
    orders = np.where(kind == 2, 2 + rng.poisson(3, n), 1).astype(float)
    value = rng.lognormal(3.5, 0.5, n)
    hours = np.where(kind == 2, rng.exponential(150, n), rng.uniform(1, 2159, n))
    bought = kind > 0
    f["orders_90d"][bought] = orders[bought]
    f["purchase_days_90d"][bought] = orders[bought]
    f["revenue_90d"][bought] = (orders * value)[bought]
    f["avg_order_value_90d"][bought] = value[bought]
    f["hours_since_last_event"][bought] = hours[bought]
    week, month = bought & (hours < 168), bought & (hours < 720)
    f["events_7d"][week] = f["sessions_7d"][week] = 1.0
    f["sessions_30d"][month] = np.minimum(orders[month], 3)
    f["conversion_rate_30d"][month] = 1.0
    return pd.DataFrame(f)[list(FEATURES)], kind


def purchase_only_lifetime(
    n: int = 900, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """A transaction log with lifetime counts and uncapped purchase ages.

    Kinds: 0 lapsed one-time, 1 lapsed repeat, 2 recent one-time, 3 recent
    repeat buyers; no view or cart feature varies.
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, n, p=[0.5, 0.2, 0.15, 0.15])
    f = {c: np.zeros(n) for c in LIFETIME_FEATURES}
    repeat, recent = (kind == 1) | (kind == 3), kind >= 2
    days = np.where(
        recent,
        np.where(kind == 3, rng.exponential(10, n), rng.uniform(0, 89, n)),
        rng.uniform(90, 700, n),
    )
    value = rng.lognormal(3.5, 0.5, n)
    in_window = np.where(
        kind == 3, 1 + rng.poisson(2, n), np.where(recent, 1, 0)
    ).astype(float)
    f["orders_lifetime"] = np.where(repeat, in_window + 2 + rng.poisson(3, n), 1.0)
    f["days_since_last_purchase"] = days
    f["hours_since_last_event"] = 24 * days
    f["orders_90d"] = f["purchase_days_90d"] = in_window
    f["revenue_90d"] = in_window * value
    f["avg_order_value_90d"] = np.where(in_window > 0, value, 0.0)
    week, month = recent & (days < 7), recent & (days < 30)
    f["events_7d"][week] = f["sessions_7d"][week] = 1.0
    f["sessions_30d"][month] = f["conversion_rate_30d"][month] = 1.0
    return pd.DataFrame(f)[list(LIFETIME_FEATURES)], kind


def _assert_plain_names(bundle: SegmenterBundle) -> None:
    names = [s.name for s in bundle.segments]
    descriptions = [s.description for s in bundle.segments]
    assert len(set(names)) == len(names), names
    assert len(set(descriptions)) == len(descriptions), descriptions
    for segment in bundle.segments:
        assert "(" not in segment.name and ")" not in segment.name, segment.name
        assert len(segment.name.split()) <= 4, segment.name
        assert segment.description.startswith(segment.name + ": ")
        # Descriptions may not nest parentheses either.
        assert not re.search(r"\([^)]*\(", segment.description), segment.description


@pytest.fixture(scope="module")
def clicks() -> tuple[pd.DataFrame, np.ndarray, SegmenterBundle]:
    frame, kind = clickstream()
    return frame, kind, fit_segmenter(frame, FEATURES, k_range=K_RANGE)


def test_duplicate_rows_change_neither_k_nor_silhouette(
    clicks: tuple[pd.DataFrame, np.ndarray, SegmenterBundle],
) -> None:
    frame, kind, plain = clicks
    # 5,000 users with exactly one browser's feature vector.
    copy = frame[kind == 0].median().to_numpy()
    copies = pd.DataFrame(np.tile(copy, (5000, 1)), columns=frame.columns)
    padded = pd.concat([frame, copies], ignore_index=True)
    bundle = fit_segmenter(padded, FEATURES, k_range=K_RANGE)

    assert bundle.metrics["k"] == plain.metrics["k"] == 3
    assert bundle.metrics["silhouette"] == pytest.approx(
        plain.metrics["silhouette"], abs=0.03
    )
    assert bundle.metrics["n_distinct_rows"] == len(frame) + 1
    assert bundle.metrics["identical_share"] == pytest.approx(5000 / len(padded))
    # The copies are a mode of the data: reported, not split.
    assert plain.metrics["dominant_mode"] == 0.0
    assert bundle.metrics["dominant_mode"] == 1.0
    assert "identical feature values" in dominant_mode_sentence(bundle.metrics)
    # The copies would have inflated a silhouette taken over rows: it is the
    # silhouette the segmenter used to report on this frame.
    data = padded.to_numpy(dtype=np.float64)
    rows = np.random.default_rng(0).choice(len(data), 3000, replace=False)
    space = bundle.pipeline[:-1].transform(data[rows])
    by_rows = silhouette_score(space, bundle.assign(data[rows]))
    assert by_rows > bundle.metrics["silhouette"] + 0.2
    # Every copy lands in the browsers' segment.
    labels = bundle.assign(data)
    assert len(set(labels[len(frame) :].tolist())) == 1
    assert adjusted_rand_score(kind, labels[: len(frame)]) > 0.9


def test_clickstream_names_reach_cart_abandoners(
    clicks: tuple[pd.DataFrame, np.ndarray, SegmenterBundle],
) -> None:
    frame, kind, bundle = clicks
    _assert_plain_names(bundle)
    labels = bundle.assign(frame.to_numpy(dtype=np.float64))
    by_name = {s.name: s.id for s in bundle.segments}
    assert "Cart abandoners" in by_name
    # The abandoners' segment is the users who add to cart and never buy.
    majority = np.bincount(kind[labels == by_name["Cart abandoners"]]).argmax()
    assert majority == 1
    assert "Window shoppers" in by_name


def _fit_purchase_only(
    frame: pd.DataFrame, features: tuple[str, ...]
) -> tuple[SegmenterBundle, np.ndarray, dict[int, str]]:
    """Fit on a purchase-only frame; plain names and no browsing words asserted."""
    bundle = fit_segmenter(frame, features, k_range=K_RANGE)
    _assert_plain_names(bundle)
    for segment in bundle.segments:
        text = segment.description.lower()
        assert not any(w in text for w in BROWSING_WORDS), segment.description
    labels = bundle.assign(frame.to_numpy(dtype=np.float64))
    return bundle, labels, {s.id: s.name for s in bundle.segments}


def test_purchase_only_log_gets_buyer_names_and_one_mode() -> None:
    frame, kind = purchase_only()
    bundle, labels, names = _fit_purchase_only(frame, FEATURES)
    # Every lapsed customer (one shared vector) is in the segment named for them.
    assert {names[i] for i in labels[kind == 0].tolist()} == {"Lapsed customers"}
    repeat = [names[i].lower() for i in labels[kind == 2].tolist()]
    named = np.mean([("frequent" in n or "repeat" in n) for n in repeat])
    assert named >= 0.9, repeat
    # 70% of users share one vector: no k can split them, and the bundle says so.
    assert bundle.metrics["dominant_mode"] == 1.0
    assert bundle.metrics["largest_share"] > DOMINANT_SHARE
    sentence = dominant_mode_sentence(bundle.metrics)
    assert "one dominant mode" in sentence
    assert f"{bundle.metrics['identical_share']:.0%} of users have identical" in (
        sentence
    )
    result = SimpleNamespace(segmenter=bundle, segmentation_frame=frame)
    section = html.unescape(segmenter_section(result))  # type: ignore[arg-type]
    assert sentence in section


def test_purchase_only_log_with_lifetime_counts_names_lapsed_and_one_time() -> None:
    frame, kind = purchase_only_lifetime()
    bundle, labels, names = _fit_purchase_only(frame, LIFETIME_FEATURES)

    def majority(k: int) -> str:
        return names[int(np.bincount(labels[kind == k]).argmax())]

    assert majority(0) == "Lapsed one-time buyers"
    assert majority(1) == "Lapsed repeat buyers"
    assert majority(2) == "One-time buyers"
    assert "lapsed" not in majority(3).lower()
    assert bundle.metrics["dominant_mode"] == 0.0


def test_purchase_only_without_a_dominant_mode_is_not_flagged() -> None:
    frame, _ = purchase_only(lapsed=0.4)
    bundle = fit_segmenter(frame, FEATURES, k_range=K_RANGE)
    _assert_plain_names(bundle)
    assert bundle.metrics["dominant_mode"] == 0.0
    assert bundle.metrics["largest_share"] <= DOMINANT_SHARE
    assert dominant_mode_sentence(bundle.metrics) == ""
    assert not any(w in s.name.lower() for s in bundle.segments for w in BROWSING_WORDS)


def _two_modes_one_split(d: float = 2.0, n: int = 900) -> pd.DataFrame:
    """Mode A (70%) holds two sub-groups ``d`` apart in one feature; mode B
    (30%) is far from A in five features. Splitting A costs some silhouette."""
    rng = np.random.default_rng(0)
    kind = rng.choice(3, n, p=[0.35, 0.35, 0.3])
    columns = {"x": np.where(kind == 1, 3 + d, 3.0) + rng.normal(0, 0.3, n)}
    for j in range(5):
        columns[f"y{j}"] = np.where(kind == 2, 6.0, 3.0) + rng.normal(0, 0.3, n)
    return pd.DataFrame({c: np.expm1(v) for c, v in columns.items()})


def test_a_dominant_segment_is_split_when_silhouette_allows() -> None:
    frame = _two_modes_one_split()
    bundle = fit_segmenter(frame, list(frame.columns), k_range=K_RANGE)
    m = bundle.metrics
    # k=2 scores best but leaves 70% in one segment; k=3 splits it.
    assert m["silhouette_k2"] > m["silhouette_k3"]
    assert m["k"] == 3
    assert m["largest_share"] <= DOMINANT_SHARE
    assert m["dominant_mode"] == 0.0
    _assert_plain_names(bundle)


def test_ids_stay_stable_across_retrains_on_distinct_rows() -> None:
    frame, _ = purchase_only(lapsed=0.4)
    first = fit_segmenter(frame, FEATURES, k_range=K_RANGE, seed=0)
    second = fit_segmenter(frame, FEATURES, k_range=K_RANGE, seed=5, previous=first)
    data = frame.to_numpy(dtype=np.float64)
    assert np.mean(first.assign(data) == second.assign(data)) > 0.95
    assert [s.name for s in first.segments] == [s.name for s in second.segments]
