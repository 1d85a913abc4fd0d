"""Quality of the default presets on real data (slow: run with ``pytest -m slow``).

Bars are DESIGN.md 7 / issue 2: DCCM on all 1,797 digits as 8x8 images, default
parameters, ``random_state=0``: ACC >= 0.90 and at least 0.10 above KMeans on the same
pixels. Measured on 2 CPU cores: DCCM ACC 0.919, KMeans 0.792 (seeds 1 and 2 give DCCM
0.789 and 0.918: the bar is for seed 0 only, see BENCHMARKS.md). The bar is the issue's,
0.019 below the measured figure.

CRLC (issue 4), the same data and seed: ACC >= 0.90 and at least 0.10 above KMeans; measured
0.959 (seeds 1 and 2: 0.966, 0.971). Also on the digits stored by class, the order in which
MNIST 5k and image folders come: an earlier build estimated BatchNorm statistics and chose
its sub-head on batches in storage order, one class each (ACC 0.752 on the sorted digits).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from skdccm import CRLCClustering, DCCMClustering
from skdccm.datasets import load_digits_images
from skdccm.metrics import clustering_accuracy


def kmeans_accuracy(X, y):
    pixels = X.reshape(len(X), -1).astype(np.float64) / 255.0
    return clustering_accuracy(y, KMeans(n_clusters=10, n_init=10,
                                         random_state=0).fit_predict(pixels))


@pytest.mark.slow
def test_dccm_default_beats_kmeans_on_digits():
    X, y = load_digits_images()
    labels = DCCMClustering(n_clusters=10, random_state=0).fit_predict(X)
    acc, acc_kmeans = clustering_accuracy(y, labels), kmeans_accuracy(X, y)
    assert acc >= 0.90, f"DCCM ACC {acc:.3f} (measured 0.919)"
    assert acc - acc_kmeans >= 0.10, f"DCCM {acc:.3f} vs KMeans {acc_kmeans:.3f}"


@pytest.mark.slow
def test_crlc_default_beats_kmeans_on_digits():
    X, y = load_digits_images()
    acc = clustering_accuracy(y, CRLCClustering(n_clusters=10, random_state=0).fit_predict(X))
    acc_kmeans = kmeans_accuracy(X, y)
    assert acc >= 0.90, f"CRLC ACC {acc:.3f} (measured 0.959)"
    assert acc - acc_kmeans >= 0.10, f"CRLC {acc:.3f} vs KMeans {acc_kmeans:.3f}"


@pytest.mark.slow
def test_crlc_on_digits_stored_by_class():
    X, y = load_digits_images()
    order = np.argsort(y, kind="stable")
    X, y = X[order], y[order]
    acc = clustering_accuracy(y, CRLCClustering(n_clusters=10, random_state=0).fit_predict(X))
    assert acc >= 0.90, f"CRLC ACC {acc:.3f} on digits sorted by class"
