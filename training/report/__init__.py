"""The training report: one self-contained HTML file per training run.

The report is meant to be mailed, attached to a ticket or opened from a CI
artifact years later, so it references nothing outside itself: every plot is an
inline SVG drawn by this package (axes, lines, dots, bars) rather than with
matplotlib. That keeps the project free of a plotting dependency (and its second
of import time), keeps the file small and crisp at any zoom, and makes the output
plain text a test can inspect.

The package has two halves. The numbers (ROC and PR points, reliability bins, lift
per decile, SHAP importances, the PCA projection, segment profile gaps) come from
pure functions in :mod:`training.report.measures` that unit tests check against
scikit-learn. The rest only draws what those functions return:

- :mod:`training.report.markup`: escaping, number text, HTML tables and figures.
- :mod:`training.report.svg`: axes panels, legends and colours for inline SVG.
- :mod:`training.report.segmenter_section`: the segmenter's plots and section.
- :mod:`training.report.propensity_plots`: ROC, PR, calibration, lift and SHAP plots.
- :mod:`training.report.propensity_section`: the metrics and propensity sections.
- :mod:`training.report.page`: the run section, the page and writing it to disk.
"""

from training.report.page import DEFAULT_TITLE, render_report, write_report

__all__ = ["DEFAULT_TITLE", "render_report", "write_report"]
