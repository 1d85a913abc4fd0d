"""ConsensusClustering: the spectral map against the dense co-association graph, recovery of
a partition that no single run found, prediction, validation and scikit-learn conformance."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdccm import ConsensusClustering, DCCMClustering
from skdccm.consensus import spectral_embedding, spectral_map, stack_assignments


def one_hot(labels):
    return np.eye(labels.max() + 1)[labels]


def test_spectral_map_spans_the_dense_graphs_leading_eigenvectors():
    rng = np.random.default_rng(0)
    runs = [rng.dirichlet(np.ones(4), size=60) for _ in range(3)]
    Z = stack_assignments(runs)
    A = sum(r @ r.T for r in runs) / 3  # co-association, float64, built densely
    d = A.sum(axis=1)
    M = A / np.sqrt(np.outer(d, d))
    values, vectors = np.linalg.eigh(M)
    top = vectors[:, np.argsort(values)[::-1][:4]]
    column_sums, projection = spectral_map(Z, 4)
    U = (Z / np.sqrt(Z @ column_sums)[:, None]) @ projection
    # Same subspace (eigenvectors are defined up to sign and rotation within it).
    np.testing.assert_allclose(U @ U.T, top @ top.T, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(spectral_embedding(Z, column_sums, projection),
                                              axis=1), 1.0)


class FixedRuns(KMeans):
    """A 'clusterer' whose successive fits return the partitions of ``queue`` in turn."""

    queue: ClassVar[list[np.ndarray]] = []

    def fit(self, X, y=None):
        self.labels_ = self.queue.pop(0)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self


def test_consensus_recovers_a_partition_no_run_found():
    truth = np.repeat(np.arange(4), 50)
    first_half = np.tile(np.arange(50) < 25, 4)

    def run(merge, split):
        """``truth`` with cluster ``merge[1]`` merged into ``merge[0]``, and the first half
        of cluster ``split`` moved to the freed label."""
        labels = truth.copy()
        labels[truth == merge[1]] = merge[0]
        labels[(truth == split) & first_half] = merge[1]
        return labels

    # Each run merges one pair and splits another cluster; two runs of three are right
    # about every pair of samples.
    runs = [run((0, 1), 2), run((2, 3), 0), run((0, 2), 1)]
    for labels in runs:
        assert adjusted_rand_score(truth, labels) < 0.7
    FixedRuns.queue = list(runs)
    model = ConsensusClustering(FixedRuns(n_clusters=4), n_runs=3, random_state=0)
    model.fit(np.zeros((200, 2)))
    assert adjusted_rand_score(truth, model.labels_) == 1.0


def test_predict_on_training_data_gives_labels_and_new_points_their_blob():
    X, y = make_blobs(n_samples=300, centers=4, cluster_std=1.0, random_state=1)
    model = ConsensusClustering(KMeans(n_clusters=4, n_init=1), n_runs=6,
                                random_state=0).fit(X)
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    assert adjusted_rand_score(y, model.labels_) > 0.9
    assert model.transform(X[:5]).shape == (5, 4)
    assert len({run.random_state for run in model.estimators_}) == 6
    assert model.run_labels_.shape == (6, 300) and model.fit_times_.shape == (6,)
    assert 0.0 < model.agreement_ <= 1.0


def test_hard_labels_are_used_when_the_estimator_has_no_predict_proba():
    X, _ = make_blobs(n_samples=120, centers=3, cluster_std=0.3, random_state=0)
    model = ConsensusClustering(KMeans(n_clusters=3, n_init=1), n_runs=2, random_state=0)
    model.fit(X)
    # One-hot rows: every sample's degree is the number of runs' co-members, an integer.
    Z = stack_assignments([one_hot(labels) for labels in model.run_labels_])
    assert set(np.unique(Z * np.sqrt(2))) == {0.0, 1.0}
    # Runs that agree give their own partition back.
    assert adjusted_rand_score(model.run_labels_[0], model.run_labels_[1]) == 1.0
    assert adjusted_rand_score(model.run_labels_[0], model.labels_) == 1.0


def test_default_estimator_is_dccm():
    model = ConsensusClustering()
    assert isinstance(model._base_estimator(), DCCMClustering)


@pytest.mark.parametrize("params, error, match", [
    ({"n_runs": 0}, ValueError, "n_runs=0"),
    ({"n_runs": 2.5}, ValueError, "n_runs=2.5"),
    ({"n_clusters": 0}, ValueError, "n_clusters=0"),
    ({"estimator": AgglomerativeClustering()}, TypeError, "random_state"),
])
def test_invalid_parameters_are_named(params, error, match):
    X, _ = make_blobs(n_samples=30, random_state=0)
    model = ConsensusClustering(**{"estimator": KMeans(n_clusters=2), **params})
    with pytest.raises(error, match=match):
        model.fit(X)


# Every check runs; scikit-learn itself skips check_array_api_input (numpy namespace) unless
# SCIPY_ARRAY_API=1 is set before SciPy is imported, which a test cannot do.
@parametrize_with_checks([
    ConsensusClustering(KMeans(n_clusters=3, n_init=1), n_runs=3, random_state=0),
    # The settings of test_sklearn_checks' tiny DCCM (check_clustering's ARI > 0.4).
    ConsensusClustering(DCCMClustering(n_clusters=3, max_iter=3, batch_size=16,
                                       target_batch_size=32, optimizer="adam",
                                       learning_rate=3e-3, balance_weight=1.0, device="cpu"),
                        n_runs=2, random_state=0),
])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
