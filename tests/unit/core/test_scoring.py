"""The scoring path without I/O: inputs, cold start, SHAP, top-k, ages, schemas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from core.events import Event
from core.feature_catalog import (
    HISTORY_NAMES,
    PROPENSITY_FEATURES,
    SEGMENTATION_FEATURES,
    STATE_FEATURE,
)
from core.feature_math import history_values
from core.scoring import (
    ScoringModels,
    build_inputs,
    change_reasons,
    feature_ages,
    place,
    score,
    segment_catalogue,
    top_contributions,
    with_read_time_features,
)
from core.user_state import Outcome, UserState, apply_event
from serving.schemas import ScoreRequest, ScoreResponse, SegmentsResponse
from tests.support.model_bundles import tiny_bundles

AS_OF = 1_800_000_000.0
HOUR = 3600.0
DAY = 86_400.0


@pytest.fixture(scope="module")
def models() -> ScoringModels:
    return ScoringModels.from_bundles(*tiny_bundles())


def _known_user(**overrides: float | None) -> dict[str, float | None]:
    row: dict[str, float | None] = {
        "events_1h": 3.0,
        "events_24h": 12.0,
        "events_7d": 40.0,
        "product_views_24h": 7.0,
        "cart_adds_24h": 2.0,
        "cart_removes_24h": 1.0,
        "purchases_7d": 1.0,
        "revenue_7d": 59.9,
        "last_event_ts": AS_OF - 2 * HOUR,
        "last_purchase_ts": AS_OF - 3 * DAY,
        "orders_90d": 4.0,
        "revenue_90d": 210.0,
        "avg_order_value_90d": 52.5,
        "purchase_days_90d": 3.0,
        "first_seen_ts": AS_OF - 30 * DAY,
    }
    row.update(overrides)
    return row


def _columns(*rows: dict[str, float | None]) -> dict[str, list[float | None]]:
    names = rows[0].keys()
    return {name: [row[name] for row in rows] for name in names}


def _empty_user(models: ScoringModels) -> dict[str, float | None]:
    return dict.fromkeys(models.stored_features)


def _column(models: ScoringModels, matrix: str, name: str) -> int:
    features = getattr(models, matrix).features
    return features.index(name)


def test_reads_the_union_of_both_models_stored_features(models: ScoringModels):
    stored = set(models.stored_features)
    assert {"last_event_ts", "last_purchase_ts", "first_seen_ts"} <= stored
    assert "hours_since_last_event" not in stored  # derived, never stored
    ages = {"hours_since_last_event", "days_since_last_purchase"}
    assert set(SEGMENTATION_FEATURES) - ages <= stored


def test_cold_start_user_gets_population_defaults(models: ScoringModels):
    inputs = build_inputs(_columns(_empty_user(models)), 1, AS_OF, models)

    assert inputs.cold_start.tolist() == [True]
    np.testing.assert_array_equal(inputs.segmentation[0], models.segmenter_defaults)
    np.testing.assert_array_equal(inputs.propensity[0], models.propensity_defaults)


def test_missing_columns_count_as_missing(models: ScoringModels):
    # An online read for unknown users may omit nothing, but a partial mapping
    # must still mean "nothing stored", not a crash.
    inputs = build_inputs({}, 2, AS_OF, models)
    assert inputs.cold_start.tolist() == [True, True]


def test_known_user_inputs_with_ages_derived_at_read_time(models: ScoringModels):
    inputs = build_inputs(_columns(_known_user()), 1, AS_OF, models)
    prop = dict(zip(models.propensity.features, inputs.propensity[0], strict=True))
    seg = dict(zip(models.segmenter.features, inputs.segmentation[0], strict=True))

    assert inputs.cold_start.tolist() == [False]
    assert prop["hours_since_last_event"] == pytest.approx(2.0)
    assert prop["days_since_last_purchase"] == pytest.approx(3.0)
    assert prop["tenure_days"] == pytest.approx(30.0)
    assert prop["cart_adds_24h"] == 2.0
    assert seg["hours_since_last_event"] == pytest.approx(2.0)
    assert seg["revenue_90d"] == 210.0


def test_ages_follow_the_read_time_not_the_write_time(models: ScoringModels):
    stored = _columns(_known_user())
    later = build_inputs(stored, 1, AS_OF + 10 * HOUR, models)
    column = _column(models, "propensity", "hours_since_last_event")
    assert later.propensity[0, column] == pytest.approx(12.0)


def test_missing_values_of_a_known_user_are_real_not_imputed(models: ScoringModels):
    # A known user's missing timestamp means "never" (the tenure) and a missing
    # count means none (0), as training reads them; never a population median.
    row = _known_user(last_purchase_ts=None, orders_90d=None)
    inputs = build_inputs(_columns(row), 1, AS_OF, models)
    days = _column(models, "propensity", "days_since_last_purchase")
    orders = _column(models, "propensity", "orders_90d")
    events = _column(models, "propensity", "events_1h")

    assert models.propensity.defaults["orders_90d"] != 0.0
    assert inputs.cold_start.tolist() == [False]
    assert inputs.propensity[0, days] == pytest.approx(30.0)
    assert inputs.propensity[0, orders] == 0.0
    assert inputs.propensity[0, events] == 3.0


def _stream_only_state(uid: str, events: list[tuple[str, float]]) -> UserState:
    """A state made only by the stream transition, as the worker makes it."""
    state = UserState()
    for i, (kind, ts) in enumerate(events):
        event = Event.model_validate(
            {
                "event_id": f"{uid}-{i}",
                "user_id": uid,
                "event_type": kind,
                "ts": ts * 1000,  # epoch milliseconds, as on the wire
                "session_id": "s1",
                "revenue": 25.0 if kind == "purchase" else None,
            }
        )
        assert apply_event(state, event, 600, offset=i) is Outcome.APPLIED
    return state


def _online_read(
    blobs: list[bytes | None], history: list[dict[str, float | None] | None]
) -> dict[str, list]:
    """Columns as the service's online read gives them: state plus history rows."""
    columns: dict[str, list] = {STATE_FEATURE: blobs}
    for name in HISTORY_NAMES:
        columns[name] = [row[name] if row else None for row in history]
    return columns


