"""From user arrays to validated float32 batches on the training device.

The estimator validates ``X`` once (dtype, finiteness, sample count) and this module decides
how each sample is laid out (flat features or a ``(C, H, W)`` image), then serves batches of
``(B, C, H, W)`` (or ``(B, d)``) float32 tensors gathered by index. Arrays stay as given:
a NumPy array or memory map is never copied whole; on CUDA the data is moved to the device
once, as stored (uint8 stays uint8), when it fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CHANNEL_COUNTS = (1, 3, 4)


@dataclass(frozen=True)
class InputLayout:
    """How a stored sample maps onto the network's input.

    Attributes
    ----------
    sample_shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for flat features: what the network sees.
    stored_shape : tuple of int
        The per-sample shape of the user's array (``(H, W, C)`` when channels-last).
    channels_last : bool
        Whether stored images are ``(H, W, C)`` and must be permuted.
    scale : float
        Factor applied after casting to float32 (``1/255`` for uint8 input).
    value_range : tuple of float
        Smallest and largest value of the scaled training data, used by augmentations
        that shift intensities relative to the data's range.
    photo_defaults : bool or None
        Whether the defaults chosen for colour photographs apply (see :func:`is_colour`);
        None: for colour images only. An estimator sets it in ``fit`` once it knows the
        number of images and clusters (:func:`grey_photographs`).
    """

    sample_shape: tuple[int, ...]
    stored_shape: tuple[int, ...]
    channels_last: bool
    scale: float
    value_range: tuple[float, float] = (0.0, 1.0)
    photo_defaults: bool | None = None

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def photographic(self) -> bool:
        """``photo_defaults``, or whether the samples are colour images when it is None."""
        return is_photographic(self.sample_shape, self.photo_defaults)


def is_colour(sample_shape: tuple[int, ...]) -> bool:
    """Whether samples of ``sample_shape`` are colour images: ``(C, H, W)`` with C > 1.

    Several defaults follow it (pixel neighbours, the warm start, their space, the width
    of the small CNN, the augmentations, the epochs): colour photographs' pixels say less
    about their class than grey images' strokes do. They are the defaults for
    photographs, which an estimator may also give grey images
    (``InputLayout.photo_defaults``).

    Examples
    --------
    >>> from skdccm.data import is_colour
    >>> is_colour((3, 32, 32)), is_colour((1, 28, 28)), is_colour((64,))
    (True, False, False)
    """
    return len(sample_shape) == 3 and sample_shape[0] != 1


def is_photographic(sample_shape: tuple[int, ...], photo_defaults: bool | None = None) -> bool:
    """Whether samples of ``sample_shape`` take the defaults for photographs:
    ``photo_defaults`` when given (``InputLayout.photo_defaults``), else colour images.

    Examples
    --------
    >>> from skdccm.data import is_photographic
    >>> is_photographic((1, 32, 32)), is_photographic((1, 32, 32), True)
    (False, True)
    """
    return is_colour(sample_shape) if photo_defaults is None else photo_defaults


#: Grey images at least this many pixels a side may take the defaults for photographs
#: (:func:`grey_photographs`); smaller ones are digit-sized. The networks' own thresholds
#: (``dccm.SMALL_CNN_MIN_SIDE``, ``crlc.SMALL_IMAGE``) are separate choices that share the value.
PHOTO_MIN_SIDE = 16

#: ... with at most this many images a cluster on average. With a few dozen images a
#: cluster, pixel neighbours and the pseudo-graph have little to go on and a warm start's
#: learned features help; the digit sets (180 to 930 images a cluster) keep their own
#: defaults. DCCM, seeds 0-4, one thread of an AVX2 EPYC, mean ACC (worst seed), every
#: seed better: COIL-20 (72 images a cluster) 0.793 (0.741) -> 0.881 (0.809), ORL (400
#: faces, 10 a person) 0.682 (0.650) -> 0.738 (0.682). No part alone does it
#: (BENCHMARKS.md).
PHOTO_MAX_CLUSTER_SIZE = 100

#: ... whose foreground is at least this share mid-tones (:func:`foreground_midtones`):
#: shaded like photographs (COIL-20 0.93, ORL 0.997), not strokes of ink (MNIST 0.50,
#: USPS 0.56). On 1,000 MNIST images (100 a cluster) DCCM with the defaults for
#: photographs lost to the grey ones on every seed (0.558 / 0.693 / 0.443 against 0.775 /
#: 0.724 / 0.688, seeds 0-2; BENCHMARKS.md).
PHOTO_MIN_MIDTONES = 0.75


def grey_photographs(sample_shape: tuple[int, ...], n_samples: int, n_clusters: int,
                     midtones: Callable[[], float]) -> bool:
    """Whether grey images take the defaults for photographs in the ``"default"`` presets.

    Grey images of ``PHOTO_MIN_SIDE`` pixels a side or more, at most
    ``PHOTO_MAX_CLUSTER_SIZE`` images a cluster on average, whose foreground is at least
    ``PHOTO_MIN_MIDTONES`` mid-tones: faces and objects photographed in grey, not digits
    or other strokes of ink. ``midtones()`` (:func:`foreground_midtones` of the data) is
    called only when the shape and the counts allow the rule.

    Examples
    --------
    >>> from skdccm.data import grey_photographs
    >>> grey_photographs((1, 32, 32), 400, 40, lambda: 0.99)   # ORL: 10 faces a person
    True
    >>> grey_photographs((1, 28, 28), 1000, 10, lambda: 0.50)  # 1,000 MNIST digits
    False
    """
    return (len(sample_shape) == 3 and sample_shape[0] == 1
            and min(sample_shape[1:]) >= PHOTO_MIN_SIDE
            and n_samples <= PHOTO_MAX_CLUSTER_SIZE * n_clusters
            and midtones() >= PHOTO_MIN_MIDTONES)


def infer_layout(
    shape: tuple[int, ...],
    dtype: np.dtype,
    *,
    image_shape: tuple[int, ...] | None,
    channels: str | None,
    owner: str,
) -> InputLayout:
    """Decide the network-side shape of each sample from the array's shape.

    Parameters
    ----------
    shape : tuple of int
        Shape of the whole validated array, ``(n_samples, ...)``.
    dtype : numpy dtype
        Its dtype; uint8 is scaled to [0, 1].
    image_shape : tuple of int or None
        ``(C, H, W)`` or ``(H, W)`` for 2-D input holding flattened images.
    channels : {"first", "last"} or None
        Where the channel axis is; None infers it (see the user guide).
    owner : str
        Estimator name used in error messages.
    """
    if channels not in (None, "first", "last"):
        raise ValueError(f"{owner}: channels={channels!r} must be None, 'first' or 'last'")
    scale = 1.0 / 255.0 if dtype == np.uint8 else 1.0
    stored = tuple(int(s) for s in shape[1:])
    ndim = len(shape)
    if 0 in stored:  # an empty image axis would only fail later, deep inside torch
        raise ValueError(f"{owner}: X has shape {tuple(shape)!r}; each sample must hold at "
                         "least one value along every axis")

    if ndim == 2:
        if image_shape is None:
            return InputLayout((stored[0],), stored, False, scale)
        dims = tuple(int(s) for s in image_shape)
        if len(dims) not in (2, 3) or min(dims) <= 0:
            raise ValueError(
                f"{owner}: image_shape={image_shape!r} must be (C, H, W) or (H, W) of "
                "positive sizes"
            )
        if len(dims) == 2:
            dims = (1, *dims)
        if int(np.prod(dims)) != stored[0]:
            raise ValueError(
                f"{owner}: image_shape={tuple(image_shape)!r} needs {int(np.prod(dims))} "
                f"features per sample, X has {stored[0]}"
            )
        c, h, w = dims
        if channels == "last":
            return InputLayout((c, h, w), (h, w, c), True, scale)
        return InputLayout((c, h, w), dims, False, scale)

    if image_shape is not None:
        raise ValueError(
            f"{owner}: image_shape is only for 2-D X of flattened images; X has shape "
            f"{tuple(shape)!r}, whose image size is already known"
        )
    if ndim == 3:
        h, w = stored
        return InputLayout((1, h, w), stored, False, scale)
    if ndim == 4:
        last = channels == "last" or (channels is None and stored[-1] in CHANNEL_COUNTS)
        if last:
            h, w, c = stored
            return InputLayout((c, h, w), stored, True, scale)
        return InputLayout(stored, stored, False, scale)
    raise ValueError(
        f"{owner}: X must be 2-D (n_samples, n_features), 3-D (n, H, W) or 4-D images "
        f"(n, H, W, C) / (n, C, H, W); got {ndim}-D with shape {tuple(shape)!r}"
    )


def as_array(X, owner: str):
    """Tensors, PIL images and lists of samples as NumPy arrays of the dtype they hold.

    scikit-learn's ``check_array`` finds no NumPy dtype on a list, a tensor or a PIL image
    and casts it to the first accepted dtype, float32: uint8 pixels would then skip the
    scaling to [0, 1] that the same pixels get as a uint8 array. Converted here first, every
    container means what the equivalent NumPy array means. NumPy arrays and memory maps
    (never copied), DataFrames (scikit-learn keeps their column names), sparse matrices and
    anything else pass through unchanged.

    Parameters
    ----------
    X : object
        What the user passed as ``X``.
    owner : str
        Estimator name used in error messages.
    """
    if isinstance(X, np.ndarray):
        return X
    if isinstance(X, Tensor):
        return _tensor_as_array(X)
    if isinstance(X, (list, tuple)):
        samples = [_tensor_as_array(x) if isinstance(x, Tensor) else x for x in X]
        try:
            return np.asarray(samples)
        except ValueError:
            raise ValueError(_ragged_message(samples, owner)) from None
    if hasattr(X, "__array_interface__"):  # a PIL image
        return np.asarray(X)
    return X


def _tensor_as_array(tensor: Tensor) -> np.ndarray:
    """The tensor's values on the host, sharing memory with a CPU tensor; same dtype."""
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32,
                                                           torch.float64):
        tensor = tensor.float()  # bfloat16 and float8 have no NumPy dtype; float32 is exact
    return tensor.numpy(force=True)  # detached (requires_grad), on the host


