"""Clustering metrics that scikit-learn does not provide, and scorers for model selection.

- :func:`clustering_accuracy`: accuracy after the best one-to-one matching of clusters to
  classes (Hungarian algorithm), the "ACC" of deep-clustering papers.
- :func:`bcubed_precision_recall`: BCubed precision and recall (Bagga and Baldwin, 1998),
  which the DCCM paper plots in its Figure 5.
- :data:`clustering_accuracy_scorer` and :func:`get_scorer` for ``GridSearchCV``.

NMI and ARI come from :mod:`sklearn.metrics`; :func:`clustering_scores` returns all three.
This module is a leaf: it imports nothing from the rest of skdccm.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    make_scorer,
    normalized_mutual_info_score,
)
from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics.cluster import contingency_matrix

__all__ = [
    "bcubed_f1",
    "bcubed_precision_recall",
    "clustering_accuracy",
    "clustering_accuracy_scorer",
    "clustering_scores",
    "get_scorer",
    "match_clusters",
]


def _check_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"labels must be 1-D, got y_true of shape {y_true.shape} and y_pred "
                         f"of shape {y_pred.shape}")
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(f"y_true has {y_true.shape[0]} labels and y_pred {y_pred.shape[0]}; "
                         "pass one cluster label per ground-truth label")
    if y_true.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty; clustering metrics need samples")
    return y_true, y_pred


def match_clusters(y_true, y_pred) -> dict:
    """Best one-to-one assignment of predicted clusters to true classes.

    Solves the linear assignment problem on the contingency table (Hungarian algorithm) so
    that the number of samples whose cluster is mapped to their class is largest.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    mapping : dict
        ``{cluster: class}`` for every matched cluster. When there are more clusters than
        classes, the unmatched clusters are absent.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    classes, true_idx = np.unique(y_true, return_inverse=True)
    clusters, pred_idx = np.unique(y_pred, return_inverse=True)
    table = contingency_matrix(true_idx, pred_idx)                 # (n_classes, n_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {clusters[c].item(): classes[r].item() for r, c in zip(rows, cols, strict=True)}


def clustering_accuracy(y_true, y_pred) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes.

    ``ACC = max_m (1/n) sum_i 1[y_i = m(c_i)]`` over one-to-one maps ``m`` from clusters to
    classes, found with the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`)
    on the contingency table. The numbers of clusters and classes may differ: samples of
    clusters left unmatched (more clusters than classes) count as errors, and so do samples of
    classes that no cluster matches.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels (any hashable values).
    y_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable values).

    Returns
    -------
    accuracy : float
        In [0, 1]; 1 when the clustering equals the classes up to renaming.

    Examples
    --------
    >>> from skdccm.metrics import clustering_accuracy
    >>> clustering_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 2])
    0.75
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    table = contingency_matrix(y_true, y_pred)                     # (n_classes, n_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y_true.shape[0])


def bcubed_precision_recall(y_true, y_pred) -> tuple[float, float]:
    """BCubed precision and recall (Bagga and Baldwin, 1998).

    For each sample i, precision_i is the share of the members of i's cluster that share
    i's class, and recall_i the share of the members of i's class that share i's cluster
    (both counting i itself); the scores are their means over samples. The DCCM paper plots
    them per epoch (Figure 5). With the contingency table ``n_ck`` (class c, cluster k),
    precision is ``sum_ck n_ck^2 / n_k / n`` and recall ``sum_ck n_ck^2 / n_c / n``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    precision : float
        In (0, 1]; 1 when every cluster is pure.
    recall : float
        In (0, 1]; 1 when no class is split over clusters.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    n = y_true.shape[0]
    table = contingency_matrix(y_true, y_pred).astype(np.float64)  # (n_classes, n_clusters)
    squared = table**2
    cluster_sizes = table.sum(axis=0)                              # (n_clusters,)
    class_sizes = table.sum(axis=1)                                # (n_classes,)
    precision = (squared / cluster_sizes[None, :]).sum() / n
    recall = (squared / class_sizes[:, None]).sum() / n
    return float(precision), float(recall)


def bcubed_f1(y_true, y_pred) -> float:
    """Harmonic mean of :func:`bcubed_precision_recall`.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    f1 : float
        In (0, 1].
    """
    precision, recall = bcubed_precision_recall(y_true, y_pred)
    return 2 * precision * recall / (precision + recall)


def clustering_scores(y_true, y_pred) -> dict[str, float]:
    """ACC, NMI and ARI of a clustering, the three figures deep-clustering papers report.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    scores : dict
        ``{"acc": ..., "nmi": ..., "ari": ...}`` (NMI with arithmetic averaging, scikit-learn's
        default).
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    return {
        "acc": clustering_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


def _bcubed_precision(y_true, y_pred) -> float:
    return bcubed_precision_recall(y_true, y_pred)[0]


def _bcubed_recall(y_true, y_pred) -> float:
    return bcubed_precision_recall(y_true, y_pred)[1]


# Scorers are built from module-level functions (not lambdas) so that they pickle, as
# GridSearchCV(n_jobs>1) needs.
#: ``GridSearchCV(..., scoring=clustering_accuracy_scorer)``: calls ``predict`` on the
#: validation fold and scores it against its labels.
clustering_accuracy_scorer = make_scorer(clustering_accuracy)

_SCORERS = {
    "clustering_accuracy": clustering_accuracy_scorer,
    "bcubed_f1": make_scorer(bcubed_f1),
    "bcubed_precision": make_scorer(_bcubed_precision),
    "bcubed_recall": make_scorer(_bcubed_recall),
}


def get_scorer(name: str):
    """A scorer by name: skdccm's own, else scikit-learn's.

    Parameters
    ----------
    name : str
        ``"clustering_accuracy"``, ``"bcubed_f1"``, ``"bcubed_precision"``,
        ``"bcubed_recall"``, or any name :func:`sklearn.metrics.get_scorer` knows (such as
        ``"adjusted_rand_score"`` or ``"normalized_mutual_info_score"``).

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, greater is better.
    """
    if name in _SCORERS:
        return _SCORERS[name]
    try:
        return _sklearn_get_scorer(name)
    except ValueError as exc:
        raise ValueError(f"get_scorer: unknown scorer {name!r}; skdccm has "
                         + ", ".join(repr(k) for k in _SCORERS)
                         + ", and scikit-learn's names are listed by "
                         "sklearn.metrics.get_scorer_names()") from exc