def _inputs_by_name(
    models: ScoringModels, stored: dict[str, list], n: int, as_of: float
) -> tuple[list[dict[str, float]], list[bool]]:
    inputs = build_inputs(with_read_time_features(stored, n, as_of), n, as_of, models)
    rows = [
        dict(zip(models.propensity.features, row, strict=True))
        for row in inputs.propensity.tolist()
    ]
    return rows, inputs.cold_start.tolist()


def test_stream_only_user_reads_real_history_from_the_state(models: ScoringModels):
    # First seen 30 minutes ago, two purchases since, and no history row at all
    # (the backfill never saw this user).
    first = AS_OF - 30 * 60
    state = _stream_only_state(
        "fresh",
        [("page_view", first), ("purchase", first + 60), ("purchase", first + 600)],
    )
    stored = _online_read([state.to_bytes(with_dedupe=False)], [None])
    (user,), cold = _inputs_by_name(models, stored, 1, AS_OF)

    assert cold == [False]
    assert user["orders_90d"] == 2.0
    assert user["orders_30d"] == 2.0
    assert user["revenue_90d"] == 50.0
    assert user["avg_order_value_90d"] == 25.0
    assert user["purchase_days_90d"] == 1.0
    assert user["conversion_rate_30d"] == 1.0
    assert user["tenure_days"] == pytest.approx(30 * 60 / DAY)
    assert user["hours_since_last_event"] == pytest.approx(20 / 60)
    assert user["events_1h"] == 3.0
    # Exactly what the backfill writes for a training row of this state.
    history = dict(zip(HISTORY_NAMES, history_values(state, AS_OF), strict=True))
    for name in set(HISTORY_NAMES) & set(user):
        assert user[name] == history[name], name


