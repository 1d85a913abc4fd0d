"""The image-folder workflow of ``python -m skdccm cluster`` and ``predict``.

A fitted estimator assigns each image of a folder to a cluster (:func:`assign`), and
:func:`write_assignments` writes what a user looks at and reuses, into one output folder:

- ``clusters.csv``: ``file, cluster, confidence`` for every image (paths relative to the
  image folder, confidence the largest cluster probability);
- ``cluster_KK.png``: one contact sheet per non-empty cluster, its most confident images
  under a line giving the cluster's id, size and mean confidence;
- ``overview.png``: one labelled row per cluster with its most confident images;
- with ``export``, ``cluster_KK/``: one folder per cluster holding copies of (or symbolic
  links to) its files.

The outputs of an earlier run in that folder are removed first (:func:`clear_outputs`), so
that two runs never mix. ``cluster`` also saves the estimator as ``model.joblib``, which
``predict`` loads to assign new images (:func:`load_model`, :func:`read_folder_for`).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .console import CommandError
from .datasets import load_image_folder
from .figures import cluster_sheet, overview_sheet

#: Files a run writes into its output folder (besides the per-cluster sheets and folders).
CSV_NAME, MODEL_NAME, OVERVIEW_NAME = "clusters.csv", "model.joblib", "overview.png"

#: Per-cluster outputs: sheets ``cluster_KK.png`` and export folders ``cluster_KK/``.
_PER_CLUSTER = re.compile(r"cluster_\d+(\.png)?")

#: How ``--export`` writes the per-cluster folders.
EXPORT_MODES = ("copy", "link")

#: Images per overview row.
OVERVIEW_PER_ROW = 8


def check_out_folder(out: Path, image_dir: Path) -> None:
    """Refuse an output folder inside the image folder: the next run would read the sheets
    and exported copies as images (and clearing outputs could touch the user's files)."""
    out, image_dir = out.resolve(), image_dir.resolve()
    if out == image_dir or image_dir in out.parents:
        raise CommandError(f"--out {out} is inside the image folder {image_dir}; choose a "
                           "folder outside it")


def clear_outputs(out: Path, *, keep: Sequence[Path] = ()) -> list[str]:
    """Remove what an earlier run wrote into ``out`` (and nothing else); returns the names.

    ``keep`` lists files to leave alone (``predict`` reading ``out/model.joblib``).
    """
    kept = {Path(p).resolve() for p in keep}
    removed = []
    if not out.is_dir():
        return removed
    for entry in sorted(out.iterdir()):
        ours = entry.name in (CSV_NAME, MODEL_NAME, OVERVIEW_NAME) or \
            _PER_CLUSTER.fullmatch(entry.name)
        if not ours or entry.resolve() in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed


def assign(estimator: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's cluster and confidence (its largest cluster probability)."""
    proba = estimator.predict_proba(images)                          # (n, K)
    labels = proba.argmax(axis=1)
    return labels, proba[np.arange(len(labels)), labels]


def write_assignments(out: Path, image_dir: Path, files: Sequence[str], images: np.ndarray,
                      labels: np.ndarray, confidence: np.ndarray, n_clusters: int, *,
                      per_sheet: int, export: str | None = None) -> list[str]:
    """clusters.csv, the contact sheets, overview.png and the export folders.

    Parameters
    ----------
    out : Path
        Output folder (created).
    image_dir : Path
        The folder ``files`` are relative to (for the export).
    files : sequence of str
        Each image's path relative to ``image_dir``.
    images : ndarray of shape (n, H, W) or (n, H, W, 3)
        The images as the estimator saw them.
    labels, confidence : ndarray of shape (n,)
        From :func:`assign`.
    n_clusters : int
        K: sheets are numbered with as many digits as K - 1 needs (at least 2).
    per_sheet : int
        Most confident images per contact sheet.
    export : {"copy", "link"} or None
        Also write one folder per cluster with copies of, or symbolic links to, its files.

    Returns
    -------
    written : list of str
        The names written into ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CSV_NAME, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "cluster", "confidence"))
        for name, cluster, conf in zip(files, labels, confidence, strict=True):
            writer.writerow((name, int(cluster), f"{conf:.6f}"))
    written = [CSV_NAME]
    digits = max(2, len(str(n_clusters - 1)))
    rows = []
    for cluster in range(n_clusters):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            continue
        ranked = members[np.argsort(-confidence[members], kind="stable")]
        mean = float(confidence[members].mean())
        name = f"cluster_{cluster:0{digits}d}"
        title = f"cluster {cluster}: {members.size} images, mean confidence {mean:.2f}"
        cluster_sheet(images[ranked[:per_sheet]], title).save(out / f"{name}.png")
        written.append(f"{name}.png")
        rows.append((f"{cluster}: {members.size} images, conf. {mean:.2f}",
                     images[ranked[:OVERVIEW_PER_ROW]]))
        if export is not None:
            _export(out / name, image_dir, [files[i] for i in ranked], export)
            written.append(f"{name}/")
    overview_sheet(rows, OVERVIEW_PER_ROW).save(out / OVERVIEW_NAME)
    written.append(OVERVIEW_NAME)
    return written


def _export(folder: Path, image_dir: Path, files: Sequence[str], how: str) -> None:
    """Copies of (or links to) ``files`` under ``folder``, keeping their relative paths."""
    for name in files:
        source, target = image_dir / name, folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if how == "copy":
            shutil.copy2(source, target)
            continue
        try:
            os.symlink(source.resolve(), target)
        except OSError as exc:  # e.g. Windows without the privilege to create links
            raise CommandError(f"--export link: cannot link {target} ({exc}); use "
                               "--export copy") from exc


def load_model(path: Path) -> Any:
    """A fitted estimator saved by ``cluster`` or ``fit`` (joblib), checked for ``predict``."""
    import joblib

    if not path.is_file():
        raise CommandError(f"model {path} does not exist; `python -m skdccm cluster` saves "
                           f"one as OUT/{MODEL_NAME}")
    model = joblib.load(path)
    shape = getattr(model, "input_shape_", None)
    if shape is None or not hasattr(model, "predict_proba"):
        raise CommandError(f"{path} holds a {type(model).__name__}, not a fitted skdccm "
                           "estimator")
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise CommandError(f"{path} was fitted on samples of shape {tuple(shape)}, not on "
                           "grey or colour images; it cannot assign image files")
    return model


def read_folder_for(model: Any, image_dir: Path, resize: str,
                    ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """The folder's images at the model's own size and channels (its ``input_shape_``)."""
    channels, height, width = model.input_shape_
    return load_image_folder(image_dir, size=(height, width), resize=resize,
                             mode="L" if channels == 1 else "RGB")
