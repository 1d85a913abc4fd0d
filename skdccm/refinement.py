"""Graph refinement of a trained clustering: spectral labels on the learned features, then a
linear clustering head that reproduces them (``refine="spectral"``).

A network's softmax head cuts its feature space with K hyperplanes. Objects seen from turning
viewpoints, or one person's faces, lie along curved paths in that space, and the head may cut
one path in two while it merges two neighbouring ones. Spectral clustering on the features'
k-nearest-neighbour graph follows the paths instead (Ng, Jordan and Weiss, 2001). The labels
it finds are then written back into the network as a new last layer: a multinomial logistic
regression from the head's input to those labels. ``predict`` stays one forward pass, and the
training labels are the head's own argmax, as without refinement.

Where the embedding's graph does not fall apart into K groups (its clusters leak more than
``MAX_LEAK`` of their links), :func:`refined_labels` adds the pixels' neighbour graph of grey
images (``PIXEL_WEIGHT`` times) and cuts again: one person's faces are close in pixel space,
and where the training left them apart, the pixels join them.

Given the head's own clusters (``head=``), :func:`refined_labels` keeps the cut only where it
leaks no more than the head's clusters on a wider graph (``CHECK_NEIGHBOURS`` neighbours a
sample). A few near-copies of one image link only to each other on the 10-neighbour graph,
and the cut may take them for a cluster of their own; at a cluster's scale they link out, and
that cut leaks more than the head's.

The functions are pure: arrays in, arrays out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.cluster import spectral_clustering
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

#: Neighbours a sample links to in the graph. Measured on DCCM's embeddings of COIL-20 (72
#: images a cluster), seeds 0-4, mean ACC 0.881 unrefined: 5 gave 0.914 (worst 0.876), 10 gave
#: 0.917 (worst 0.892), 20 gave 0.896; on ORL (10 a cluster, seed 1, head 0.787) 5 gave 0.720,
#: 10 gave 0.785 and 15 gave 0.777.
GRAPH_NEIGHBOURS = 10

#: Inverse L2 strength of the logistic regression that becomes the head. Spectral labels are
#: linearly separable in the 64-dimensional embedding: at 10 the new head reproduced them on
#: every training sample of the runs measured (COIL-20, ORL, digits), at 1 on 99.3-100%.
HEAD_C = 10.0

#: Largest number of samples whose graph Laplacian is solved with ARPACK (shift-invert,
#: exact); LOBPCG above. ARPACK's factorisation grows fast with the graph: measured on one
#: CPU thread beside other work, 2.4 s at 10,000 samples (LOBPCG 0.5 s) and about 8 minutes
#: at 60,000 (LOBPCG 1.8 s, beside 27 s for the neighbour graph), with identical clusters
#: (ARI 1.0) on COIL-20, ORL and 10,000 MNIST digits (PCA-50 pixels) and on blobs.
ARPACK_MAX_SAMPLES = 5000


#: Largest leak (:func:`cluster_leak`) of the embedding graph's clusters that refinement
#: accepts alone; above it, the pixels' graph of grey images is added. Measured on trained
#: embeddings (BENCHMARKS.md): on COIL-20 DCCM's leak 0.005-0.013 (seeds 0-4) and CRLC's
#: 0.009-0.014 (seeds 0-2), and the pixels' graph would cost DCCM's 0.07-0.12 ACC each; on
#: ORL (seeds 0-4) DCCM's leak 0.14-0.16 and CRLC's 0.24-0.26, and the pixels' graph (at
#: ``PIXEL_WEIGHT``) gains them 0.03-0.07 and 0.12-0.15 each.
MAX_LEAK = 0.05

#: Weight of the pixels' graph against the embedding's where both are cut together. Measured
#: on the same ten ORL trainings (DCCM and CRLC defaults, seeds 0-4; BENCHMARKS.md), mean
#: ACC DCCM / CRLC at weight 1: 0.782 / 0.731, 1.25: 0.783 / 0.746, 1.5: 0.793 / 0.751,
#: 2: 0.790 / 0.746, 3: 0.768 / 0.751, the pixels alone: 0.725. From 1 to 1.5 no training
#: lost and the worst seeds rose 0.725 -> 0.740 and 0.723 -> 0.743; 1.5 is the low end of
#: the plateau, the least reliance on pixels that gets it.
PIXEL_WEIGHT = 1.5

#: Neighbours a sample links to in the wider graph on which a cut is checked against the
#: head's clusters (:func:`refined_labels` with ``head``). Measured on CRLC's default
#: trainings, leak of the head's clusters / of the cut, with 10, 30 and 100 neighbours: on
#: the 8x8 digits (180 images a class; the cut splits 27 near-identical 1s off, ACC 0.965 ->
#: 0.884, seed 0) 0.019 / 0.014, 0.032 / 0.033, 0.076 / 0.122; on USPS (seed 0, 0.930 ->
#: 0.977) 0.034 / 0.016, 0.043 / 0.025, 0.058 / 0.039. At 100 the tight little group links
#: out and its cut leaks more than the head's; on the sets where the cut was better it still
#: leaks less (BENCHMARKS.md).
CHECK_NEIGHBOURS = 100


@dataclass(frozen=True)
class Refinement:
    """What :func:`refined_labels` found.

    Attributes
    ----------
    labels : ndarray of shape (n_samples,)
        Integers in ``[0, n_clusters)``.
    leak : float
        :func:`cluster_leak` of the embedding graph's spectral clusters.
    pixels : bool
        Whether the pixels' graph was added (``leak > MAX_LEAK`` and pixels given).
    check : tuple of float or None
        With ``head`` given: :func:`cluster_leak` of the head's clusters and of ``labels`` on
        the ``CHECK_NEIGHBOURS`` graph of the embedding. None without ``head``.
    """

    labels: np.ndarray
    leak: float
    pixels: bool
    check: tuple[float, float] | None = None

    @property
    def kept(self) -> bool:
        """Whether the cut passed the check: it leaks no more than the head's clusters on the
        wider graph (always True without ``head``)."""
        return self.check is None or self.check[1] <= self.check[0]


def refined_labels(features: np.ndarray, n_clusters: int, *,
                   pixels: Callable[[], np.ndarray] | None = None,
                   head: np.ndarray | None = None,
                   random_state: int | None = None) -> Refinement:
    """Spectral clusters of the embedding's graph, with the pixels' graph added where those
    clusters leak.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
        The learned embedding.
    n_clusters : int
        K.
    pixels : callable or None
        Returns the samples' pixel features, shape (n_samples, n_pixel_features) (e.g. their
        principal components); called only when the embedding's clusters leak more than
        ``MAX_LEAK``, and their neighbour graph, ``PIXEL_WEIGHT`` times, is added to the
        embedding's. None: the embedding's graph alone.
    head : ndarray of shape (n_samples,) or None
        The trained head's clusters. Given, the cut is checked against them on the
        embedding's ``CHECK_NEIGHBOURS`` graph (``Refinement.check``, ``Refinement.kept``).
    random_state : int or None
        Seeds the eigensolver's start vector.

    Returns
    -------
    Refinement
    """
    unit = normalize(np.asarray(features, dtype=np.float64))
    # One neighbour search serves both graphs: the check's lists begin with the cut's.
    lists = _neighbour_lists(unit, GRAPH_NEIGHBOURS if head is None else CHECK_NEIGHBOURS)
    affinity = _symmetric(lists[:, :GRAPH_NEIGHBOURS])
    solver = _eigen_solver(affinity.shape[0])
    labels = graph_labels(affinity, n_clusters, eigen_solver=solver, random_state=random_state)
    leak = cluster_leak(affinity, labels)
    added = pixels is not None and leak > MAX_LEAK
    if added:
        affinity = affinity + PIXEL_WEIGHT * neighbour_graph(pixels())
        labels = graph_labels(affinity, n_clusters, eigen_solver=solver,
                              random_state=random_state)
    check = None
    if head is not None:
        wide = _symmetric(lists)
        check = (cluster_leak(wide, head), cluster_leak(wide, labels))
    return Refinement(labels, leak, added, check)


def cluster_leak(affinity: sparse.spmatrix, labels: np.ndarray) -> float:
    """Mean over clusters of the share of a cluster's link weight that leaves it.

    The normalised cut of the partition divided by its number of clusters: 0 when no link
    crosses clusters, 1 when every link does. Spectral clustering minimises a relaxation of
    it, so a large leak after spectral clustering says the graph has no K clean parts.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from skdccm.refinement import cluster_leak
    >>> ring = sparse.csr_matrix(np.roll(np.eye(4), 1, axis=1) + np.roll(np.eye(4), -1, axis=1))
    >>> cluster_leak(ring, np.array([0, 0, 1, 1]))  # each pair keeps one of its two links
    0.5
    """
    affinity = sparse.csr_matrix(affinity)
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    _, codes = np.unique(labels, return_inverse=True)
    member = sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)))
    volume = member.T @ degree                                        # (clusters,)
    inside = (member.T @ affinity @ member).diagonal()                # (clusters,)
    return float(np.mean((volume - inside) / np.maximum(volume, np.finfo(float).tiny)))


def spectral_labels(features: np.ndarray, n_clusters: int, *, n_neighbors: int = GRAPH_NEIGHBOURS,
                    random_state: int | None = None) -> np.ndarray:
    """Spectral clustering of ``features`` on their cosine k-nearest-neighbour graph.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
        One feature vector per sample; rows are L2-normalised first, so that distances
        compare directions.
    n_clusters : int
        K.
    n_neighbors : int, default=GRAPH_NEIGHBOURS
        Neighbours each sample links to; capped at ``n_samples - 1``. The graph is made
        symmetric (an edge where either sample lists the other).
    random_state : int or None
        Seeds the eigensolver's start vector (ARPACK up to ``ARPACK_MAX_SAMPLES`` samples,
        LOBPCG above, where ARPACK takes minutes). The labels are read from the eigenvectors by
        ``cluster_qr``, which draws nothing.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        Integers in ``[0, n_clusters)``.

    Examples
    --------
    >>> import numpy as np
    >>> from skdccm.refinement import spectral_labels
    >>> angle = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    >>> circle = np.c_[np.cos(angle), np.sin(angle)]
    >>> points = np.r_[np.c_[circle, np.zeros(40)], np.c_[circle, 3 * np.ones(40)]]
    >>> labels = spectral_labels(points + [0, 0, 1], 2, n_neighbors=3, random_state=0)
    >>> bool(len(set(labels[:40])) == 1 and len(set(labels[40:])) == 1)
    True
    """
    affinity = neighbour_graph(features, n_neighbors)
    return graph_labels(affinity, n_clusters, eigen_solver=_eigen_solver(affinity.shape[0]),
                        random_state=random_state)


def _eigen_solver(n_samples: int) -> str:
    """ARPACK (exact) up to ``ARPACK_MAX_SAMPLES`` samples, LOBPCG above."""
    return "arpack" if n_samples <= ARPACK_MAX_SAMPLES else "lobpcg"


def neighbour_graph(features: np.ndarray,
                    n_neighbors: int = GRAPH_NEIGHBOURS) -> sparse.csr_matrix:
    """The symmetric cosine k-nearest-neighbour graph that :func:`spectral_labels` cuts.

    Rows are L2-normalised; each lists its ``n_neighbors`` nearest rows (capped at
    ``n_samples - 1``), itself among them. An edge weighs 1 where both rows list each other,
    1/2 where one does.
    """
    unit = normalize(np.asarray(features, dtype=np.float64))
    return _symmetric(_neighbour_lists(unit, n_neighbors))


def _neighbour_lists(unit: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Each row's ``n_neighbors`` nearest rows (capped at ``n_samples - 1``), itself among
    them, nearest first: an int array of shape (n_samples, k)."""
    k = max(1, min(int(n_neighbors), len(unit) - 1))
    search = NearestNeighbors(n_neighbors=k).fit(unit)
    # Queried with the rows it was fitted on, each row is among its own neighbours, as in
    # kneighbors_graph(..., include_self=True) (an exact duplicate may come before it).
    return search.kneighbors(unit, k, return_distance=False)


