"""Tests of benchmarks/refinement_cost.py: the timings behind ``ARPACK_MAX_SAMPLES``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import refinement_cost  # noqa: E402


def test_synthetic_features_are_k_separated_clusters():
    features = refinement_cost.synthetic_features(300, 3, 16, seed=1)
    assert features.shape == (300, 16) and features.dtype == np.float32
    np.testing.assert_array_equal(features, refinement_cost.synthetic_features(300, 3, 16,
                                                                               seed=1))


def test_both_solvers_are_timed_and_agree():
    features = refinement_cost.synthetic_features(400, 4, 16)
    row = refinement_cost.time_refinement(features, 4, ["arpack", "lobpcg"], max_arpack=1000)
    assert row["n_samples"] == 400
    assert all(row[key] >= 0 for key in ("graph_s", "arpack_s", "lobpcg_s", "head_s"))
    assert row["ari"] == pytest.approx(1.0)


def test_arpack_is_skipped_above_its_limit(tmp_path, capsys):
    out = tmp_path / "cost.md"
    assert refinement_cost.main(["--n-samples", "200,300", "--n-clusters", "3",
                                 "--n-features", "8", "--max-arpack", "250",
                                 "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "| n_samples | graph s | arpack s | lobpcg s | ARI | head s |"
    first, second = (line.split(" | ") for line in lines[2:])
    assert first[0] == "| 200" and first[2] != "-" and first[4] == "1.000"
    assert second[0] == "| 300" and second[2] == "-" and second[4] == "-"
    assert "| 300 |" in capsys.readouterr().out
