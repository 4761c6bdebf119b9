"""The segmenter's part of the training report: k selection, PCA and profiles.

Three plots (silhouette and Davies-Bouldin by k, segments in 2-D PCA, the
segment profile heatmap) and the section that places them with the segment
table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.registry import Segment
from training.report.markup import _esc, _figure, _num, _table
from training.report.measures import (
    ProfileGaps,
    Projection,
    k_selection,
    profile_gaps,
    segment_projection,
)
from training.report.svg import (
    _PALETTE,
    _compact,
    _diverging,
    _f,
    _legend,
    _legend_width,
    _nice_range,
    _Panel,
    _svg,
)
from training.segmenter import dominant_mode_sentence

if TYPE_CHECKING:
    from training.pipeline import TrainResult


def plot_k_selection(
    rows: Sequence[tuple[int, float, float]], chosen: int | None
) -> str:
    """Silhouette (higher is better) and Davies-Bouldin (lower) by k, side by side."""
    ks = np.array([r[0] for r in rows], dtype=np.float64)
    xlim = (float(ks.min()) - 0.5, float(ks.max()) + 0.5)
    xticks = [(float(k), str(int(k))) for k in ks]
    body: list[str] = []
    for i, (col, name, color) in enumerate(
        (
            (1, "Silhouette (higher is better)", "#4e79a7"),
            (2, "Davies-Bouldin (lower is better)", "#e15759"),
        )
    ):
        values = np.array([r[col] for r in rows], dtype=np.float64)
        panel = _Panel(
            (60 + i * 330, 30, 250, 200),
            xlim,
            _nice_range(values),
            title=name,
            xlabel="k (segments)",
            xticks=xticks,
        )
        body.append(panel.frame())
        if chosen is not None:
            x = _f(float(panel.px(chosen)))
            body.append(
                f'<line x1="{x}" x2="{x}" y1="{_f(panel.top)}" '
                f'y2="{_f(panel.top + panel.height)}" stroke="#333" '
                'stroke-dasharray="4 3"/>'
                f'<text x="{x}" y="{_f(panel.top + 12)}" dx="4" class="tick">'
                f"chosen k={chosen}</text>"
            )
        body.append(panel.line(ks, values, color, markers=True))
        if chosen is not None and chosen in ks:
            at = values[ks == chosen]
            body.append(panel.dots([chosen], at, "#222", radius=5.5, opacity=1.0))
    return _svg("k_selection", 640, 275, body, "Silhouette and Davies-Bouldin by k")


def plot_projection(projection: Projection, segments: Sequence[Segment]) -> str:
    """Users in the first two principal components, coloured by segment."""
    names = {s.id: s.name for s in segments}
    ids = sorted(set(projection.labels.tolist()) | set(names))
    colors = {seg: _PALETTE[i % len(_PALETTE)] for i, seg in enumerate(ids)}
    pts = projection.points
    labels = [f"{seg}: {names.get(seg, f'segment {seg}')}" for seg in ids]
    legend_w = _legend_width(labels)
    panel = _Panel(
        (60, 20, 460, 400),
        _nice_range(np.r_[pts[:, 0], projection.centroids[:, 0]]),
        _nice_range(np.r_[pts[:, 1], projection.centroids[:, 1]]),
        xlabel=f"PC1 ({projection.explained[0]:.0%} of variance)",
        ylabel=f"PC2 ({projection.explained[1]:.0%} of variance)",
    )
    body = [panel.frame()]
    for seg in ids:
        mine = projection.labels == seg
        body.append(panel.dots(pts[mine, 0], pts[mine, 1], colors[seg], opacity=0.45))
    for seg in ids:
        if seg < len(projection.centroids):
            cx = float(panel.px(projection.centroids[seg, 0]))
            cy = float(panel.py(projection.centroids[seg, 1]))
            body.append(
                f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="7" fill="{colors[seg]}" '
                f'stroke="#000" stroke-width="1.5"><title>centroid of '
                f"{_esc(names.get(seg, seg))}</title></circle>"
            )
    body.append(
        _legend(
            540,
            20,
            [(lab, colors[s]) for lab, s in zip(labels, ids, strict=True)],
            dots=True,
        )
    )
    return _svg(
        "segments_pca",
        550 + legend_w,
        470,
        body,
        "Segments in 2-D PCA of the scaled space",
    )


def plot_profiles(segments: Sequence[Segment], gaps: ProfileGaps) -> str:
    """Heatmap: segment means, coloured by standardised gap to the median."""
    features = gaps.features
    rows = [f"{s.id}: {s.name}" for s in segments] + ["Population median"]
    left = 14 + 6.3 * max(len(r) for r in rows)
    cell_w, cell_h, top = 62.0, 26.0, 120.0
    # Column labels slant up and to the right, past the last column.
    overhang = 0.77 * 6.3 * max((len(n) for n in features), default=0)
    width = left + cell_w * len(features) + max(20.0, overhang - cell_w / 2)
    height = top + cell_h * len(rows) + 50
    body: list[str] = []
    for j, name in enumerate(features):
        x = left + cell_w * (j + 0.5)
        body.append(
            f'<text transform="translate({_f(x)},{_f(top - 6)}) rotate(-40)" '
            f'class="tick">{_esc(name)}</text>'
        )
    for i, row in enumerate(rows):
        y = top + cell_h * i
        body.append(
            f'<text x="{_f(left - 8)}" y="{_f(y + cell_h / 2)}" dy=".32em" '
            f'text-anchor="end" class="tick">{_esc(row)}</text>'
        )
        for j, name in enumerate(features):
            x = left + cell_w * j
            if i < len(segments):
                value = segments[i].profile.get(name, float("nan"))
                gap = float(gaps.gap[i, j])
                fill = _diverging(gap)
                tip = f"{segments[i].name}, {name}: mean {value:.4g}, gap {gap:+.2f} sd"
            else:
                value, fill = float(gaps.median[j]), "#f4f4f4"
                tip = f"population median of {name}: {value:.4g}"
            body.append(
                f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(cell_w - 2)}" '
                f'height="{_f(cell_h - 2)}" fill="{fill}"><title>{_esc(tip)}</title>'
                f'</rect><text x="{_f(x + cell_w / 2 - 1)}" y="{_f(y + cell_h / 2)}" '
                f'dy=".32em" text-anchor="middle" class="cell">{_compact(value)}</text>'
            )
    # Colour key.
    key_y = top + cell_h * len(rows) + 16
    for k, value in enumerate(np.linspace(-2, 2, 9)):
        body.append(
            f'<rect x="{_f(left + 22 * k)}" y="{_f(key_y)}" width="22" height="10" '
            f'fill="{_diverging(float(value))}"/>'
        )
    body.append(
        f'<text x="{_f(left + 22 * 9 + 8)}" y="{_f(key_y + 5)}" dy=".32em" '
        'class="tick">gap to the median on the log1p scale, in population sd '
        "(-2 ... +2)</text>"
    )
    return _svg("segment_profiles", width, height, body, "Segment profiles")


def segmenter_section(result: TrainResult) -> str:
    """The segmenter section: k selection, segments in PCA, the segment profiles."""
    seg = result.segmenter
    out = ['<section id="segmenter"><h2>Segmenter</h2>']
    out.append("<h3>Silhouette and Davies-Bouldin by k</h3>")
    rows = k_selection(seg.metrics)
    chosen = int(seg.metrics["k"]) if "k" in seg.metrics else None
    if rows:
        out.append(
            _figure(
                plot_k_selection(rows, chosen),
                "Each candidate k clustered the same users; the best silhouette wins "
                "unless one segment holds most users and another k splits it. Both "
                "scores are computed on at most 5000 distinct feature vectors, so "
                "users with identical features do not inflate them.",
            )
        )
    else:
        out.append('<p class="note">The segmenter recorded no per-k scores.</p>')
    facts = [
        f"k = {_num(seg.metrics.get('k'))}",
        f"silhouette {_num(seg.metrics.get('silhouette'))}",
        f"Davies-Bouldin {_num(seg.metrics.get('davies_bouldin'))}",
    ]
    if "ari_vs_personas" in seg.metrics:
        facts.append(
            f"adjusted Rand index vs. simulated personas "
            f"{_num(seg.metrics['ari_vs_personas'])}"
        )
    out.append(f"<p>{_esc('; '.join(facts))}.</p>")
    one_mode = dominant_mode_sentence(seg.metrics)
    if one_mode:
        out.append(f'<p class="note">{_esc(one_mode)}</p>')

    out.append("<h3>Segments in 2-D PCA</h3>")
    frame = result.segmentation_frame
    if frame is not None and len(frame):
        projection = segment_projection(seg, frame)
        out.append(
            _figure(
                plot_projection(projection, seg.segments),
                f"{len(projection.points):,} users (a random sample) in the first two "
                "principal components of the space KMeans clusters in (log1p, "
                "standardised, weighted); large dots are the centroids.",
            )
        )
    else:
        out.append('<p class="note">No segmentation frame in this result.</p>')

    out.append("<h3>Segment profiles</h3>")
    total = sum(s.size for s in seg.segments) or 1
    out.append(
        _table(
            ["Id", "Segment", "Users", "Share", "Description"],
            [
                [
                    str(s.id),
                    f"<strong>{_esc(s.name)}</strong>",
                    f"{s.size:,}",
                    f"{s.size / total:.1%}",
                    _esc(s.description),
                ]
                for s in seg.segments
            ],
            numeric=[True, False, True, True, False],
        )
    )
    if seg.segments:
        gaps = profile_gaps(seg.segments, seg.features, frame, seg.defaults)
        out.append(
            _figure(
                plot_profiles(seg.segments, gaps),
                "Cells show each segment's mean; colour is its gap to the population "
                "median on the log1p scale in population standard deviations (red "
                "above, blue below).",
            )
        )
    out.append("</section>")
    return "".join(out)