def test_the_previous_purchase_age_is_read_from_the_state_or_the_row(
    models: ScoringModels,
):
    # Purchases on two days, 40 and 3 days back: the previous one's day start.
    first = AS_OF - 40 * DAY
    state = _stream_only_state(
        "repeat", [("purchase", first), ("purchase", AS_OF - 3 * DAY)]
    )
    row = dict.fromkeys(HISTORY_NAMES, 0.0)
    row.update(first_seen_ts=AS_OF - 50 * DAY, previous_purchase_ts=AS_OF - 20 * DAY)
    stored = _online_read([state.to_bytes(with_dedupe=False), None], [None, row])
    (from_state, from_row), cold = _inputs_by_name(models, stored, 2, AS_OF)

    assert "previous_purchase_ts" in models.stored_features
    assert cold == [False, False]
    expected = (AS_OF - (first - first % DAY)) / DAY
    assert from_state["days_since_previous_purchase"] == pytest.approx(expected)
    assert from_row["days_since_previous_purchase"] == pytest.approx(20.0)


def test_stream_only_user_without_purchases_has_zero_orders(models: ScoringModels):
    state = _stream_only_state("browser", [("product_view", AS_OF - 120)])
    stored = _online_read([state.to_bytes(with_dedupe=False)], [None])
    (user,), cold = _inputs_by_name(models, stored, 1, AS_OF)

    assert cold == [False]
    for name in ("orders_90d", "revenue_90d", "avg_order_value_90d", "orders_30d"):
        assert user[name] == 0.0, name
        assert models.propensity.defaults[name] != 0.0
    assert user["days_since_last_purchase"] == pytest.approx(120 / DAY)
    assert user["tenure_days"] == pytest.approx(120 / DAY)
    assert user["days_since_previous_purchase"] == user["tenure_days"]


def test_the_state_wins_over_a_stale_history_row(models: ScoringModels):
    # Seeded from a backfill 10 days ago: one purchase 5 days before the seed.
    # A live purchase since and 10 days passing must both show.
    seeded = AS_OF - 10 * DAY
    state = _stream_only_state(
        "seeded", [("purchase", seeded - 5 * DAY), ("purchase", AS_OF - HOUR)]
    )
    stale = dict(zip(HISTORY_NAMES, history_values(state, seeded), strict=True))
    assert stale["orders_90d"] == 1.0  # what the row said at the seed
    stored = _online_read([state.to_bytes(with_dedupe=False)], [stale])
    (user,), _ = _inputs_by_name(models, stored, 1, AS_OF)

    assert user["orders_90d"] == 2.0
    assert user["tenure_days"] == pytest.approx(15.0)


def test_a_history_row_without_state_is_used_as_stored(models: ScoringModels):
    row = dict.fromkeys(HISTORY_NAMES, 0.0)
    row.update(orders_90d=4.0, revenue_90d=80.0, first_seen_ts=AS_OF - 20 * DAY)
    stored = _online_read([None], [row])
    (user,), cold = _inputs_by_name(models, stored, 1, AS_OF)

    assert cold == [False]
    assert user["orders_90d"] == 4.0
    assert user["revenue_90d"] == 80.0
    assert user["tenure_days"] == pytest.approx(20.0)
    # No state: the worker has seen nothing of this user, so no recent activity.
    assert user["events_24h"] == 0.0
    assert user["hours_since_last_event"] == pytest.approx(20 * DAY / HOUR)


def test_only_a_true_cold_start_gets_population_defaults(models: ScoringModels):
    state = _stream_only_state("warm", [("page_view", AS_OF - 60)])
    stored = _online_read([None, state.to_bytes(with_dedupe=False), None], [None] * 3)
    inputs = build_inputs(with_read_time_features(stored, 3, AS_OF), 3, AS_OF, models)

    assert inputs.cold_start.tolist() == [True, False, True]
    for row in (0, 2):
        np.testing.assert_array_equal(
            inputs.propensity[row], models.propensity_defaults
        )
        np.testing.assert_array_equal(
            inputs.segmentation[row], models.segmenter_defaults
        )
    payload = score(["cold", "warm", "cold-2"], stored, AS_OF, models, top_k=50)
    flags = [user["cold_start"] for user in payload["scores"]]
    assert flags == [True, False, True]
    warm = {c["feature"]: c["value"] for c in payload["scores"][1]["explanation"]}
    assert warm["orders_90d"] == 0.0
    assert warm["tenure_days"] == pytest.approx(60 / DAY)