def _symmetric(lists: np.ndarray) -> sparse.csr_matrix:
    """The graph of neighbour lists, an edge 1 where both rows list each other, 1/2 where
    one does."""
    n, width = lists.shape
    graph = sparse.csr_matrix((np.ones(lists.size), lists.ravel(),
                               np.arange(0, n * width + 1, width)), shape=(n, n))
    return 0.5 * (graph + graph.T)


def graph_labels(affinity: sparse.spmatrix, n_clusters: int, *, eigen_solver: str,
                 random_state: int | None = None) -> np.ndarray:
    """Spectral clusters of a graph (``eigen_solver``: ``"arpack"`` or ``"lobpcg"``), read
    from its eigenvectors by ``cluster_qr``; int64 labels in ``[0, n_clusters)``."""
    with warnings.catch_warnings():
        # A graph of several components is no fault here: a component is a cluster the
        # features already separate completely.
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = spectral_clustering(affinity, n_clusters=n_clusters,
                                     assign_labels="cluster_qr", eigen_solver=eigen_solver,
                                     random_state=random_state)
    return labels.astype(np.int64)


def linear_head(features: np.ndarray, labels: np.ndarray,
                n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of a linear softmax layer that predicts ``labels`` from ``features``.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
        The input of the layer to be replaced.
    labels : ndarray of shape (n_samples,)
        Integers in ``[0, n_clusters)``; clusters without samples are allowed.
    n_clusters : int
        K, the layer's outputs.

    Returns
    -------
    weight : ndarray of shape (n_clusters, n_features)
    bias : ndarray of shape (n_clusters,)
        float32. A cluster without samples gets zero weights and a bias far below the
        others, so that it is never chosen.
    """
    features = np.asarray(features, dtype=np.float64)
    present = np.unique(labels)
    weight = np.zeros((n_clusters, features.shape[1]))
    bias = np.zeros(n_clusters)
    if len(present) == 1:  # nothing to separate: that cluster wins everywhere
        bias[:] = -1e4
        bias[present[0]] = 0.0
        return weight.astype(np.float32), bias.astype(np.float32)
    with warnings.catch_warnings():
        # Cluster indices are classes however few samples each has; scikit-learn guesses
        # "regression" when there are more than half as many classes as samples.
        warnings.filterwarnings("ignore", message="The number of unique classes")
        model = LogisticRegression(C=HEAD_C, max_iter=1000).fit(features, labels)
    if len(present) == 2:  # scikit-learn keeps one row for two classes: logit of the second
        coef = np.r_[-model.coef_, model.coef_] / 2
        intercept = np.r_[-model.intercept_, model.intercept_] / 2
    else:
        coef, intercept = model.coef_, model.intercept_
    bias[:] = intercept.min() - 1e4
    weight[present], bias[present] = coef, intercept
    return weight.astype(np.float32), bias.astype(np.float32)
