"""The training report's page: the run section, the HTML document, the file.

:func:`render_report` puts the sections in order under one stylesheet;
:func:`write_report` writes the result atomically.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core import registry
from training.report.markup import _MISSING, _esc, _num, _table
from training.report.measures import SHAP_SAMPLE
from training.report.propensity_section import metrics_section, propensity_section
from training.report.segmenter_section import segmenter_section

if TYPE_CHECKING:
    from training.pipeline import TrainResult

# The package's logger: one name for every line the report logs.
log = logging.getLogger(__package__)

DEFAULT_TITLE = "segscore training report"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;
margin:0;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 28px 40px;background:#fff}
h1{margin:8px 0 4px}h2{margin-top:36px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{margin:24px 0 6px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}
dt{color:#666}dd{margin:0}
.banner{padding:12px 16px;border-radius:4px;margin:10px 0;font-weight:600}
.banner.fail{background:#c62828;color:#fff;font-size:17px}
.banner.ok{background:#e8f5e9;color:#1b5e20}
.row{display:flex;flex-wrap:wrap;gap:20px 36px;align-items:flex-start}
figure{margin:8px 0}figcaption{color:#555;font-size:13px;max-width:640px}
.note{color:#777;font-style:italic}
svg.plot{max-width:100%;height:auto;overflow:visible}
svg text{font-family:system-ui,sans-serif;fill:#222}
svg .tick{font-size:11px}svg .label{font-size:12px}
svg .title{font-size:13px;font-weight:600}svg .cell{font-size:10.5px}
svg .grid{stroke:#eee}svg .axes{fill:none;stroke:#888}
svg .legend{fill:#fff;fill-opacity:.88;stroke:#ccc}
details{margin-top:12px}
"""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _run_section(result: TrainResult) -> str:
    seg, prop = result.segmenter, result.propensity
    start, end = result.window
    outcomes = getattr(result.backfill, "outcomes", None) or {}
    version = seg.metrics.get("code_version") or prop.metrics.get("code_version")
    frame = result.segmentation_frame
    # Every user has a final state; the segmentation frame is the fallback for
    # results that carry no states.
    users = len(result.states) or (0 if frame is None else len(frame))
    facts = [
        (
            "Training window",
            f"{_iso(start)} → {_iso(end)} ({(end - start) / 86_400:.1f} days)",
        ),
        ("Events", f"{sum(outcomes.values()):,}" if outcomes else _MISSING),
        (
            "Event outcomes",
            ", ".join(f"{k} {v:,}" for k, v in outcomes.items()) or _MISSING,
        ),
        ("Users", f"{users:,}" if users else _MISSING),
        ("Snapshots", f"{len(result.snapshots):,}"),
        ("Segmenter rows", _num(seg.metrics.get("n_rows"))),
        (
            "Propensity rows",
            " / ".join(
                f"{name} {_num(prop.metrics.get(f'n_{name}'))}"
                for name in ("train", "tune", "holdout")
            ),
        ),
        ("Segmenter", seg.tag or "(not stored)"),
        ("Propensity model", prop.tag or "(not stored)"),
        ("Code version", str(version) if version else registry.code_version()),
    ]
    out = ['<section id="run"><h2>Training run</h2><dl>']
    out += [f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts]
    out.append("</dl><h3>Promotion decisions</h3>")
    if result.decisions:
        out.append(
            _table(
                ["Model", "Challenger", "Champion", "Promoted", "Reason"],
                [
                    [
                        _esc(d.model),
                        _esc(d.challenger),
                        _esc(d.champion or _MISSING),
                        "<strong>yes</strong>" if d.promoted else "no",
                        _esc(d.reason),
                    ]
                    for d in result.decisions
                ],
            )
        )
    else:
        out.append('<p class="note">No promotion was attempted in this run.</p>')
    if result.timings:
        out.append("<h3>Timings</h3>")
        out.append(
            _table(
                ["Stage", "Seconds"],
                [[_esc(k), f"{v:.2f}"] for k, v in result.timings.items()]
                + [["<strong>total</strong>", f"{sum(result.timings.values()):.2f}"]],
                numeric=[False, True],
            )
        )
    out.append("</section>")
    return "".join(out)


def _all_metrics_section(result: TrainResult) -> str:
    out = ['<section id="all-metrics"><h2>All metrics</h2><div class="row">']
    for name, metrics in (
        ("Segmenter", result.segmenter.metrics),
        ("Propensity", result.propensity.metrics),
    ):
        out.append(
            "<div>"
            + f"<h3>{_esc(name)}</h3>"
            + _table(
                ["Metric", "Value"],
                [[_esc(k), _esc(_num(v))] for k, v in sorted(metrics.items())],
                numeric=[False, True],
            )
            + "</div>"
        )
    out.append("</div></section>")
    return "".join(out)


def render_report(
    result: TrainResult, *, title: str = DEFAULT_TITLE, shap_sample: int = SHAP_SAMPLE
) -> str:
    """The report as one HTML document (no external resources).

    Args:
        result: A training run's output.
        title: Page title and heading.
        shap_sample: Holdout rows explained with TreeSHAP.
    """
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">Generated {generated}.</p>',
        _run_section(result),
        metrics_section(result.propensity.metrics),
        segmenter_section(result),
        propensity_section(result, shap_sample),
        _all_metrics_section(result),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    result: TrainResult,
    path: Path,
    *,
    title: str = DEFAULT_TITLE,
    shap_sample: int = SHAP_SAMPLE,
) -> Path:
    """Write the training report for ``result`` to ``path`` (one HTML file).

    The file is written next to its destination and renamed into place, so a
    reader never sees half a report.

    Args:
        result: A training run's output (:func:`training.pipeline.train`).
        path: Destination; missing parent directories are created.
        title: Page title and heading.
        shap_sample: Holdout rows explained with TreeSHAP (the report's one
            costly step: ~1 s for 2000 rows of a 250-tree booster).

    Returns:
        ``path``.
    """
    clock = time.perf_counter()
    document = render_report(result, title=title, shap_sample=shap_sample)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file private; a report is meant to be shared.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info(
        "report: wrote %s (%.0f KB) in %.2fs",
        path,
        len(document.encode()) / 1024,
        time.perf_counter() - clock,
    )
    return path
