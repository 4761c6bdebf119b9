"""Which models serve, and how a new version replaces them without a restart.

The service follows the champions of ``$SEGSCORE_HOME/champions.json`` (written
atomically by :mod:`core.registry` on ``segscore train`` / ``models promote`` /
``models rollback``), unless a version is pinned by setting. A background task
polls the file's modification time; when it changes and names other tags, the new
pair is loaded and validated in a thread (off the event loop, so requests keep
flowing), then swapped in with one attribute assignment. A request takes the
current :class:`~core.scoring.ScoringModels` once, so it is scored by one
consistent pair even while a swap happens. A version that fails to load or fails
validation is refused and the last good pair keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import scoring
from core.registry import (
    PROPENSITY,
    SEGMENTER,
    champion_tag,
    load_propensity,
    load_segmenter,
)
from infra.settings import Settings

logger = logging.getLogger(__name__)


class ModelRefused(RuntimeError):
    """A model version failed to load or failed validation."""


@dataclass(frozen=True)
class WantedTags:
    """The two model store tags the service should be serving."""

    segmenter: str
    propensity: str


def _pinned(name: str, version: str | None) -> str | None:
    if not version:
        return None
    return version if ":" in version else f"{name}:{version}"


def wanted_tags(settings: Settings) -> WantedTags:
    """Pinned versions where set, else the champions (else ``name:latest``)."""
    return WantedTags(
        segmenter=_pinned(SEGMENTER, settings.segmenter_version)
        or champion_tag(SEGMENTER, settings),
        propensity=_pinned(PROPENSITY, settings.propensity_version)
        or champion_tag(PROPENSITY, settings),
    )


def validate(models: scoring.ScoringModels, allowed: Sequence[str]) -> None:
    """Refuse a pair that could not serve correctly.

    Checks: the booster's inputs are the bundle's feature list, in order; every
    stored input is one the online store holds (``allowed``); scoring the
    population defaults gives finite, in-range propensities, finite SHAP values
    that add up to the margin, and segments of the catalogue.

    Raises:
        ModelRefused: With the reason.
    """
    booster_features = list(models.propensity.booster.feature_name())
    if booster_features != list(models.propensity.features):
        raise ModelRefused(
            f"{models.propensity.tag}: booster inputs {booster_features} differ "
            f"from the bundle's feature list {models.propensity.features}"
        )
    unknown = [n for n in models.stored_features if n not in set(allowed)]
    if unknown:
        raise ModelRefused(f"inputs {unknown} are not features of the online store")
    payload = scoring.score(["validation"], {}, 0.0, models, explain=True, top_k=50)
    (row,) = payload["scores"]
    propensity = row["propensity"]
    if not (math.isfinite(propensity) and 0.0 <= propensity <= 1.0):
        raise ModelRefused(
            f"{models.propensity.tag}: propensity on defaults is {propensity}"
        )
    contributions = [c["contribution"] for c in row["explanation"]]
    if not all(map(math.isfinite, contributions)) or not math.isfinite(
        models.base_value
    ):
        raise ModelRefused(f"{models.propensity.tag}: non-finite SHAP values")
    margin = models.propensity.booster.predict(
        models.propensity_defaults[None, :], raw_score=True, num_threads=1
    )[0]
    if not np.isclose(models.base_value + sum(contributions), margin, atol=1e-6):
        raise ModelRefused(f"{models.propensity.tag}: SHAP values do not add up")
    if row["segment"]["id"] not in models.segment_names:
        raise ModelRefused(
            f"{models.segmenter.tag}: defaults fall in segment "
            f"{row['segment']['id']}, which the catalogue does not describe"
        )


def load_models(
    settings: Settings, tags: WantedTags, allowed: Sequence[str], *, lean: bool = True
) -> scoring.ScoringModels:
    """Load both tags from the model store and validate them as a pair.

    ``lean`` (:mod:`core.lean_models`): where a model has checked numpy replays,
    neither LightGBM nor scikit-learn is imported -- what a serving worker wants
    (~150 MB less). A caller scoring thousands of rows at a time (the stream
    worker) is better served by LightGBM's own predictor, several times faster
    on large batches than the replay's walk.

    Raises:
        ModelRefused: Missing, unreadable or invalid.
    """
    try:
        models = scoring.ScoringModels.from_bundles(
            load_segmenter(settings, tags.segmenter, lean=lean),
            load_propensity(settings, tags.propensity, lean=lean),
        )
    except Exception as exc:  # any failure to load means: do not serve it
        raise ModelRefused(f"{tags}: {type(exc).__name__}: {exc}") from exc
    validate(models, allowed)
    return models


class ModelManager:
    """Holds the serving pair; swaps in a promoted one when it validates."""

    def __init__(
        self,
        settings: Settings,
        allowed: Sequence[str],
        on_reload: Callable[[str, str], None] | None = None,
        *,
        lean: bool = True,
    ) -> None:
        """Load the wanted pair now (a service that cannot do so must not start).

        ``lean``: as :func:`load_models` takes it, for every pair loaded.
        """
        self.settings = settings
        self.lean = lean
        self.allowed = tuple(allowed)
        self.on_reload = on_reload or (lambda outcome, detail: None)
        self.tags = wanted_tags(settings)
        self.current = load_models(settings, self.tags, self.allowed, lean=lean)
        self._mtime = self._champions_mtime()
        self._refused: WantedTags | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def champions_file(self) -> Path:
        """The file promotions are written to."""
        return self.settings.home / "champions.json"

    def _champions_mtime(self) -> int | None:
        try:
            return self.champions_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def check(self) -> bool:
        """Reload if the champions changed to other, valid tags; True on a swap.

        Blocking (loads from disk); the poll loop runs it in a thread.
        """
        mtime = self._champions_mtime()
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        tags = wanted_tags(self.settings)
        if tags == self.tags or tags == self._refused:
            return False
        try:
            models = load_models(self.settings, tags, self.allowed, lean=self.lean)
        except ModelRefused as exc:
            self._refused = tags
            logger.error("model reload refused, still serving %s: %s", self.tags, exc)
            self.on_reload("refused", str(exc))
            return False
        # One assignment: a request holds either the old pair or the new one.
        self.current = models
        self.tags = tags
        self._refused = None
        logger.info("serving models %s", models.versions)
        self.on_reload("loaded", str(models.versions))
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the poller must outlive any surprise
                logger.exception("model poll failed")

    def start(self) -> None:
        """Start polling for promotions (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
