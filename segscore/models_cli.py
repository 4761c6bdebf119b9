"""``segscore models``: list stored model versions, promote one, roll back."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.names import PROPENSITY_STORE_NAME, SEGMENTER_STORE_NAME
from infra.settings import get_settings

app = typer.Typer(
    help="Stored model versions and their champions.", no_args_is_help=True
)
console = Console()

# Shown per model: the metric that decides promotion, then the rest worth a glance.
_COLUMNS = {
    SEGMENTER_STORE_NAME: ("silhouette", "davies_bouldin", "k", "ari_vs_personas"),
    PROPENSITY_STORE_NAME: ("roc_auc", "pr_auc", "brier", "lift_top_decile"),
}


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def gate_result(name: str, metadata: dict[str, object]) -> str:
    """A propensity version's baseline gate: ``passed`` or ``failed: <baselines>``.

    Read from the stored ``gate``; versions stored before it was recorded are
    judged from their stored holdout metrics. Segmenters have no gate (empty).
    """
    from training.promotion import baseline_gate

    if name != PROPENSITY_STORE_NAME:
        return ""
    stored = metadata.get("gate")
    summary = stored if isinstance(stored, str) else baseline_gate(metadata).summary
    return summary.split(" (", 1)[0]


@app.command("list")
def list_() -> None:
    """Every stored segmenter and propensity version; * marks the champions."""
    from core.registry import list_models

    versions = list_models(get_settings())
    if not versions:
        console.print("no models stored yet (run segscore train)")
        return
    table = Table("", "tag", "created", "metrics", "baseline gate", "training window")
    for v in versions:
        shown = _COLUMNS.get(v.name, ())
        metrics = "  ".join(
            f"{k}={_fmt(v.metrics[k])}" for k in shown if k in v.metrics
        )
        window = (
            f"{v.metrics.get('training_window_start', '?')[:10]} .. "
            f"{v.metrics.get('training_window_end', '?')[:10]}"
        )
        gate = gate_result(v.name, v.metrics)
        table.add_row(
            "*" if v.champion else "", v.tag, v.created, metrics, gate, window
        )
    console.print(table)


@app.command()
def promote(
    tag: Annotated[str, typer.Argument(help="name:version, as `models list` shows")],
) -> None:
    """Make a stored version the champion (serving picks it up)."""
    from bentoml.exceptions import NotFound

    from core.registry import promote as promote_tag

    name = tag.split(":", 1)[0]
    if name not in _COLUMNS:
        raise typer.BadParameter(f"unknown model {name!r}; one of {sorted(_COLUMNS)}")
    try:
        promote_tag(name, tag, get_settings())
    except NotFound as exc:
        raise typer.BadParameter(f"no stored model {tag!r}") from exc
    console.print(f"{tag} is now the champion of {name}")


@app.command()
def rollback(
    name: Annotated[
        str, typer.Argument(help=f"{SEGMENTER_STORE_NAME} or {PROPENSITY_STORE_NAME}")
    ],
) -> None:
    """Make the previous champion of a model the champion again."""
    from core.registry import rollback as roll_back

    if name not in _COLUMNS:
        raise typer.BadParameter(f"unknown model {name!r}; one of {sorted(_COLUMNS)}")
    try:
        tag = roll_back(name, get_settings())
    except LookupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{name} rolled back to {tag}")