def _ragged_message(samples: list, owner: str) -> str:
    shapes = []
    for sample in samples:
        try:
            shapes.append(np.shape(sample))
        except ValueError:  # a ragged nested list inside the sample
            shapes.append(None)
    first = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
    detail = ("" if first is None or None in (shapes[0], shapes[first]) else
              f" (sample 0 has shape {shapes[0]}, sample {first} has {shapes[first]})")
    return (f"{owner}: X is a list of samples of different shapes{detail}; give every "
            "sample the same shape (resize images to one size and one number of channels)")


def check_is_batch(shape: tuple[int, ...], fitted: tuple[int, ...], owner: str) -> None:
    """Raise with the fix when ``X`` is one image of the fitted size rather than a batch.

    ``predict(X[0])`` on a model of ``(1, 8, 8)`` images passes an ``(8, 8)`` array, which
    reads as 8 samples of 8 features. Shapes that are also a valid batch (``(1, H, W)`` for
    a grey model: one grey image) are left alone.
    """
    shape = tuple(shape)
    if len(fitted) != 3 or len(shape) not in (2, 3):
        return
    c, h, w = fitted
    if len(shape) == 2:
        one_image, as_batch = c == 1 and shape == (h, w), shape[1] == c * h * w
    else:
        one_image, as_batch = shape in ((c, h, w), (h, w, c)), c == 1 and shape[1:] == (h, w)
    if one_image and not as_batch:
        raise ValueError(
            f"{owner}: X has shape {shape}, one image of the size the model was fitted on "
            f"{tuple(fitted)}, but X must hold a batch of images; pass one image as "
            "X[None] (or np.expand_dims(X, 0))"
        )


