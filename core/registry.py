"""Model registry on the BentoML model store: save, load, champion pointer.

Each model is a BentoML model directory holding plain files (LightGBM text model,
a joblib'd scikit-learn pipeline) and a ``bundle.json`` with everything serving
needs: feature list, segment catalogue, population defaults, calibration. Beside
them, the numbers and recorded answers that let serving replay both models
without their libraries (:mod:`core.lean_models`); ``lean=True`` loads use them.
The BentoML metadata carries the metrics and provenance for
``bentoml models list``.

LightGBM, scikit-learn and joblib are imported where a model is written or fully
loaded, not here: serving workers import this module and never need them.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from bentoml._internal.models.model import ModelStore

from core import lean_models
from core.names import PROPENSITY_STORE_NAME as PROPENSITY
from core.names import SEGMENTER_STORE_NAME as SEGMENTER
from infra.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import lightgbm as lgb
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)


@dataclass
class Segment:
    """One segment of the catalogue."""

    id: int
    name: str
    description: str
    size: int
    profile: dict[str, float]


@dataclass
class SegmenterBundle:
    """A fitted segmenter and what serving needs around it."""

    # The fitted pipeline, or its numpy replay (lean_models.LeanPipeline) in a
    # serving load.
    pipeline: Pipeline
    features: list[str]
    segments: list[Segment]
    defaults: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    tag: str = ""

    def assign(self, matrix: np.ndarray) -> np.ndarray:
        """Segment ids for rows of ``matrix`` (columns in ``features`` order)."""
        return self.pipeline.predict(matrix).astype(int)


@dataclass
class PropensityBundle:
    """A fitted propensity booster with its Platt calibration on the raw margin."""

    # The booster, or its numpy replay (lean_models.LeanBooster) in a serving load.
    booster: lgb.Booster
    features: list[str]
    defaults: dict[str, float]
    calibration: tuple[float, float] = (1.0, 0.0)
    metrics: dict[str, float] = field(default_factory=dict)
    tag: str = ""
    # Holdout rows and scores of the run that fitted it (not stored).
    evaluation: Any = None

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        """Raw log-odds of the booster."""
        return self.booster.predict(matrix, raw_score=True)

    def probability(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated purchase probability from the raw margin."""
        slope, intercept = self.calibration
        return 1.0 / (1.0 + np.exp(-(slope * margin + intercept)))


def code_version() -> str:
    """The git commit of the code that trained a model, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_store(settings: Settings) -> ModelStore:
    """The BentoML model store under settings' BentoML home.

    Passed explicitly because BentoML resolves BENTOML_HOME once per process, and
    one process (a test run, the demo) may work with several homes.
    """
    root = settings.bentoml_home / "models"
    root.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(root))


def save_segmenter(
    bundle: SegmenterBundle, settings: Settings, provenance: dict[str, Any]
) -> str:
    """Store a segmenter; returns its tag."""
    payload = {
        "features": bundle.features,
        "segments": [asdict(s) for s in bundle.segments],
        "defaults": bundle.defaults,
        "metrics": bundle.metrics,
    }
    with bentoml.models.create(
        SEGMENTER,
        metadata={**bundle.metrics, **provenance},
        _model_store=model_store(settings),
    ) as model:
        import joblib

        root = Path(model.path)
        joblib.dump(bundle.pipeline, root / "pipeline.joblib")
        (root / "bundle.json").write_text(json.dumps(payload))
        lean_models.write_json(
            root / lean_models.SEGMENTER_REPLAY,
            lean_models.segmenter_check(bundle.pipeline, _segmenter_probe(bundle)),
        )
    return str(model.tag)


def _segmenter_probe(bundle: SegmenterBundle, rows: int = 64) -> np.ndarray:
    """Rows to check a segmenter replay on: the population defaults, each
    segment's profile, and profiles scaled at random (between the segments)."""
    anchors = np.array(
        [
            [float(bundle.defaults.get(f, 0.0)) for f in bundle.features],
            *(
                [
                    float(s.profile.get(f, bundle.defaults.get(f, 0.0)))
                    for f in bundle.features
                ]
                for s in bundle.segments
            ),
        ]
    )
    rng = np.random.default_rng(0)
    picks = anchors[rng.integers(0, len(anchors), rows)]
    scaled = picks * rng.lognormal(0.0, 0.5, picks.shape)
    return np.vstack([anchors, scaled])


def save_propensity(
    bundle: PropensityBundle, settings: Settings, provenance: dict[str, Any]
) -> str:
    """Store a propensity model; returns its tag."""
    payload = {
        "features": bundle.features,
        "defaults": bundle.defaults,
        "calibration": list(bundle.calibration),
        "metrics": bundle.metrics,
    }
    with bentoml.models.create(
        PROPENSITY,
        metadata={**bundle.metrics, **provenance},
        _model_store=model_store(settings),
    ) as model:
        root = Path(model.path)
        bundle.booster.save_model(str(root / "model.txt"))
        (root / "bundle.json").write_text(json.dumps(payload))
        lean_models.write_json(
            root / lean_models.PROPENSITY_CHECK,
            lean_models.propensity_check(bundle.booster, root / "model.txt"),
        )
    return str(model.tag)


def _champion_file(settings: Settings) -> Path:
    return settings.home / "champions.json"


