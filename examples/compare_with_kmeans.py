"""DCCM beside KMeans on scikit-learn's hand-written digits, over several seeds.

Both methods cluster the same 1,797 8x8 images (the pixels scaled to [0, 1] for KMeans, the
uint8 images for DCCM, which scales them itself). No label is used to fit anything; the
labels only score the result: clustering accuracy (after the best one-to-one matching of
clusters to digits), NMI and ARI, as mean and standard deviation over the seeds.

Run::

    python examples/compare_with_kmeans.py            # all digits, 3 seeds (about a minute
                                                      # per DCCM seed on two CPU cores)
    python examples/compare_with_kmeans.py --quick    # 200 digits, 1 epoch, 1 seed

``SKDCCM_EXAMPLE_QUICK=1`` in the environment has the same effect as ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.cluster import KMeans

from skdccm import DCCMClustering
from skdccm.datasets import load_digits_images, subsample_indices
from skdccm.metrics import clustering_scores


def fit_and_score(name, estimator, X, y):
    """Fit ``estimator`` on ``X``; return its scores against ``y`` and the seconds it took."""
    tic = time.perf_counter()
    labels = estimator.fit_predict(X)
    seconds = time.perf_counter() - tic
    return {"method": name, **clustering_scores(y, labels), "seconds": seconds}


def summarise(rows):
    """Mean and standard deviation of every figure, per method, as printable lines."""
    lines = [f"{'method':<8} {'ACC':>13} {'NMI':>13} {'ARI':>13} {'seconds':>13}"]
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        cells = []
        for key in ("acc", "nmi", "ari", "seconds"):
            values = np.array([row[key] for row in mine])
            spread = values.std(ddof=1) if len(values) > 1 else 0.0  # sample std, as pandas
            cells.append(f"{values.mean():.3f} ± {spread:.3f}")
        lines.append(f"{method:<8} " + " ".join(f"{cell:>13}" for cell in cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the "
                        "script works (also SKDCCM_EXAMPLE_QUICK=1)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("SKDCCM_EXAMPLE_QUICK") == "1"
    n_samples, max_iter, n_seeds = (200, 1, 1) if quick else (None, None, args.seeds)

    images, y = load_digits_images()                             # (1797, 8, 8) uint8
    keep = subsample_indices(len(images), n_samples, random_state=0)
    images, y = images[keep], y[keep]
    pixels = images.reshape(len(images), -1) / 255.0             # (n, 64) in [0, 1]
    print(f"{len(images)} digits of {images.shape[1:]} pixels, {n_seeds} seed(s)")

    rows = []
    for seed in range(n_seeds):
        rows.append(fit_and_score(
            "KMeans", KMeans(n_clusters=10, n_init=10, random_state=seed), pixels, y))
        # max_iter=None keeps the preset's number of epochs.
        rows.append(fit_and_score(
            "DCCM", DCCMClustering(n_clusters=10, max_iter=max_iter, random_state=seed),
            images, y))
        print(f"seed {seed}: " + ", ".join(f"{row['method']} ACC {row['acc']:.3f}"
                                           for row in rows[-2:]))
    print()
    print(summarise(rows))
    return rows


if __name__ == "__main__":
    main()
