"""The catalogue is the single description of every feature."""

from __future__ import annotations

from core.feature_catalog import (
    CATALOGUE,
    PROPENSITY_FEATURES,
    SEGMENTATION_FEATURES,
    markdown_table,
)
from infra.settings import PROJECT_ROOT


def test_docs_are_generated_from_the_catalogue() -> None:
    committed = (PROJECT_ROOT / "docs" / "features.md").read_text()
    assert committed == markdown_table(), "run: segscore catalogue > docs/features.md"


def test_model_inputs_are_all_catalogued_and_described() -> None:
    for name in (*SEGMENTATION_FEATURES, *PROPENSITY_FEATURES):
        spec = CATALOGUE[name]
        assert spec.description and spec.unit
