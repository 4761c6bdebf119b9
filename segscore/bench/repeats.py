"""Repeated measurements: each benchmark's core numbers as a median with its spread.

One run of a benchmark on a shared two-core machine can land anywhere in a wide
band; a reader comparing two results must be able to tell noise from a regression.
So a benchmark repeats its core measurement, reports each number as the median of
the repeats (what targets are checked against), keeps every repeat's value, and
states the spread and the machine's load average around each repeat.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# The number of repeats of a benchmark's core measurement unless told otherwise.
DEFAULT_REPEATS = 3


def load_average() -> float:
    """The machine's one-minute load average, rounded."""
    return round(os.getloadavg()[0], 2)


def summarize_runs(
    runs: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, Any]:
    """Each of ``keys`` as the median over ``runs``, with every value and the spread.

    Args:
        runs: One flat result per repeat; each holds every key of ``keys`` and may
            hold ``load_avg_1m`` (see :func:`load_average`).
        keys: The numbers to summarise.

    Returns:
        ``repeats``; per key, ``<key>`` (the median), ``<key>_runs`` (each repeat's
        value, in order) and ``<key>_spread_pct`` (max minus min, in percent of
        the median; 0 when the median is 0); and ``load_avg_1m_runs`` when the runs
        carry it.

    Raises:
        ValueError: No runs, or a run lacks a key.
    """
    if not runs:
        raise ValueError("no runs to summarise")
    out: dict[str, Any] = {"repeats": len(runs)}
    for key in keys:
        missing = [i for i, run in enumerate(runs) if run.get(key) is None]
        if missing:
            raise ValueError(f"repeat(s) {missing} have no value for {key!r}")
        values = [float(run[key]) for run in runs]
        median = statistics.median(values)
        out[key] = round(median, 3)
        out[f"{key}_runs"] = [round(v, 3) for v in values]
        out[f"{key}_spread_pct"] = (
            round(100.0 * (max(values) - min(values)) / abs(median), 1)
            if median
            else 0.0
        )
    loads = [run["load_avg_1m"] for run in runs if "load_avg_1m" in run]
    if loads:
        out["load_avg_1m_runs"] = loads
    return out


def chosen_options(
    given: Mapping[str, Any], quick: bool, quick_values: Mapping[str, Any]
) -> dict[str, Any]:
    """A benchmark's options: those given (``None`` = not given) over ``--quick``'s.

    Given options win; with ``quick``, ``quick_values`` fill in the rest; anything
    still missing is the config's default.
    """
    chosen = {k: v for k, v in given.items() if v is not None}
    return {**quick_values, **chosen} if quick else chosen


def summarize_numbers(
    runs: Sequence[dict[str, Any]], totals: Sequence[str] = ()
) -> dict[str, Any]:
    """Repeats of one measurement as one flat result.

    Every key that is a number (not a flag) in every run is summarised by
    :func:`summarize_runs` (median, each value, spread);
    the load average is kept per run. ``totals`` are counts of what went wrong
    (missing records, duplicates), summed instead: a median would hide the one
    repeat that had them. Any other key (a flag, a name, a number some run
    could not measure) is the last run's value.
    """

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    own = {"load_avg_1m", *totals}
    keys = [
        key
        for key in runs[0]
        if key not in own and all(number(run.get(key)) for run in runs)
    ]
    out = {k: v for k, v in runs[-1].items() if k not in keys and k not in own}
    out.update(summarize_runs(runs, keys))
    for key in totals:
        out[key] = sum(run[key] for run in runs)
    return out