def test_array_columns_give_the_inputs_the_list_columns_give(models: ScoringModels):
    # score() reads states into numpy columns (NaN for "never"), the other
    # callers into lists (None): the model inputs must not tell them apart.
    states = [
        _stream_only_state("browser", [("product_view", AS_OF - 120)]),
        _stream_only_state(
            "repeat", [("purchase", AS_OF - 40 * DAY), ("purchase", AS_OF - 3 * DAY)]
        ),
        _stream_only_state("future", [("add_to_cart", AS_OF + 600)]),
    ]
    stored = _online_read([s.to_bytes(with_dedupe=False) for s in states], [None] * 3)
    lists = with_read_time_features(stored, 3, AS_OF)
    arrays = with_read_time_features(stored, 3, AS_OF, as_arrays=True)
    assert any(None in lists[name] for name in HISTORY_NAMES)
    assert all(isinstance(arrays[name], np.ndarray) for name in HISTORY_NAMES)

    by_lists, by_arrays = (build_inputs(c, 3, AS_OF, models) for c in (lists, arrays))
    np.testing.assert_array_equal(by_lists.propensity, by_arrays.propensity)
    np.testing.assert_array_equal(by_lists.segmentation, by_arrays.segmentation)
    # A user without a state among them: the list columns, as before.
    mixed = _online_read([stored[STATE_FEATURE][0], None], [None, None])
    assert isinstance(
        with_read_time_features(mixed, 2, AS_OF, as_arrays=True)["orders_90d"], list
    )


def test_rows_follow_request_order(models: ScoringModels):
    stored = _columns(_known_user(), _empty_user(models), _known_user())
    inputs = build_inputs(stored, 3, AS_OF, models)
    assert inputs.cold_start.tolist() == [False, True, False]


def test_shap_contributions_and_base_value_sum_to_the_margin(models: ScoringModels):
    rows = [_known_user(), _known_user(cart_adds_24h=9.0, last_event_ts=AS_OF - 60)]
    stored = _columns(*rows, _empty_user(models))
    n_features = len(models.propensity.features)
    payload = score(
        ["a", "b", "c"], stored, AS_OF, models, explain=True, top_k=n_features
    )
    inputs = build_inputs(stored, 3, AS_OF, models)
    margins = models.propensity.margin(inputs.propensity)

    for user, margin in zip(payload["scores"], margins, strict=True):
        total = user["base_value"] + sum(c["contribution"] for c in user["explanation"])
        assert total == pytest.approx(margin, abs=1e-9)
        expected = models.propensity.probability(np.array([margin]))[0]
        assert user["propensity"] == pytest.approx(expected)
        # The calibration is not the identity, so this is not the raw sigmoid.
        assert user["propensity"] != pytest.approx(1 / (1 + math.exp(-margin)))


@pytest.mark.filterwarnings("ignore:LightGBM binary classifier:UserWarning")
def test_served_shap_values_match_shap_tree_explainer(models: ScoringModels):
    shap = pytest.importorskip("shap")
    # The served values come from the look-up tables (core.tree_shap).
    assert models.shap_tables is not None
    stored = _columns(_known_user(), _known_user(events_1h=0.0, cart_adds_24h=5.0))
    inputs = build_inputs(stored, 2, AS_OF, models)
    features = models.propensity.features
    payload = score(["a", "b"], stored, AS_OF, models, top_k=len(features))
    ours = np.array(
        [
            [
                {c["feature"]: c["contribution"] for c in s["explanation"]}[name]
                for name in features
            ]
            for s in payload["scores"]
        ]
    )

    explainer = shap.TreeExplainer(models.propensity.booster)
    theirs = explainer.shap_values(inputs.propensity)
    theirs = theirs[1] if isinstance(theirs, list) else theirs

    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert models.base_value == pytest.approx(
        float(np.ravel(explainer.expected_value)[-1]), abs=1e-6
    )