def check_image_size(layout: InputLayout, fitted: tuple[int, ...], owner: str) -> None:
    """Raise when samples given to ``predict`` differ from those seen in ``fit``."""
    if layout.sample_shape != tuple(fitted):
        def kind(shape: tuple[int, ...]) -> str:
            return "images (C, H, W)" if len(shape) == 3 else "flat features"

        raise ValueError(
            f"{owner} was fitted on samples of shape {tuple(fitted)!r}, {kind(tuple(fitted))}, "
            f"but X holds samples of shape {layout.sample_shape!r}, {kind(layout.sample_shape)}"
            "; resize the images or refit"
        )


def to_network_input(raw: Tensor, layout: InputLayout) -> Tensor:
    """Cast a gathered batch to float32, scale it and put channels first.

    ``raw`` is ``(B, *stored_shape)`` in the stored dtype; the result is
    ``(B, *sample_shape)`` float32, contiguous.
    """
    batch = raw.to(torch.float32)
    if layout.scale != 1.0:
        batch = batch.mul_(layout.scale)
    if layout.is_image and layout.channels_last and layout.sample_shape[0] > 1:
        batch = batch.reshape(-1, *layout.stored_shape).permute(0, 3, 1, 2)  # (B, C, H, W)
    elif layout.is_image:
        # (H, W, 1) and (1, H, W) share one memory order: a permute would leave strides
        # that torch reads as channels-last, and its kernels would round differently.
        batch = batch.reshape(-1, *layout.sample_shape)                      # (B, C, H, W)
    return batch.contiguous()


