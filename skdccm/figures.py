"""Figures of the command line: plots of a benchmark run (matplotlib) and image grids.

Plots use matplotlib's Agg canvas without pyplot (no global state, no display needed).
This module imports nothing from the rest of skdccm but :mod:`skdccm.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import match_clusters


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_confusion(path: Path, y: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Classes x clusters counts, clusters ordered by their Hungarian-matched class."""
    from sklearn.metrics.cluster import contingency_matrix

    classes = np.unique(y)
    clusters = np.unique(labels)
    mapping = match_clusters(y, labels)
    class_pos = {c: i for i, c in enumerate(classes)}
    order = sorted(clusters, key=lambda c: (class_pos[mapping[c]] if c in mapping
                                            else len(classes), c))
    table = contingency_matrix(y, labels)                          # (n_classes, n_clusters)
    table = table[:, [int(np.flatnonzero(clusters == c)[0]) for c in order]]
    side = max(4.0, 0.45 * max(table.shape) + 2)
    figure = _new_figure(side, side * 0.9)
    axes = figure.add_subplot()
    axes.imshow(table, cmap="Blues")
    if max(table.shape) <= 20:
        limit = table.max() / 2
        for (i, j), count in np.ndenumerate(table):
            axes.text(j, i, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > limit else "black")
    axes.set_xticks(range(len(order)), [str(c) for c in order], fontsize=7)
    axes.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=7)
    axes.set_xlabel("cluster (ordered by matched class)")
    axes.set_ylabel("class")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def plot_learning_curve(path: Path, history: Sequence[dict[str, Any]], title: str) -> None:
    """Total loss and its parts per epoch; shares (confident samples, ...) below."""
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    figure = _new_figure(7, 5.5)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(epochs, [r["loss"] for r in history], "k-o", ms=3, label="total")
    for key in history[0].get("loss_parts", {}):
        top.plot(epochs, [r["loss_parts"].get(key, math.nan) for r in history], "-o", ms=2,
                 label=key)
    top.set_ylabel("loss (epoch mean)")
    top.legend(fontsize=7)
    top.set_title(title, fontsize=9)
    for key, label in (("confident", "confident share"), ("graph_positive", "linked pairs"),
                       ("cluster_min", "smallest cluster"), ("cluster_max", "largest cluster"),
                       ("label_change", "labels changed")):
        if any(key in r for r in history):
            bottom.plot(epochs, [r.get(key, math.nan) for r in history], "-o", ms=2,
                        label=label)
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("share")
    if bottom.get_lines():
        bottom.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def plot_embedding(path: Path, points: np.ndarray, labels: np.ndarray, title: str) -> None:
    """First two principal components of ``points``, coloured by cluster."""
    from sklearn.decomposition import PCA

    flat = points.reshape(len(points), -1).astype(np.float64)
    coords = PCA(n_components=2).fit_transform(flat) if flat.shape[1] > 2 else flat
    figure = _new_figure(6, 5.5)
    axes = figure.add_subplot()
    n_colours = max(int(labels.max()) + 1, 1)
    scatter = axes.scatter(coords[:, 0], coords[:, 1], c=labels, s=4 if len(labels) > 1000
                           else 12, alpha=0.7,
                           cmap="tab10" if n_colours <= 10 else "tab20", vmin=0,
                           vmax=max(n_colours - 1, 1))
    figure.colorbar(scatter, ax=axes, label="cluster")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def contact_sheet(images: np.ndarray, *, min_tile: int = 32, pad: int = 2) -> np.ndarray:
    """A grid of images (grey or RGB uint8) on a white ground, small images enlarged.

    Parameters
    ----------
    images : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8
        The images, in reading order.
    min_tile : int, default=32
        Images smaller than this are enlarged by an integer factor (nearest neighbour).
    pad : int, default=2
        White pixels between tiles.

    Returns
    -------
    sheet : ndarray of shape (rows * (h + pad) + pad, cols * (w + pad) + pad[, 3]), uint8
    """
    n, height, width = images.shape[:3]
    factor = max(1, math.ceil(min_tile / max(min(height, width), 1)))
    tiles = images.repeat(factor, axis=1).repeat(factor, axis=2)     # (n, fH, fW[, 3])
    tile_h, tile_w = height * factor, width * factor
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = np.full((rows * (tile_h + pad) + pad, cols * (tile_w + pad) + pad,
                     *images.shape[3:]), 255, dtype=np.uint8)
    for i in range(n):
        top = pad + (i // cols) * (tile_h + pad)
        left = pad + (i % cols) * (tile_w + pad)
        sheet[top:top + tile_h, left:left + tile_w] = tiles[i]
    return sheet


