"""Quality of the default presets on real data (slow: run with ``pytest -m slow``).

Bars are DESIGN.md 7 / issue 2: DCCM on all 1,797 digits as 8x8 images, default
parameters, ``random_state=0``: ACC >= 0.90 and at least 0.10 above KMeans on the same
pixels. Measured on 2 CPU cores: DCCM ACC 0.919, KMeans 0.792 (seeds 1 and 2 give DCCM
0.789 and 0.918: the bar is for seed 0 only, see BENCHMARKS.md). The bar is the issue's,
0.019 below the measured figure.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from skdccm import DCCMClustering
from skdccm.datasets import load_digits_images
from skdccm.metrics import clustering_accuracy


@pytest.mark.slow
def test_dccm_default_beats_kmeans_on_digits():
    X, y = load_digits_images()
    labels = DCCMClustering(n_clusters=10, random_state=0).fit_predict(X)
    pixels = X.reshape(len(X), -1).astype(np.float64) / 255.0
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(pixels)
    acc, acc_kmeans = clustering_accuracy(y, labels), clustering_accuracy(y, kmeans)
    assert acc >= 0.90, f"DCCM ACC {acc:.3f} (measured 0.919)"
    assert acc - acc_kmeans >= 0.10, f"DCCM {acc:.3f} vs KMeans {acc_kmeans:.3f}"