class ArraySource:
    """Serve batches of a validated array by index, on a given device.

    On CPU the array is read in place (a memory map is read batch by batch). On an
    accelerator the whole array is copied there once, in its stored dtype, when it takes
    less than ``device_fraction`` of the free device memory; otherwise batches are gathered
    on the host and copied with pinned, non-blocking transfers.
    """

    def __init__(
        self,
        array: np.ndarray,
        layout: InputLayout,
        device: torch.device,
        *,
        device_fraction: float = 0.5,
    ) -> None:
        self.array = array
        self.layout = layout
        self.device = device
        self._resident: Tensor | None = None
        #: ``(n, k + 1)`` indices of each sample and its ``k`` nearest neighbours (on
        #: ``device``), mined by the estimator when it pairs images with neighbours.
        self.neighbours: Tensor | None = None
        if device.type != "cpu" and _fits_on_device(array.nbytes, device, device_fraction):
            self._resident = torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def resident(self) -> bool:
        """Whether the data lives on the (non-CPU) device."""
        return self._resident is not None

    def gather(self, index: Tensor) -> Tensor:
        """Samples at ``index`` as a ``(B, *sample_shape)`` float32 tensor on the device."""
        if self._resident is not None:
            raw = self._resident.index_select(0, to_device(index, self.device))
        else:
            rows = index.cpu().numpy()
            raw = torch.from_numpy(np.ascontiguousarray(self.array[rows]))
            if self.device.type == "cuda":
                raw = raw.pin_memory().to(self.device, non_blocking=True)
            elif self.device.type != "cpu":
                raw = raw.to(self.device)
        return to_network_input(raw, self.layout)

    def batches(self, batch_size: int):
        """Yield consecutive ``(B, *sample_shape)`` batches in input order.

        Sizes differ by at most one (:func:`even_splits`): a trailing batch of one sample
        would break BatchNorm layers that normalise with batch statistics in prediction.
        """
        for index in even_splits(torch.arange(len(self)), batch_size):
            yield self.gather(index)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Copy a host tensor to ``device`` without making the host wait for the device.

    A plain ``tensor.to("cuda")`` from pageable memory synchronises the host with the CUDA
    stream; through pinned memory and ``non_blocking=True`` it is queued like a kernel. Used
    for the index tensors of every chunk and minibatch, so that the training loop never
    waits for the GPU between steps.
    """
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def value_range(source: ArraySource, batch_size: int = 4096) -> tuple[float, float]:
    """Smallest and largest scaled value, read batch by batch."""
    low, high = np.inf, -np.inf
    for batch in source.batches(batch_size):
        low = min(low, float(batch.min()))
        high = max(high, float(batch.max()))
    return low, high


#: Pixels within this share of the value range from either end are at that end (ink, paper,
#: background); the rest are mid-tones (:func:`foreground_midtones`).
TONE_MARGIN = 0.1


def tone_shares(source: ArraySource, value_range: tuple[float, float],
                batch_size: int = 4096) -> tuple[float, float]:
    """Shares of all pixels at the dark end and at the light end of ``value_range``
    (within ``TONE_MARGIN`` of it), read batch by batch."""
    low, high = value_range
    if high <= low:  # constant images: every pixel is at both ends; no foreground
        return 1.0, 1.0
    margin = TONE_MARGIN * (high - low)
    dark = light = 0.0
    total = 0
    for batch in source.batches(batch_size):
        dark += float((batch <= low + margin).sum())
        light += float((batch >= high - margin).sum())
        total += batch.numel()
    return dark / total, light / total


def foreground_midtones(dark: float, light: float) -> float:
    """Share of mid-tones among the pixels that are not background.

    The background is the more common end of the value range (black around an object,
    white paper around ink). Strokes, prints and digits are ink at the other end with
    anti-aliased edges, about half mid-tones (MNIST 0.50, USPS 0.56); photographs are
    shaded (COIL-20's objects on black 0.93, ORL's faces 0.99).

    Parameters
    ----------
    dark, light : float
        Shares of all pixels at the dark and the light end (:func:`tone_shares`).

    Returns
    -------
    float
        In [0, 1]; 0 when every pixel is background.

    Examples
    --------
    >>> from skdccm.data import foreground_midtones
    >>> foreground_midtones(0.75, 0.125), foreground_midtones(0.05, 0.0)
    (0.5, 1.0)
    """
    foreground = 1.0 - max(dark, light)
    if foreground <= 0.0:
        return 0.0
    return max(0.0, 1.0 - dark - light) / foreground


def _fits_on_device(nbytes: int, device: torch.device, fraction: float) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes < fraction * free
    return True


def even_splits(index: Tensor, max_size: int) -> tuple[Tensor, ...]:
    """Split ``index`` into the fewest parts of at most ``max_size``, sizes within one.

    Even sizes keep BatchNorm away from a trailing batch of one sample. No part ever holds a
    single sample when ``len(index) >= 2``: with ``max_size < 3`` (e.g. 5 samples in parts
    of 2) parts of ``max_size + 1`` are used instead.
    """
    n_parts = max(1, -(-len(index) // max_size))
    if len(index) >= 2:
        n_parts = min(n_parts, len(index) // 2)
    return torch.tensor_split(index, n_parts)


def shuffled_batches(n_samples: int, batch_size: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Indices of ``n_samples`` in random batches of at most ``batch_size`` (sizes within one).

    For passes over the training data that must see batches like the training steps do:
    BatchNorm statistics and contrastive losses are computed per batch, and data stored in
    class order (MNIST 5k, a folder of images sorted by subfolder) would otherwise give
    batches of a single class. The permutation is drawn from its own generator seeded with
    ``seed``, so the batches are the same on every call and no global random state moves.

    Examples
    --------
    >>> from skdccm.data import shuffled_batches
    >>> batches = shuffled_batches(10, 4)
    >>> [len(b) for b in batches], sorted(torch.cat(batches).tolist()) == list(range(10))
    ([4, 3, 3], True)
    """
    order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))
    return even_splits(order, batch_size)