def _read_champions(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per model: ``{"champion": tag, "history": [earlier champions, oldest last]}``."""
    path = _champion_file(settings)
    raw = json.loads(path.read_text()) if path.exists() else {}
    return {
        name: entry if isinstance(entry, dict) else {"champion": entry, "history": []}
        for name, entry in raw.items()
    }


def _write_champions(settings: Settings, champions: dict[str, dict[str, Any]]) -> None:
    path = _champion_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(champions, indent=2))
    tmp.replace(path)  # atomic: a reader never sees half a file


def promote(name: str, tag: str, settings: Settings) -> None:
    """Make ``tag`` the champion of model ``name``; the previous one is remembered."""
    bentoml.models.get(tag, _model_store=model_store(settings))  # must exist
    champions = _read_champions(settings)
    entry = champions.setdefault(name, {"champion": None, "history": []})
    if entry["champion"] == tag:
        return
    if entry["champion"]:
        entry["history"].append(entry["champion"])
    entry["champion"] = tag
    _write_champions(settings, champions)


def rollback(name: str, settings: Settings) -> str:
    """Make the previous champion of ``name`` the champion again; returns its tag."""
    champions = _read_champions(settings)
    entry = champions.get(name)
    if not entry or not entry["history"]:
        raise LookupError(f"{name}: no earlier champion to roll back to")
    entry["champion"] = entry["history"].pop()
    _write_champions(settings, champions)
    return entry["champion"]


def champion_tag(name: str, settings: Settings) -> str:
    """The champion's tag, else ``name:latest``."""
    entry = _read_champions(settings).get(name)
    return entry["champion"] if entry and entry["champion"] else f"{name}:latest"


def has_champion(name: str, settings: Settings) -> bool:
    """Whether ``name`` has a promoted champion."""
    entry = _read_champions(settings).get(name)
    return bool(entry and entry["champion"])


@dataclass
class ModelVersion:
    """One stored model version, as ``segscore models list`` shows it."""

    name: str
    tag: str
    created: str
    champion: bool
    metrics: dict[str, Any]


def list_models(settings: Settings) -> list[ModelVersion]:
    """Every stored segmenter and propensity version, newest first per model."""
    champions = {n: champion_tag(n, settings) for n in (SEGMENTER, PROPENSITY)}
    versions = []
    for model in model_store(settings).list():
        name = model.tag.name
        if name not in champions:
            continue
        versions.append(
            ModelVersion(
                name=name,
                tag=str(model.tag),
                created=model.info.creation_time.isoformat(timespec="seconds"),
                champion=str(model.tag) == champions[name],
                metrics=dict(model.info.metadata),
            )
        )
    versions.sort(key=lambda v: (v.name, v.created), reverse=True)
    return versions


def load_segmenter(
    settings: Settings, tag: str | None = None, *, lean: bool = False
) -> SegmenterBundle:
    """Load the champion (or ``tag``) segmenter from the model store.

    ``lean``: the pipeline's numpy replay where the model has a checked one
    (:mod:`core.lean_models`), without scikit-learn; else the pipeline.
    """
    model = bentoml.models.get(
        tag or champion_tag(SEGMENTER, settings), _model_store=model_store(settings)
    )
    root = Path(model.path)
    payload = json.loads((root / "bundle.json").read_text())
    return SegmenterBundle(
        pipeline=_load_pipeline(root, lean),
        features=payload["features"],
        segments=[Segment(**s) for s in payload["segments"]],
        defaults=payload["defaults"],
        metrics=payload["metrics"],
        tag=str(model.tag),
    )


def load_propensity(
    settings: Settings, tag: str | None = None, *, lean: bool = False
) -> PropensityBundle:
    """Load the champion (or ``tag``) propensity model from the model store.

    ``lean``: the booster's numpy replay where the model has a checked one
    (:mod:`core.lean_models`), without LightGBM; else the booster.
    """
    model = bentoml.models.get(
        tag or champion_tag(PROPENSITY, settings), _model_store=model_store(settings)
    )
    root = Path(model.path)
    payload = json.loads((root / "bundle.json").read_text())
    return PropensityBundle(
        booster=_load_booster(root, lean),
        features=payload["features"],
        defaults=payload["defaults"],
        calibration=tuple(payload["calibration"]),
        metrics=payload["metrics"],
        tag=str(model.tag),
    )


def _lean(root: Path, record: str, build: Callable[[dict[str, Any]], Any]) -> Any:
    """The numpy replay ``build`` makes from the model's ``record`` file, if it
    has one and the replay still gives the recorded answers; else ``None``."""
    found = lean_models.read_json(root / record)
    if found is None:
        return None
    try:
        return build(found)
    except lean_models.ReplayMismatch as exc:
        logger.warning("%s: %s", root, exc)
        return None


def _load_pipeline(root: Path, lean: bool) -> Any:
    record, build = lean_models.SEGMENTER_REPLAY, lean_models.lean_pipeline
    if lean and (replay := _lean(root, record, build)) is not None:
        return replay
    import joblib

    return joblib.load(root / "pipeline.joblib")


def _load_booster(root: Path, lean: bool) -> Any:
    model_file = root / "model.txt"
    record = lean_models.PROPENSITY_CHECK
    build = partial(lean_models.lean_booster, model_file)
    if lean and (replay := _lean(root, record, build)) is not None:
        return replay
    import lightgbm as lgb

    return lgb.Booster(model_file=str(model_file))