def test_explanation_is_top_k_by_magnitude_with_natural_values(models: ScoringModels):
    stored = _columns(_known_user())
    payload = score(["u"], stored, AS_OF, models, explain=True, top_k=4)
    explanation = payload["scores"][0]["explanation"]
    inputs = build_inputs(stored, 1, AS_OF, models)
    full = models.propensity.booster.predict(inputs.propensity, pred_contrib=True)[0]
    sizes = sorted(np.abs(full[:-1]), reverse=True)

    assert len(explanation) == 4
    magnitudes = [abs(c["contribution"]) for c in explanation]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert magnitudes == pytest.approx(sizes[:4])
    values = dict(zip(models.propensity.features, inputs.propensity[0], strict=True))
    for item in explanation:
        assert item["value"] == pytest.approx(values[item["feature"]])
    hours = [c for c in explanation if c["feature"] == "hours_since_last_event"]
    if hours:  # natural unit: hours, not seconds or epoch time
        assert hours[0]["value"] == pytest.approx(2.0)


def test_top_contributions_orders_ties_by_feature_order():
    contributions = np.array([[0.1, -0.5, 0.5, 0.0]])
    inputs = np.array([[1.0, 2.0, 3.0, 4.0]])
    result = top_contributions(contributions, inputs, ["a", "b", "c", "d"], 3)
    assert [c["feature"] for c in result[0]] == ["b", "c", "a"]
    assert [c["value"] for c in result[0]] == [2.0, 3.0, 1.0]


def test_top_k_larger_than_feature_count_returns_all(models: ScoringModels):
    payload = score(["u"], _columns(_known_user()), AS_OF, models, top_k=50)
    assert len(payload["scores"][0]["explanation"]) == len(PROPENSITY_FEATURES)


def test_explain_false_returns_empty_explanation_same_propensity(
    models: ScoringModels,
):
    stored = _columns(_known_user())
    with_shap = score(["u"], stored, AS_OF, models, explain=True)["scores"][0]
    without = score(["u"], stored, AS_OF, models, explain=False)["scores"][0]
    assert without["explanation"] == []
    assert without["propensity"] == pytest.approx(with_shap["propensity"])
    assert without["base_value"] == with_shap["base_value"]


def test_cold_and_known_users_in_one_payload(models: ScoringModels):
    known = _known_user()
    stored = _columns(known, dict.fromkeys(known))
    stored["events_7d__ts"] = [int(AS_OF - 42), 0]
    stored["first_seen_ts__ts"] = [int(AS_OF - 3 * DAY), 0]
    payload = score(["known", "new"], stored, AS_OF, models)
    known_score, new_score = payload["scores"]

    ScoreResponse.model_validate(payload)
    assert payload["model_versions"] == {
        "segmenter": "segscore-segmenter:test",
        "propensity": "segscore-propensity:test",
    }
    assert [known_score["user_id"], new_score["user_id"]] == ["known", "new"]
    assert known_score["cold_start"] is False
    assert known_score["feature_age_seconds"] == pytest.approx(42.0)
    assert new_score["cold_start"] is True
    assert new_score["feature_age_seconds"] is None
    names = {s.id: s.name for s in models.segmenter.segments}
    for user in payload["scores"]:
        assert user["segment"]["name"] == names[user["segment"]["id"]]


def test_cold_start_segment_is_the_segment_of_the_defaults(models: ScoringModels):
    payload = score(["new"], {}, AS_OF, models, explain=False)
    expected = models.segmenter.assign(models.segmenter_defaults[None, :])[0]
    assert payload["scores"][0]["segment"]["id"] == expected


def test_feature_age_is_the_newest_write_and_never_negative():
    stored = {"a__ts": [100, 0, 0, 300], "b__ts": [150, 0, None, 0]}
    assert feature_ages(stored, ["a", "b"], 4, 200.0) == [50.0, None, None, 0.0]
    assert feature_ages({}, ["a"], 2, 200.0) == [None, None]


