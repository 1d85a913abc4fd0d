"""DCCMClustering in a Pipeline, tuned by GridSearchCV with ARI and clustering accuracy.

A pipeline scales the digits' 64 features and clusters them; ``GridSearchCV`` tries two
parameters of the clusterer, scoring each candidate on held-out folds with two metrics at
once: the adjusted Rand index (scikit-learn's ``"adjusted_rand_score"``) and clustering
accuracy (:data:`skdccm.metrics.clustering_accuracy_scorer`), and refits the best by
accuracy. ``cross_val_score`` then gives the spread of that choice over new folds.

Scoring a clusterer needs labels: this is model selection with a labelled validation set,
not unsupervised clustering, and should be reported as such.

Run::

    python examples/pipeline_gridsearch.py            # all digits (a minute or two on CPU)
    python examples/pipeline_gridsearch.py --quick    # 150 digits, 1 epoch, 2 folds

``SKDCCM_EXAMPLE_QUICK=1`` in the environment has the same effect as ``--quick``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skdccm import DCCMClustering
from skdccm.metrics import clustering_accuracy_scorer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the "
                        "script works (also SKDCCM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("SKDCCM_EXAMPLE_QUICK") == "1"
    n_samples, max_iter, n_folds = (150, 1, 2) if quick else (None, 10, 3)

    digits = load_digits()
    X, y = digits.data[:n_samples], digits.target[:n_samples]    # (n, 64) features, labels

    # 64 standardised features: the clusterer sees flat features and trains an MLP.
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("cluster", DCCMClustering(n_clusters=10, max_iter=max_iter, random_state=0)),
    ])
    grid = {"cluster__learning_rate": [1e-3, 3e-3], "cluster__balance_weight": [0.0, 1.0]}
    cv = KFold(n_folds, shuffle=True, random_state=0)
    search = GridSearchCV(
        pipe, grid, cv=cv,
        scoring={"ari": "adjusted_rand_score", "acc": clustering_accuracy_scorer},
        refit="acc",
    )
    search.fit(X, y)

    results = search.cv_results_
    print(f"{'learning_rate':>13} {'balance_weight':>14} {'ACC':>13} {'ARI':>13}")
    for i, params in enumerate(results["params"]):
        print(f"{params['cluster__learning_rate']:>13g} "
              f"{params['cluster__balance_weight']:>14g} "
              f"{results['mean_test_acc'][i]:>6.3f} ± {results['std_test_acc'][i]:.3f} "
              f"{results['mean_test_ari'][i]:>6.3f} ± {results['std_test_ari'][i]:.3f}")
    print(f"best by accuracy: {search.best_params_} (ACC {search.best_score_:.3f})")

    # The chosen configuration on other folds: how much does its score move?
    best = search.best_estimator_
    scores = cross_val_score(best, X, y, scoring=clustering_accuracy_scorer,
                             cv=KFold(n_folds, shuffle=True, random_state=1))
    print(f"cross-validated ACC of the best pipeline: {scores.mean():.3f} ± "
          f"{scores.std():.3f} over {n_folds} folds")

    # The refitted pipeline clusters new data like any other estimator.
    labels = best.predict(X)
    print(f"cluster sizes on all {len(X)} digits: {np.bincount(labels, minlength=10)}")
    return search


if __name__ == "__main__":
    main()
