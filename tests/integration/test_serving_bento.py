"""``bentoml build`` turns the repository into a Bento of the scoring service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from infra.settings import PROJECT_ROOT


def test_bentoml_build_produces_a_bento_of_the_service(tmp_path: Path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    done = subprocess.run(
        [str(bentoml), "build", str(PROJECT_ROOT)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (bento,) = [
        p
        for p in (tmp_path / "bentos" / "segscore-scoring").iterdir()
        if p.is_dir() and p.name != "latest"
    ]
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "serving.service:ScoringService"
    assert manifest["name"] == "segscore-scoring"
    source = bento / "src"
    for module in (
        "serving/service.py",
        "core/store/online_reader.py",
        "core/feature_math.py",
        "core/registry.py",
        "feature_repo/live_features.py",
    ):
        assert (source / module).is_file(), module
    assert not (source / "tests").exists()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "lightgbm" in requirements and "feast" in requirements
