"""ConsensusClustering: several runs of a clusterer combined into one partition.

Deep clustering runs that differ only in their seed make different mistakes (one merges two
look-alike clusters, another splits one), so the partition they agree on is better than the
typical run. The runs' soft assignments are stacked into ``Z`` (n x sum of K), whose Gram
matrix ``Z Z^T`` is the co-association of the samples (how strongly the runs put two
samples together). Spectral clustering of that graph needs only the SVD of the degree-
normalised ``Z``, never the n x n matrix, and the same linear map places new samples.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .validation import check_int


def stack_assignments(assignments: list[np.ndarray]) -> np.ndarray:
    """The runs' soft assignments side by side, scaled so ``Z Z^T`` averages over runs.

    Parameters
    ----------
    assignments : list of ndarray of shape (n_samples, k_r)
        One row-stochastic matrix per run (one-hot rows for hard labels).

    Returns
    -------
    Z : ndarray of shape (n_samples, sum of k_r)
        float64; ``(Z @ Z.T)[i, j]`` is the mean over runs of the probability that samples
        i and j fall in the same cluster.
    """
    return np.hstack([np.asarray(a, dtype=np.float64) for a in assignments]) / np.sqrt(
        len(assignments))


def spectral_map(Z: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """The linear map that takes stacked assignments to the co-association graph's
    normalised spectral embedding (Ng, Jordan and Weiss, 2001).

    With degrees ``d = Z Z^T 1`` and ``Z_n = D^{-1/2} Z = U S V^T``, the leading
    eigenvectors of ``D^{-1/2} Z Z^T D^{-1/2}`` are the columns of ``U``, and
    ``U = Z_n V S^{-1}``: one (sum of k_r) x n_components matrix embeds any sample.

    Parameters
    ----------
    Z : ndarray of shape (n_samples, m)
        Stacked assignments (:func:`stack_assignments`).
    n_components : int
        Eigenvectors kept (the number of clusters).

    Returns
    -------
    column_sums : ndarray of shape (m,)
        ``Z^T 1``: a sample's degree is ``z @ column_sums``.
    projection : ndarray of shape (m, n_components)
        ``V S^{-1}`` restricted to the leading components.
    """
    column_sums = Z.sum(axis=0)
    _, s, vt = np.linalg.svd(_degree_normalised(Z, column_sums), full_matrices=False)
    k = min(n_components, int(np.sum(s > s[0] * 1e-10)))
    return column_sums, vt[:k].T / s[:k]


def spectral_embedding(Z: np.ndarray, column_sums: np.ndarray,
                       projection: np.ndarray) -> np.ndarray:
    """Rows of ``Z`` in the spectral embedding, each scaled to unit length.

    Parameters
    ----------
    Z : ndarray of shape (n_samples, m)
        Stacked assignments of the samples to embed (training samples or new ones).
    column_sums, projection : ndarray
        The map of :func:`spectral_map`, computed on the training samples.

    Returns
    -------
    embedding : ndarray of shape (n_samples, n_components)
        On the training samples: the leading eigenvectors of the normalised co-association
        matrix, row by row, each row of unit length.
    """
    U = _degree_normalised(Z, column_sums) @ projection
    return U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)


def combine_assignments(assignments: list[np.ndarray], n_clusters: int,
                        random_state: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray, KMeans]:
    """The consensus of several runs: their co-association clustered spectrally.

    Parameters
    ----------
    assignments : list of ndarray of shape (n_samples, k_r)
        Each run's soft assignments (one-hot rows for hard labels).
    n_clusters : int
        Clusters of the consensus (at most ``n_samples`` are formed).
    random_state : int or None, default=None
        Seed of the k-means on the embedding.

    Returns
    -------
    column_sums, projection : ndarray
        The spectral map (:func:`spectral_map`) that embeds stacked assignments.
    kmeans : KMeans
        k-means (10 initialisations) fitted on the training samples' embedding; its
        ``labels_`` are the consensus.
    """
    Z = stack_assignments(assignments)
    n_clusters = min(n_clusters, Z.shape[0])
    column_sums, projection = spectral_map(Z, n_clusters)
    kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=random_state)
    return column_sums, projection, kmeans.fit(spectral_embedding(Z, column_sums, projection))


def _degree_normalised(Z: np.ndarray, column_sums: np.ndarray) -> np.ndarray:
    """``D^{-1/2} Z``: each row divided by the square root of its degree ``z @ Z^T 1``."""
    return Z / np.sqrt(Z @ column_sums)[:, None]


def _has(name: str):
    return lambda self: hasattr(self.estimator, name)


class ConsensusClustering(ClusterMixin, TransformerMixin, BaseEstimator):
    """A clusterer run several times with different seeds, its runs combined by consensus.

    Each run is a clone of ``estimator`` with its own ``random_state``. The runs' soft
    assignments (``predict_proba`` where the estimator has it, one-hot labels otherwise) give
    the co-association graph of the samples, which is clustered spectrally into
    ``n_clusters``. The cost is ``n_runs`` fits.

    With DCCMClustering's defaults, each consensus of five runs on ORL and COIL-20 (3 seeds
    each) beat the mean of its own runs (BENCHMARKS.md); a mistake that most runs share
    survives it (see the user guide).

    Parameters
    ----------
    estimator : estimator object, default=None
        The clusterer to run; it must have ``random_state`` and ``n_clusters`` parameters.
        None means ``DCCMClustering()``.
    n_runs : int, default=5
        Number of runs.
    n_clusters : int, default=None
        Clusters of the consensus; None takes the estimator's ``n_clusters``.
    random_state : int, RandomState instance or None, default=None
        Draws the runs' seeds and seeds the final k-means.
    verbose : int, default=0
        1 prints one line per run.

    Attributes
    ----------
    estimators_ : list of estimator objects
        The fitted runs.
    labels_ : ndarray of shape (n_samples,)
        Consensus cluster of each training sample.
    run_labels_ : ndarray of shape (n_runs, n_samples)
        Each run's own labels of the training samples.
    agreement_ : float
        Mean adjusted Rand index between pairs of runs: a label-free measure of how stable
        the estimator is on this data (1: every run found the same partition).
    fit_times_ : ndarray of shape (n_runs,)
        Seconds each run's ``fit`` took.
    column_sums_, projection_ : ndarray
        The spectral map (:func:`spectral_map`).
    kmeans_ : KMeans
        k-means on the spectral embedding, whose clusters are the consensus.
    n_features_in_ : int
        Number of features seen in ``fit`` (that of the first run).

    Examples
    --------
    >>> from sklearn.cluster import KMeans
    >>> from sklearn.datasets import make_blobs
    >>> from skdccm import ConsensusClustering
    >>> X, _ = make_blobs(n_samples=300, centers=3, random_state=0)
    >>> model = ConsensusClustering(KMeans(n_clusters=3, n_init=1), n_runs=4,
    ...                             random_state=0).fit(X)
    >>> model.labels_.shape, model.agreement_ > 0.9
    ((300,), True)
    """

    def __init__(self, estimator=None, *, n_runs: int = 5, n_clusters: int | None = None,
                 random_state=None, verbose: int = 0):
        self.estimator = estimator
        self.n_runs = n_runs
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None):
        """Fit ``n_runs`` clones of the estimator and combine their partitions.

        Parameters
        ----------
        X : array-like
            Training data, in whatever form the estimator accepts.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : object
            The fitted consensus.
        """
        base = self._base_estimator()
        params = base.get_params(deep=False)
        for key in ("random_state", "n_clusters"):
            if key not in params:
                raise TypeError(f"ConsensusClustering: {type(base).__name__} has no {key!r} "
                                "parameter; the runs need both")
        n_clusters = params["n_clusters"] if self.n_clusters is None else self.n_clusters
        for key, value in (("n_runs", self.n_runs), ("n_clusters", n_clusters)):
            check_int(value, key, "ConsensusClustering")
        rng = check_random_state(self.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=int(self.n_runs))

        self.estimators_, assignments, labels, times = [], [], [], []
        for i, seed in enumerate(seeds):
            run = clone(base).set_params(random_state=int(seed))
            start = time.perf_counter()
            run.fit(X)
            times.append(time.perf_counter() - start)
            self.estimators_.append(run)
            labels.append(np.asarray(run.labels_))
            assignments.append(self._assignments(run, X, labels[-1]))
            if self.verbose:
                print(f"run {i + 1}/{self.n_runs}: {times[-1]:.1f} s, "
                      f"{len(np.unique(labels[-1]))} clusters", flush=True)
        self.fit_times_ = np.array(times)
        self.run_labels_ = np.stack(labels)
        self.n_features_in_ = self.estimators_[0].n_features_in_
        if hasattr(self.estimators_[0], "feature_names_in_"):
            self.feature_names_in_ = self.estimators_[0].feature_names_in_
        self.agreement_ = _mean_pairwise_ari(self.run_labels_)

        self.column_sums_, self.projection_, self.kmeans_ = combine_assignments(
            assignments, int(n_clusters), rng.randint(np.iinfo(np.int32).max))
        self.labels_ = self.kmeans_.labels_
        return self

    @available_if(_has("predict"))
    def predict(self, X):
        """Consensus cluster of each sample: every run assigns it, the spectral map places
        it, and the nearest k-means centre names it.

        Parameters
        ----------
        X : array-like
            Samples, in the form used in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "kmeans_")
        return self.kmeans_.predict(self.transform(X))

    @available_if(_has("predict"))
    def transform(self, X):
        """The samples in the co-association graph's spectral embedding.

        Parameters
        ----------
        X : array-like
            Samples, in the form used in ``fit``.

        Returns
        -------
        embedding : ndarray of shape (n_samples, n_components)
            Rows of unit length; ``n_components`` is at most ``n_clusters``.
        """
        check_is_fitted(self, "kmeans_")
        assignments = [self._assignments(run, X, None) for run in self.estimators_]
        return spectral_embedding(stack_assignments(assignments), self.column_sums_,
                                  self.projection_)

    def _base_estimator(self):
        if self.estimator is not None:
            return self.estimator
        from .dccm import DCCMClustering

        return DCCMClustering()

    @staticmethod
    def _assignments(run, X, labels: np.ndarray | None) -> np.ndarray:
        """Soft assignments of ``X`` by one fitted run (one-hot labels in
        ``[0, n_clusters)`` when it has no ``predict_proba``); ``labels``: the run's training
        labels, to spare a pass."""
        if hasattr(run, "predict_proba"):
            return np.asarray(run.predict_proba(X), dtype=np.float64)
        labels = run.predict(X) if labels is None else labels
        return np.eye(run.get_params()["n_clusters"])[labels]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        base = self._base_estimator()
        base_tags = base.__sklearn_tags__()
        tags.input_tags = base_tags.input_tags
        tags.non_deterministic = base_tags.non_deterministic
        tags.transformer_tags.preserves_dtype = []
        return tags


def _mean_pairwise_ari(run_labels: np.ndarray) -> float:
    n = len(run_labels)
    if n < 2:
        return 1.0
    scores = [adjusted_rand_score(run_labels[i], run_labels[j])
              for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(scores))
