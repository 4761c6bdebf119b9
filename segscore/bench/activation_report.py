"""The report of ``segscore bench activation``: latencies, misses, verdicts, table.

Latencies are taken from the records the reader read (first read of each
``id``: a resent record keeps its id) whose cause is a live event; records
caused by the backlog have no send time and are not counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console

from segscore.bench.activation_traffic import Matcher, Sent
from segscore.bench.harness import percentiles_ms, report_rows, report_table

# The targets: at 5,000 events/s, one worker, segments and rules on.
TARGETS = {"trigger_p99_ms": 250.0, "timer_lateness_p99_ms": 1000.0}
TARGET_EVENTS_PER_S = 20_000.0


def _stats(name: str, seconds: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{name}_count": len(seconds)}
    if seconds:
        p50, p99 = percentiles_ms(seconds, (50, 99), digits=1)
        out.update(
            {
                f"{name}_p50_ms": p50,
                f"{name}_p99_ms": p99,
                f"{name}_max_ms": round(1000 * max(seconds), 1),
            }
        )
    else:
        out.update({f"{name}_p50_ms": None, f"{name}_p99_ms": None})
        out[f"{name}_max_ms"] = None
    return out


def live_stats(matcher: Matcher, sent: Sent, changes_topic: str) -> dict[str, Any]:
    """Latencies of the records caused by live events, and the missing ones.

    Records caused by backlog events (their cause has no send time here) are
    not counted. A timer due within a second of the last send, or after it,
    falls due by the idle clock rather than by traffic: counted apart.
    """
    triggers: list[float] = []
    changes: list[float] = []
    causes: list[tuple[float, float]] = []  # (sent at, seconds to read), not timers
    lateness: list[float] = []
    after_traffic = 0
    by_rule: dict[str, int] = {}
    for row in matcher.records.values():
        sent_at = sent.sent_at.get(row["caused_by"])
        if sent_at is None:
            continue
        if row["topic"] == changes_topic:
            changes.append(row["read"] - sent_at)
            causes.append((sent_at, row["read"] - sent_at))
            continue
        by_rule[row["rule"]] = by_rule.get(row["rule"], 0) + 1
        if row["kind"] != "timer":
            triggers.append(row["read"] - sent_at)
            causes.append((sent_at, row["read"] - sent_at))
        elif row["at_ts"] <= sent.last - 1.0:
            lateness.append(row["read"] - row["at_ts"])
        else:
            after_traffic += 1
    missing = matcher.missing()
    return {
        **_stats("trigger", triggers),
        **_stats("segment_change", changes),
        **_stats("timer_lateness", lateness),
        "timers_due_after_traffic": after_traffic,
        "latency_trend_ms_per_s": _trend(causes),
        "triggers_by_rule": dict(sorted(by_rule.items())),
        "expected_activations": len(matcher.expected),
        "expected_activations_seen": len(matcher.expected) - len(missing),
        "missing_activations": len(missing),
        "missing_examples": "; ".join(
            f"{e.kind} {e.user_id} by {'|'.join(sorted(e.causes))}" for e in missing[:5]
        ),
        "duplicate_records": matcher.duplicates,
    }


def _trend(pairs: list[tuple[float, float]]) -> float | None:
    """Slope of latency (ms) over send time (s), segment changes and triggers.

    Near 0 when the worker keeps up with the offered rate; about
    (1 - capacity / rate) * 1000 when it falls behind, and the percentiles then
    only grow with the duration.
    """
    if len(pairs) < 3:
        return None
    sent = np.array([p[0] for p in pairs])
    ms = np.array([p[1] for p in pairs]) * 1000
    return round(float(np.polyfit(sent - sent.min(), ms, 1)[0]), 1)


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    """``meets_<target>`` for each target, read from the (median) result."""
    out: dict[str, Any] = {}
    for key, limit in TARGETS.items():
        value = result.get(key)
        out[f"meets_{key}"] = value is not None and value <= limit
    # The target is per worker: more workers split the partitions between them.
    out["meets_events_per_s"] = result["events_per_s_per_worker"] >= TARGET_EVENTS_PER_S
    return out


def print_result(console: Console, result: dict[str, Any]) -> None:
    """The headline numbers first, then every key, in one table.

    A number measured in every repeat shows its median, the spread and each
    repeat's value.
    """
    head = (
        "trigger_p50_ms", "trigger_p99_ms", "segment_change_p50_ms",
        "segment_change_p99_ms", "timer_lateness_p50_ms", "timer_lateness_p99_ms",
        "latency_trend_ms_per_s", "events_per_s", "events_per_s_without_activation",
        "missing_activations",
    )  # fmt: skip
    rows = {row[0]: row for row in report_rows(result)}
    order = (*head, *(k for k in rows if k not in head))
    table = report_table(
        "segscore bench activation", (rows[k] for k in order if k in rows)
    )
    console.print(table)


def flat(result: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts (CPU shares, counts) spread into top-level keys."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for name, inner in value.items():
                out[f"{key}_{name}"] = inner
        else:
            out[key] = value
    return out
