"""Figures of the command line: plots of a benchmark run and sheets of clustered images.

Plots (:func:`plot_confusion`, :func:`plot_learning_curve`, :func:`plot_embedding`) use
matplotlib's Agg canvas without pyplot (no global state, no display needed); image sheets
(:func:`cluster_sheet`, :func:`overview_sheet`) are grids of
:func:`torchvision.utils.make_grid` with Pillow's labels. This module imports nothing from
the rest of skdccm but :mod:`skdccm.metrics`.
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


def image_grid(images: np.ndarray, nrow: int, *, min_tile: int = 32, pad: int = 2):
    """Images side by side, ``nrow`` per row, on white, small ones enlarged: a PIL image.

    Built with :func:`torchvision.utils.make_grid`.

    Parameters
    ----------
    images : ndarray of shape (n, H, W) or (n, H, W, 3)
        uint8, or floats in [0, 1]; ``None`` entries are not allowed (blank tiles are white
        images).
    nrow : int
        Images per row.
    min_tile : int, default=32
        Images smaller than this are enlarged by an integer factor (nearest neighbour).
    pad : int, default=2
        White pixels around every tile.

    Returns
    -------
    grid : PIL.Image.Image
        RGB, ``cols * (tile + pad) + pad`` pixels wide, where ``cols = min(nrow, n)``.
    """
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    tiles = torch.from_numpy(_as_unit_float(images))                     # (n, H, W[, 3])
    if tiles.ndim == 3:
        tiles = tiles[..., None].expand(-1, -1, -1, 3)
    tiles = tiles.permute(0, 3, 1, 2)                                      # (n, 3, H, W)
    factor = max(1, math.ceil(min_tile / max(min(tiles.shape[2:]), 1)))
    tiles = tiles.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    if len(tiles) == 1:  # make_grid returns a lone image without its padding
        grid = torch.nn.functional.pad(tiles[0], (pad,) * 4, value=1.0)
    else:
        grid = make_grid(tiles, nrow=nrow, padding=pad, pad_value=1.0)   # (3, GH, GW)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels)


def _as_unit_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return np.clip(images, 0.0, 1.0).astype(np.float32)


def _font(size: int = 12):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def cluster_sheet(images: np.ndarray, title: str, *, min_tile: int = 32):
    """A cluster's contact sheet: its images in a square-ish grid under a title line.

    Parameters
    ----------
    images : ndarray of shape (n, H, W) or (n, H, W, 3)
        The cluster's images, most confident first.
    title : str
        E.g. ``"cluster 3: 42 images, mean confidence 0.91"``.
    min_tile : int, default=32
        Smallest tile side (small images are enlarged).

    Returns
    -------
    sheet : PIL.Image.Image
    """
    from PIL import Image, ImageDraw

    grid = image_grid(images, math.ceil(math.sqrt(len(images))), min_tile=min_tile)
    font = _font()
    left, top, right, bottom = ImageDraw.Draw(grid).textbbox((0, 0), title, font=font)
    header = bottom - top + 8
    sheet = Image.new("RGB", (max(grid.width, right - left + 8), grid.height + header), "white")
    ImageDraw.Draw(sheet).text((4, 4 - top), title, fill="black", font=font)
    sheet.paste(grid, (0, header))
    return sheet


def overview_sheet(rows: Sequence[tuple[str, np.ndarray]], per_row: int, *,
                   min_tile: int = 48):
    """One labelled row per cluster: the label, then its first ``per_row`` images.

    Parameters
    ----------
    rows : sequence of (str, ndarray)
        Each cluster's label (``"3: 42 images, conf. 0.91"``) and images, most confident
        first; all images share one shape.
    per_row : int
        Images per row; rows with fewer are filled with white.
    min_tile : int, default=48
        Smallest tile side (small images are enlarged).

    Returns
    -------
    overview : PIL.Image.Image
    """
    from PIL import Image, ImageDraw

    shape = rows[0][1].shape[1:]
    blank = np.full(shape, 255, dtype=np.uint8)
    tiles = []
    for _, images in rows:
        images = images[:per_row]
        if images.dtype != np.uint8:
            images = (_as_unit_float(images) * 255).round().astype(np.uint8)
        tiles.extend([*images, *([blank] * (per_row - len(images)))])
    grid = image_grid(np.stack(tiles), per_row, min_tile=min_tile)
    font = _font()
    measure = ImageDraw.Draw(grid)
    margin = max(measure.textbbox((0, 0), label, font=font)[2] for label, _ in rows) + 12
    sheet = Image.new("RGB", (grid.width + margin, grid.height), "white")
    sheet.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(sheet)
    row_height = (grid.height - 2) / len(rows)
    for i, (label, _) in enumerate(rows):
        draw.text((6, 2 + (i + 0.5) * row_height), label, fill="black", font=font, anchor="lm")
    return sheet