def test_missing_population_default_is_refused():
    segmenter, propensity = tiny_bundles()
    del propensity.defaults["tenure_days"]
    with pytest.raises(ValueError, match="tenure_days"):
        ScoringModels.from_bundles(segmenter, propensity)


def test_segment_catalogue_matches_schema(models: ScoringModels):
    catalogue = segment_catalogue(models.segmenter)
    parsed = SegmentsResponse.model_validate(catalogue)
    assert parsed.model_version == "segscore-segmenter:test"
    assert [s.id for s in parsed.segments] == [0, 1, 2]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": ["x" * 129]}, "user_ids"),
        ({"user_ids": [""]}, "user_ids"),
        ({"user_ids": [f"u{i}" for i in range(1001)]}, "user_ids"),
        ({"user_ids": ["u"], "top_k": 0}, "top_k"),
        ({"user_ids": ["u"], "top_k": 51}, "top_k"),
        ({"user_ids": ["u"], "explain": "maybe"}, "explain"),
        ({"user_ids": ["u"], "topk": 3}, "topk"),
        ({}, "user_ids"),
    ],
)
def test_request_validation_names_the_field(body: dict, field: str):
    with pytest.raises(ValidationError) as caught:
        ScoreRequest.model_validate(body)
    assert caught.value.errors()[0]["loc"][0] == field


def test_request_defaults():
    request = ScoreRequest.model_validate({"user_ids": ["u-1"]})
    assert (request.explain, request.top_k) == (True, 5)
    ScoreRequest.model_validate({"user_ids": ["x" * 128] * 1000, "top_k": 50})


def test_placing_each_state_at_its_own_time_is_what_score_assigns(
    models: ScoringModels,
) -> None:
    """The worker's placement (per state, as of its own time) equals /score's."""
    rng = np.random.default_rng(7)
    kinds = ["product_view", "add_to_cart", "purchase", "page_view"]
    states, instants = [], []
    for u in range(60):
        start = AS_OF - float(rng.uniform(0, 120)) * DAY
        times = np.sort(start + rng.uniform(0, 30 * DAY, size=int(rng.integers(1, 40))))
        events = [(kinds[int(rng.integers(0, 4))], float(t)) for t in times]
        states.append(_stream_only_state(f"live-{u}", events))
        instants.append(float(times[-1]) + float(rng.uniform(0, 3 * DAY)))

    placed = place(states, instants, models).segments

    one_by_one = [
        score([f"live-{u}"], {STATE_FEATURE: [state]}, at, models)["scores"][0]
        for u, (state, at) in enumerate(zip(states, instants, strict=True))
    ]
    assert placed == [s["segment"]["id"] for s in one_by_one]
    assert len(set(placed)) > 1  # the check would be empty with one segment
    # The time matters: read much later, some users move.
    later = place(states, [t + 200 * DAY for t in instants], models).segments
    assert later != placed


def test_change_reasons_name_the_features_nearer_the_new_profile(
    models: ScoringModels,
) -> None:
    segmenter = models.segmenter
    old, new = segmenter.segments[0], segmenter.segments[1]
    features = segmenter.features
    # A user sitting exactly on the new profile: every feature on which the two
    # profiles differ pulls toward it.
    row = np.array([new.profile[f] for f in features])
    reasons = change_reasons(models, row, old.id, new.id, top_k=len(features))
    differing = {f for f in features if old.profile[f] != new.profile[f]}
    assert {r["feature"] for r in reasons} == differing
    assert all(r["to_profile"] == r["value"] for r in reasons)
    # Strongest first, by distance in units of the profiles' spread.
    spread = np.std(
        [[s.profile[f] for f in features] for s in segmenter.segments], axis=0
    )
    pulls = [
        abs(r["value"] - r["from_profile"]) / spread[features.index(r["feature"])]
        for r in reasons
    ]
    assert pulls == sorted(pulls, reverse=True)
    # Sitting on the old profile, nothing pulls toward the new one.
    assert (
        change_reasons(
            models, np.array([old.profile[f] for f in features]), old.id, new.id
        )
        == []
    )
    assert change_reasons(models, row, old.id, 99) == []
