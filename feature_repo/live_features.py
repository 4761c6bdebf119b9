"""Read-time features for Feast consumers: an on-demand view over ``state``.

The stream worker keeps only the ``state`` blob of ``user_stream_features`` online
(see :mod:`core.store.state_store`); every window depends on *when* it is read, so the
stream features and the history features (30/90-day and lifetime) are derived from
that blob at the instant of each ``get_online_features`` call or ``feast serve``
request, by the
project's own :func:`core.feature_math.stream_values` and
:func:`~core.feature_math.history_values` -- what the scoring path and the
backfill's training rows use. Nothing is written back
(``write_to_online_store=False``).

The models' feature services (``propensity``, ``segmentation``) project this view,
so Feast consumers read online what ``/score`` uses -- for every user with a
state. One case differs: a user with a ``user_history_features`` row but no state
(the row materialised without a seed, or the state lost) reads the empty state
here, while ``/score`` falls back to the row. The view cannot take the row as an
input: its names equal the view's outputs, and Feast 0.67 then returns both
columns under one name. Training cannot use this view either: offline, it would
need ``state`` in the snapshot files, which hold the materialised columns
instead; training reads the ``*_offline`` services over the batch views (see
:mod:`feature_repo.feature_services`).

Usage: ``store.get_online_features(features=store.get_feature_service(
"propensity"), entity_rows=[{"user_id": ...}])``, or
``features=["user_live_features:orders_90d", ...]``.
"""

from __future__ import annotations

import inspect

from feast import Field
from feast.errors import SpecifiedFeaturesNotPresentError
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float64

from core.events import Event, EventType
from core.feature_catalog import HISTORY_FEATURES, STATE_FEATURE, STREAM_FEATURES
from core.names import LIVE_VIEW, OWNER
from core.user_state import UserState, apply_event
from feature_repo.features import user_stream_features

# Everything the view derives: the stream group, then the history group.
LIVE_FEATURES = STREAM_FEATURES + HISTORY_FEATURES


def live_state_features(inputs: dict[str, list]) -> dict[str, list]:
    """Feast python-mode UDF: stream and history features of each row's state, now.

    ``inputs`` holds one list per column (Feast's batch python mode); ``state`` is
    the stored blob, ``None`` for a user the worker never wrote, who gets the
    features of an empty state (zero counts, ``None`` timestamps).
    """
    # Self-contained on purpose: Feast rebuilds the UDF by exec-ing this source text
    # in a namespace holding only pandas and numpy, so module-level imports and
    # constants (and annotations other than builtins) would not resolve there.
    import time

    from core.feature_catalog import HISTORY_FEATURES, STREAM_FEATURES
    from core.feature_math import feature_columns
    from core.names import LIVE_VIEW
    from core.user_state import UserState

    # One instant for the whole request, so rows of one batch are comparable.
    now = time.time()
    states = [UserState.from_bytes(blob) for blob in inputs["state"]]
    columns = feature_columns(states, now)
    # Keyed by the catalogue, so a feature missing from the math fails loudly here.
    specs = STREAM_FEATURES + HISTORY_FEATURES
    out = {spec.name: columns[spec.name] for spec in specs}
    # Feast (0.67) picks python-mode outputs by the name the caller asked for, which
    # is "<view>__<feature>" under full_feature_names=True, and renames nothing:
    # without these aliases such requests silently lose every feature.
    out.update({f"{LIVE_VIEW}__{name}": out[name] for name in list(out)})
    return out


def _sample_state_blob() -> bytes:
    """A real state in which every derived feature has a value (no ``None``)."""
    state = UserState()
    # Purchases on two days: ``previous_purchase_ts`` needs a second one.
    for i, ts in enumerate((1_699_900_000_000, 1_700_000_000_000)):
        event = Event(
            event_id=f"schema-sample-{i}",
            user_id="schema-sample",
            event_type=EventType.PURCHASE,
            ts=ts,  # epoch milliseconds, as on the wire
            price=10.0,
            revenue=10.0,
            session_id="schema-sample",
            category="schema-sample",
        )
        apply_event(state, event, lateness_seconds=0)
    return state.to_bytes(with_dedupe=False)


class StateDerivedView(OnDemandFeatureView):
    """An on-demand view whose source is the ``state`` blob.

    Feast checks an on-demand view's declared schema at ``apply`` by running the
    UDF on sample inputs; for a Bytes source the sample is ``b"hello world"``,
    which is not a state, and an empty state would leave the timestamp features
    ``None``, whose type cannot be inferred. So the check runs on a real state.
    """

    def infer_features(self) -> None:
        """Check the declared schema against the UDF's output on a real state."""
        assert self.feature_transformation is not None
        blob = _sample_state_blob()
        sample: dict[str, list] = {
            STATE_FEATURE: [blob],
            f"{user_stream_features.name}__{STATE_FEATURE}": [blob],
        }
        inferred = self.feature_transformation.infer_features(random_input=sample)
        missing = [field for field in self.features if field not in inferred]
        if missing:
            raise SpecifiedFeaturesNotPresentError(missing, inferred, self.name)


user_live_features = StateDerivedView(
    name=LIVE_VIEW,
    sources=[user_stream_features[[STATE_FEATURE]]],
    # No field descriptions: Feast compares declared and inferred fields with
    # ``==``, which includes the description, and inferred fields have none.
    schema=[Field(name=spec.name, dtype=Float64) for spec in LIVE_FEATURES],
    mode="python",
    udf=live_state_features,
    udf_string=inspect.getsource(live_state_features),
    write_to_online_store=False,
    description="The stream and history features derived from the state blob as "
    "of the read (wall clock), for online consumers; see core/feature_catalog.py.",
    owner=OWNER,
    tags={"group": "stream+history", "computed": "read-time"},
)
