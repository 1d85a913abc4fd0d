"""Tests of benchmarks/consensus_subsets.py: consensus ACC over every subset of saved runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import consensus_subsets  # noqa: E402


def test_subsets_lists_every_combination_or_a_seeded_draw():
    assert consensus_subsets.subsets(4, 2) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    drawn = consensus_subsets.subsets(10, 5, limit=7)
    assert len(drawn) == 7 == len(set(drawn))
    assert drawn == consensus_subsets.subsets(10, 5, limit=7)


def _runs(y, wrong):
    """One-hot runs equal to ``y`` except that samples ``wrong[r]`` of run r go to cluster 0."""
    runs = []
    for indices in wrong:
        labels = y.copy()
        labels[list(indices)] = 0
        runs.append(np.eye(3)[labels])
    return runs


def test_subset_accuracies_score_each_subset_consensus():
    y = np.repeat([0, 1, 2], 10)
    # Each run puts one different sample of cluster 2 into cluster 0.
    runs = _runs(y, [[20], [21], [22]])
    single = consensus_subsets.subset_accuracies(y, runs, 1, 3)
    np.testing.assert_allclose(single, [29 / 30] * 3)
    # Together, each mistake is out-voted two to one.
    (three,) = consensus_subsets.subset_accuracies(y, runs, 3, 3)
    assert three == 1.0


def test_script_fits_saves_and_reuses(tmp_path, capsys, monkeypatch):
    from skdccm import datasets
    X, y = datasets.load_dataset("digits")
    keep = np.isin(y, [0, 1, 2])
    monkeypatch.setattr(consensus_subsets, "load_suite_set",
                        lambda name, n: (X[keep][:60], y[keep][:60]))
    consensus_subsets.main(["--set", "digits", "--runs", "3", "--sizes", "1,3",
                            "--param", "max_iter=1", "--param", "batch_size=32",
                            "--param", "backbone=mlp", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    table = (tmp_path / "subsets.md").read_text()
    assert table.strip() in printed
    report = json.loads((tmp_path / "subsets.json").read_text())
    assert report["params"] == {"max_iter": 1, "batch_size": 32, "backbone": "mlp"}
    assert report["subsets"]["1"]["n"] == 3 and report["subsets"]["3"]["n"] == 1
    with np.load(tmp_path / "runs.npz") as runs:
        assert runs["proba"].shape == (3, 60, 3)
        np.testing.assert_allclose(report["single"]["mean"], runs["acc"].mean())

    # Reuse: no fit, the saved configuration in the header.
    monkeypatch.setattr(consensus_subsets, "fit_runs", None)
    consensus_subsets.main(["--sizes", "2", "--reuse", "--out", str(tmp_path)])
    reused = json.loads((tmp_path / "subsets.json").read_text())
    assert reused["set"] == "digits" and reused["subsets"]["2"]["n"] == 3
    assert "'backbone': 'mlp'" in capsys.readouterr().out


def test_script_rejects_sizes_beyond_the_runs(tmp_path, monkeypatch):
    np.savez(tmp_path / "runs.npz", config=json.dumps({"set": "s", "method": "dccm",
                                                       "params": {}}),
             acc=np.array([0.5, 0.6]), seconds=np.array([1.0, 1.0]),
             proba=np.full((2, 4, 2), 0.5), y=np.array([0, 0, 1, 1]), seeds=np.arange(2))
    with pytest.raises(SystemExit):
        consensus_subsets.main(["--sizes", "3", "--reuse", "--out", str(tmp_path)])
