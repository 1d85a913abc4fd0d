"""The estimator inside scikit-learn's tools: Pipeline, GridSearchCV, clone, cross-validation,
and side by side with KMeans.

Fits are tiny (120 to 300 flattened digits, an MLP, one to three epochs) and seeded on CPU,
where the same ``random_state`` gives the same labels: each composed result is compared with
the same computation done by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skdccm import DCCMClustering


def tiny(**params):
    return DCCMClustering(**{"n_clusters": 10, "max_iter": 1, "batch_size": 32,
                             "target_batch_size": 64, "device": "cpu", "random_state": 0,
                             **params})


def to_unit_range(X):
    """Digits' 17 grey levels (0..16) to [0, 1]; module level so that the pipeline pickles."""
    return np.asarray(X, dtype=np.float32) / 16


def metrics_module():
    """skdccm.metrics, imported when a test needs it (skipped where it does not exist)."""
    return pytest.importorskip("skdccm.metrics", reason="skdccm.metrics is not written yet")


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data[:120], data.target[:120]                    # (120, 64) float64, labels


def test_pipeline_with_standard_scaler(digits):
    X, _ = digits
    pipe = make_pipeline(StandardScaler(), tiny()).fit(X)
    by_hand = tiny().fit(StandardScaler().fit_transform(X))
    assert_array_equal(pipe[-1].labels_, by_hand.labels_)
    X_new = X[:20] + 0.5
    scaled_new = pipe[0].transform(X_new)
    assert_array_equal(pipe.predict(X_new), by_hand.predict(scaled_new))
    assert_array_equal(pipe.predict_proba(X_new), by_hand.predict_proba(scaled_new))
    assert_array_equal(pipe.transform(X_new), by_hand.transform(scaled_new))
    assert_array_equal(pipe.get_feature_names_out(), by_hand.get_feature_names_out())
    assert_array_equal(clone(pipe).fit_predict(X), by_hand.labels_)


def test_pipeline_with_function_transformer_and_image_shape(digits):
    X, _ = digits
    pipe = make_pipeline(FunctionTransformer(to_unit_range), tiny(image_shape=(8, 8)))
    labels = pipe.fit_predict(X)
    assert pipe[-1].input_shape_ == (1, 8, 8)
    by_hand = tiny().fit(to_unit_range(X).reshape(-1, 8, 8))  # the same pixels as images
    assert_array_equal(labels, by_hand.labels_)
    assert_array_equal(pipe.predict_proba(X[:10]),
                       by_hand.predict_proba(to_unit_range(X[:10]).reshape(-1, 8, 8)))


def _check_grid_search(search, X, y, score):
    """Shared checks: every candidate ran; the best is the argmax; a split score by hand."""
    results = search.cv_results_
    assert len(results["params"]) == 4
    assert np.all(np.isfinite(results["mean_test_score"]))
    assert search.best_index_ == int(np.argmax(results["mean_test_score"]))
    assert search.best_params_ == results["params"][search.best_index_]
    train, test = next(search.cv.split(X, y))
    by_hand = clone(search.estimator).set_params(**search.best_params_).fit(X[train])
    assert results["split0_test_score"][search.best_index_] == pytest.approx(
        score(y[test], by_hand.predict(X[test])), abs=1e-12)
    # The refitted model is the best candidate trained on everything.
    refit = clone(search.estimator).set_params(**search.best_params_).fit(X)
    assert_array_equal(search.best_estimator_.predict(X), refit.predict(X))


GRID = {"dccmclustering__max_iter": [1, 2], "dccmclustering__learning_rate": [1e-3, 3e-3]}


def test_grid_search_with_adjusted_rand_score(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), tiny())
    search = GridSearchCV(pipe, GRID, scoring="adjusted_rand_score",
                          cv=KFold(2, shuffle=True, random_state=0)).fit(X, y)
    _check_grid_search(search, X, y, adjusted_rand_score)


def test_grid_search_with_clustering_accuracy(digits):
    metrics = metrics_module()
    X, y = digits
    pipe = make_pipeline(StandardScaler(), tiny())
    search = GridSearchCV(pipe, GRID, scoring=metrics.clustering_accuracy_scorer,
                          cv=KFold(2, shuffle=True, random_state=0)).fit(X, y)
    _check_grid_search(search, X, y, metrics.clustering_accuracy)
    # Accuracy after the best matching is at least the share of the largest class.
    assert search.best_score_ >= np.bincount(y).max() / len(y)


def test_clone_gives_an_unfitted_twin_that_refits_identically(digits):
    X, _ = digits
    est = tiny(image_shape=(8, 8), alpha=2.0).fit(X)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    assert not hasattr(twin, "module_")
    with pytest.raises(NotFittedError):
        twin.predict(X)
    assert_array_equal(twin.fit(X).labels_, est.labels_)
    assert twin.module_ is not est.module_


def test_cross_val_score_on_labelled_data(digits):
    X, y = digits
    cv = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(tiny(), X, y, scoring="adjusted_rand_score", cv=cv)
    by_hand = [adjusted_rand_score(y[test], tiny().fit(X[train]).predict(X[test]))
               for train, test in cv.split(X)]
    assert_allclose(scores, by_hand, rtol=0, atol=1e-12)


def test_cross_validate_returns_independent_fits(digits):
    X, y = digits
    result = cross_validate(tiny(), X, y, cv=KFold(2), return_estimator=True,
                            scoring=["adjusted_rand_score", "normalized_mutual_info_score"])
    first, second = result["estimator"]
    assert first.module_ is not second.module_
    for fold, (train, test) in enumerate(KFold(2).split(X)):
        by_hand = tiny().fit(X[train])
        assert_array_equal(result["estimator"][fold].labels_, by_hand.labels_)
        labels = by_hand.predict(X[test])
        assert result["test_normalized_mutual_info_score"][fold] == pytest.approx(
            normalized_mutual_info_score(y[test], labels), abs=1e-12)
        assert result["test_adjusted_rand_score"][fold] == pytest.approx(
            adjusted_rand_score(y[test], labels), abs=1e-12)


def test_side_by_side_with_kmeans():
    data = load_digits()
    X, y = data.data[:300] / 16, data.target[:300]
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit(X)
    dccm = tiny(max_iter=3).fit(X)
    # The same network with weights that barely move: what the architecture gives untrained.
    untrained = tiny(max_iter=3, learning_rate=1e-12).fit(X)
    scores = {}
    for name, labels in (("kmeans", kmeans.labels_), ("dccm", dccm.labels_),
                         ("untrained", untrained.labels_)):
        scores[name] = (normalized_mutual_info_score(y, labels),
                        adjusted_rand_score(y, labels))
    # Measured: KMeans NMI 0.86 (ARI 0.79), three-epoch DCCM NMI 0.63 (ARI 0.49), the
    # untrained network NMI 0.35 (ARI 0.18): training, not the architecture, must show.
    assert scores["kmeans"][0] > 0.7
    assert scores["dccm"][0] > scores["untrained"][0] + 0.15
    assert scores["dccm"][1] > scores["untrained"][1] + 0.15
