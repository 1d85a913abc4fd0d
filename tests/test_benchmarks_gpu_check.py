"""benchmarks/gpu_check.py at toy sizes on CPU (``--tiny``): every step writes its outputs.

The CIFAR-10 file lives outside the project (``skdccm.datasets.data_home()``); the tests
that fit skip without it. The whole check with its ``pytest -m gpu`` and speed steps takes
about 40 s on two cores, so that run is marked slow; the fast test runs the fits only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skdccm.datasets import data_home

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

CIFAR = data_home() / "cifar10_jpeg.npz"
needs_cifar = pytest.mark.skipif(not CIFAR.exists(), reason=f"{CIFAR} not found")


def check_fits(out: Path) -> None:
    for method, name in (("dccm", "DCCMClustering"), ("crlc", "CRLCClustering")):
        fit = json.loads((out / f"fit_{method}.json").read_text())
        assert fit["estimator"] == name and fit["n"] == gpu_check.TINY_SAMPLES
        assert 0.0 <= fit["acc"] <= 1.0 and 0.0 <= fit["nmi"] <= 1.0
        assert fit["max_time"] == 1.0 and fit["epochs"] == len(fit["history"]) >= 1
        assert fit["stopped_by_time"] and fit["epochs"] < fit["preset_epochs"]
        assert fit["train_images_per_s"] > 0 and fit["predict_images_per_s"] > 0
        assert fit["predict_matches_labels"] == 1.0
    assert "| CIFAR-10 fit |" in (out / "summary.md").read_text()


@needs_cifar
def test_tiny_fits_write_scores_and_summary(tmp_path):
    code = gpu_check.main(["--tiny", "--device", "cpu", "--data", str(CIFAR), "--out",
                           str(tmp_path), "--skip", "tests", "speed"])
    assert code == 0
    check_fits(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["steps"]) == ["fits"] and summary["tiny"]
    assert summary["steps"]["fits"]["status"] == "ok"
    assert summary["steps"]["fits"]["dccm"]["epochs"] >= 1


def test_a_failed_step_is_recorded_and_fails_the_check(tmp_path):
    code = gpu_check.main(["--tiny", "--device", "cpu", "--data", str(tmp_path / "absent.npz"),
                           "--out", str(tmp_path), "--skip", "tests", "speed"])
    assert code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "absent.npz not found" in summary["steps"]["fits"]["status"]
    assert "absent.npz not found" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
@needs_cifar
def test_tiny_check_runs_every_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device",
         "cpu", "--data", str(CIFAR), "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    check_fits(tmp_path)
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert steps["tests"]["tests"] >= 1 and steps["tests"]["failures"] == 0
    assert (tmp_path / "tests.xml").exists() and (tmp_path / "tests.log").exists()
    for method in ("dccm", "crlc"):
        assert (tmp_path / "speed" / f"speed_{method}.json").exists()
        assert steps["speed"][method]["ratio_train"] > 0
