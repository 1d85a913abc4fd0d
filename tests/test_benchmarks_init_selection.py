"""Tests of benchmarks/init_selection.py: the evidence behind ``DCCMClustering(n_init=...)``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import init_selection  # noqa: E402


def test_selection_table_against_hand_computed_ranks():
    accs = np.array([0.9, 0.5, 0.7])
    losses = np.array([[1.0, 0.1], [2.0, 0.3], [0.5, 0.2]])
    first, second = init_selection.selection_table(accs, losses, group=2)
    # Epoch 1: loss ranks 2, 3, 1 against ACC ranks 3, 1, 2: rho = 1 - 6 * 6 / (3 * 8).
    assert first["spearman"] == pytest.approx(-0.5)
    # Pairs (0, 1), (0, 2), (1, 2) keep runs 0, 2, 2 at epoch 1 and 0, 0, 2 at epoch 2.
    assert first["chosen_mean"] == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert first["chosen_min"] == pytest.approx(0.7)
    assert second["spearman"] == pytest.approx(-1.0)
    assert second["chosen_mean"] == pytest.approx((0.9 + 0.9 + 0.7) / 3)


def test_score_table_keeps_the_highest_score_of_each_group():
    accs = np.array([0.9, 0.5, 0.7])
    (row,) = init_selection.score_table(accs, {"s": np.array([0.2, 0.1, 0.3])}, group=2)
    # Score ranks 2, 1, 3 against ACC ranks 3, 1, 2: rho = 1 - 6 * 2 / (3 * 8).
    assert row["spearman"] == pytest.approx(0.5)
    # Pairs (0, 1), (0, 2), (1, 2) keep runs 0, 2, 2.
    assert row["chosen_mean"] == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert row["chosen_min"] == pytest.approx(0.7)


def test_label_free_scores_of_a_fitted_model():
    from skdccm import DCCMClustering, datasets
    X, _ = datasets.load_dataset("digits")
    X = X[:80]
    est = DCCMClustering(n_clusters=4, max_iter=1, batch_size=32, random_state=0).fit(X)
    scores = init_selection.label_free_scores(est, X, n_views=2)
    proba = est.predict_proba(X)
    assert scores["confidence"] == pytest.approx(proba.max(axis=1).mean())
    assert 0 <= scores["stability"] <= 1 and 0 < scores["balance"] <= 1 + 1e-9
    assert scores["low_final_loss"] == pytest.approx(-est.history_[-1]["loss"])
    # Views drawn with the fixed seed: the same model scores the same twice.
    assert init_selection.label_free_scores(est, X, n_views=2) == scores


def test_script_runs_end_to_end_and_writes_what_it_printed(tmp_path, capsys, monkeypatch):
    from skdccm import datasets
    X, y = datasets.load_dataset("digits")
    monkeypatch.setattr(init_selection, "load_dataset", lambda name: (X[:60], y[:60]))
    init_selection.main(["--seeds", "2", "--group", "2", "--param", "max_iter=2",
                         "--param", "batch_size=32", "--param", "optimizer=adam",
                         "--out", str(tmp_path)])
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [run["seed"] for run in runs] == [0, 1]
    assert all(len(run["losses"]) == 2 and 0 <= run["acc"] <= 1 for run in runs)
    assert all(set(run["scores"]) == {"confidence", "stability", "balance", "low_final_loss"}
               for run in runs)
    table = (tmp_path / "selection.md").read_text()
    # Two epochs and four scores, each table with a header and a rule.
    assert table.count("\n| ") == 4 + 6
    assert "'max_iter': 2" in table and "'optimizer': 'adam'" in table
    assert table.strip() in capsys.readouterr().out
