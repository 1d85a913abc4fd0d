"""Tests of skdccm.metrics against brute-force and loop-based references."""

import itertools
import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import GridSearchCV

from skdccm.metrics import (
    bcubed_f1,
    bcubed_precision_recall,
    clustering_accuracy,
    clustering_accuracy_scorer,
    clustering_scores,
    get_scorer,
    match_clusters,
)


def brute_force_accuracy(y_true, y_pred):
    """Best accuracy over every injective map between clusters and classes (float64 loop)."""
    classes = sorted(set(y_true.tolist()))
    clusters = sorted(set(y_pred.tolist()))
    best = 0
    if len(clusters) <= len(classes):
        # each cluster goes to a distinct class
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image, strict=True))
            best = max(best, sum(mapping[c] == t for t, c in zip(y_true, y_pred, strict=True)))
    else:
        # each class receives a distinct cluster; the other clusters are errors
        for chosen in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(chosen, classes, strict=True))
            best = max(best, sum(mapping.get(c) == t for t, c in zip(y_true, y_pred,
                                                                     strict=True)))
    return best / len(y_true)


def loop_bcubed(y_true, y_pred):
    """BCubed straight from the definition: per-sample shares, averaged."""
    n = len(y_true)
    precisions, recalls = [], []
    for i in range(n):
        same_cluster = [j for j in range(n) if y_pred[j] == y_pred[i]]
        same_class = [j for j in range(n) if y_true[j] == y_true[i]]
        correct = [j for j in same_cluster if y_true[j] == y_true[i]]
        precisions.append(len(correct) / len(same_cluster))
        recalls.append(len(correct) / len(same_class))
    return float(np.mean(precisions)), float(np.mean(recalls))


@pytest.mark.parametrize("seed", range(12))
def test_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(1, 5))
    n_clusters = int(rng.integers(1, 6))       # fewer, equal or more clusters than classes
    n = int(rng.integers(1, 30))
    y_true = rng.integers(0, n_classes, n)
    y_pred = rng.integers(0, n_clusters, n) * 3 + 7     # labels need not be 0..K-1
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(
        brute_force_accuracy(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_bcubed_matches_loop_definition(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 40))
    y_true = rng.integers(0, int(rng.integers(1, 5)), n)
    y_pred = rng.integers(0, int(rng.integers(1, 6)), n)
    precision, recall = bcubed_precision_recall(y_true, y_pred)
    ref_precision, ref_recall = loop_bcubed(y_true.tolist(), y_pred.tolist())
    assert precision == pytest.approx(ref_precision, abs=1e-12)
    assert recall == pytest.approx(ref_recall, abs=1e-12)
    f1 = bcubed_f1(y_true, y_pred)
    assert f1 == pytest.approx(2 * ref_precision * ref_recall / (ref_precision + ref_recall))


def test_perfect_labels_up_to_renaming():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([5, 5, 9, 9, 1, 1, 1])
    assert clustering_accuracy(y_true, y_pred) == 1.0
    assert bcubed_precision_recall(y_true, y_pred) == (1.0, 1.0)
    assert match_clusters(y_true, y_pred) == {5: 0, 9: 1, 1: 2}


def test_single_cluster():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.zeros(6, dtype=int)
    # One cluster matches the largest class only.
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(3 / 6)
    precision, recall = bcubed_precision_recall(y_true, y_pred)
    assert recall == 1.0
    assert precision == pytest.approx((3 * 3 / 6 + 2 * 2 / 6 + 1 / 6) / 6)


def test_more_clusters_than_classes_counts_extra_clusters_as_errors():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 3])  # every cluster pure, but 4 of them
    # Best matching: cluster 0 (or 1) -> class 0 (2 samples), cluster 2 -> class 1 (3).
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(5 / 8)
    precision, recall = bcubed_precision_recall(y_true, y_pred)
    assert precision == 1.0
    assert recall < 1.0
    mapping = match_clusters(y_true, y_pred)
    assert len(mapping) == 2 and mapping[2] == 1


def test_every_sample_its_own_cluster():
    y_true = np.array([0, 1, 0, 1])
    y_pred = np.arange(4)
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(2 / 4)
    assert bcubed_precision_recall(y_true, y_pred) == pytest.approx((1.0, 0.5))


def test_string_labels():
    assert clustering_accuracy(["a", "a", "b"], ["x", "x", "y"]) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="3 labels and y_pred 2"):
        clustering_accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        bcubed_precision_recall([], [])
    with pytest.raises(ValueError, match="1-D"):
        clustering_accuracy(np.zeros((2, 2)), np.zeros((2, 2)))


def test_clustering_scores_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    scores = clustering_scores(y_true, y_pred)
    assert set(scores) == {"acc", "nmi", "ari"}
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred))
    assert scores["acc"] == pytest.approx(brute_force_accuracy(y_true, y_pred))


class ThresholdClusterer(ClusterMixin, BaseEstimator):
    """Two clusters split at ``threshold`` on one feature, with arbitrary names."""

    def __init__(self, threshold=0.0, feature=0):
        self.threshold = threshold
        self.feature = feature

    def fit(self, X, y=None):
        self.labels_ = self.predict(X)
        return self

    def predict(self, X):
        return np.where(np.asarray(X)[:, self.feature] > self.threshold, 7, 3)


def test_scorer_in_grid_search_picks_the_right_threshold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = (X[:, 0] > 0.5).astype(int)
    search = GridSearchCV(ThresholdClusterer(), {"threshold": [-1.0, 0.5, 1.5]},
                          scoring=clustering_accuracy_scorer, cv=3).fit(X, y)
    assert search.best_params_ == {"threshold": 0.5}
    assert search.best_score_ == 1.0
    # The cluster names (3, 7) are not the class names (0, 1): matching must handle that.
    assert clustering_accuracy_scorer(search.best_estimator_, X, y) == 1.0


@pytest.mark.parametrize("name", ["clustering_accuracy", "bcubed_f1", "bcubed_precision",
                                  "bcubed_recall", "adjusted_rand_score"])
def test_get_scorer_names_and_pickling(name):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] > 0).astype(int)
    scorer = pickle.loads(pickle.dumps(get_scorer(name)))
    est = ThresholdClusterer(threshold=0.0).fit(X)
    assert scorer(est, X, y) == pytest.approx(1.0)
    # split on the feature the labels ignore: imperfect on every metric
    bad = ThresholdClusterer(threshold=0.0, feature=1).fit(X)
    assert scorer(bad, X, y) < 1.0


def test_get_scorer_unknown_name():
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        get_scorer("nope")
