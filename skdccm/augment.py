"""Batched, device-side image augmentations with one random draw per image.

Each function takes a ``(N, C, H, W)`` float tensor and an explicit ``torch.Generator`` on the
images' device, and returns a new tensor of the same shape: no PIL, no Python loop over
images, no global random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import is_photographic


@dataclass(frozen=True)
class AffineAugmentation:
    """DCCM's "small perturbations" (paper section 3.2; settings of the released code).

    Attributes
    ----------
    rotation : float
        Largest rotation in degrees; angles are uniform in ``[-rotation, rotation]``.
    shift : float
        Largest translation as a fraction of width and height.
    zoom : tuple of float
        Range of the zoom factor, drawn independently per axis.
    channel_shift : float
        Largest additive per-channel shift, as a fraction of the data's value range;
        results are clipped back to that range.
    flip : bool
        Horizontal flip with probability 0.5 (never for digits or text).
    multiply : float
        Constant factor applied last (the released code's ``rescale``).
    interpolation : {"nearest", "bilinear"}
        Sampling; edges are replicated.
    """

    rotation: float = 20.0
    shift: float = 0.18
    zoom: tuple[float, float] = (0.85, 1.15)
    channel_shift: float = 0.1
    flip: bool = True
    multiply: float = 0.95
    interpolation: str = "nearest"


#: Named settings: the released CIFAR settings, the milder ones used for 96x96 images, and
#: a digit-safe variant (no flips, bilinear sampling for tiny images).
AFFINE_PRESETS: dict[str, AffineAugmentation | None] = {
    "cifar": AffineAugmentation(),
    "mild": AffineAugmentation(rotation=10.0, shift=0.1, zoom=(0.95, 1.05), channel_shift=0.05,
                               multiply=0.975),
    "digits": AffineAugmentation(rotation=15.0, shift=0.1, zoom=(0.9, 1.1), channel_shift=0.0,
                                 flip=False, multiply=1.0, interpolation="bilinear"),
    "none": None,
}


def resolve_affine(
    name: str | AffineAugmentation | None, sample_shape: tuple[int, ...],
    photographic: bool | None = None,
) -> AffineAugmentation | None:
    """Pick the augmentation for ``name`` (or ``"auto"``) and samples of ``sample_shape``.

    ``"auto"``: none for flat features, ``"digits"`` for grey images, ``"mild"`` for colour
    images (and others given the defaults for photographs) of 64 pixels or more,
    ``"cifar"`` otherwise.

    Parameters
    ----------
    name : str, AffineAugmentation or None
        ``"auto"``, a key of ``AFFINE_PRESETS``, or settings (returned as they are).
    sample_shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for flat features.
    photographic : bool or None, default=None
        Whether images take the defaults for photographs (``InputLayout.photographic``);
        None: colour images do.

    Returns
    -------
    AffineAugmentation or None
        The settings; None means no augmented views.

    Examples
    --------
    >>> from skdccm.augment import resolve_affine
    >>> resolve_affine("auto", (1, 28, 28)).flip            # grey digits: never flipped
    False
    >>> resolve_affine("auto", (3, 32, 32)).rotation        # CIFAR-sized colour images
    20.0
    >>> resolve_affine("auto", (64,)) is None               # flat features
    True
    """
    if name is None or isinstance(name, AffineAugmentation):
        return name
    if name == "auto":
        if len(sample_shape) != 3:
            return None
        if not is_photographic(sample_shape, photographic):
            return AFFINE_PRESETS["digits"]
        return AFFINE_PRESETS["mild" if min(sample_shape[1:]) >= 64 else "cifar"]
    if name not in AFFINE_PRESETS:
        raise ValueError(
            f"unknown augmentation {name!r}; choose one of 'auto', "
            + ", ".join(repr(k) for k in AFFINE_PRESETS)
            + ", or pass an skdccm.augment.AffineAugmentation"
        )
    if AFFINE_PRESETS[name] is not None and len(sample_shape) != 3:
        raise ValueError(f"augmentation={name!r} needs images; X holds flat features")
    return AFFINE_PRESETS[name]


def uniform(n: int, low: float, high: float, generator: torch.Generator | None,
            device: torch.device) -> Tensor:
    """``n`` draws from U(low, high) on ``device``.

    Parameters
    ----------
    n : int
        Number of draws.
    low, high : float
        Bounds of the interval.
    generator : torch.Generator or None
        Source of randomness, on ``device``.
    device : torch.device
        Where the draws are made.

    Returns
    -------
    Tensor of shape (n,)
        float32 values in ``[low, high)``.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import uniform
    >>> draws = uniform(5, -1.0, 1.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    >>> draws.shape, bool(((draws >= -1) & (draws < 1)).all())
    (torch.Size([5]), True)
    """
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def affine_matrices(angle_deg: Tensor, zoom_x: Tensor, zoom_y: Tensor, shift_x: Tensor,
                    shift_y: Tensor, flip: Tensor) -> Tensor:
    """Per-sample 2x3 matrices mapping output to input coordinates for ``affine_grid``.

    Parameters
    ----------
    angle_deg : Tensor of shape (N,)
        Rotation in degrees.
    zoom_x, zoom_y : Tensor of shape (N,)
        Zoom factors per axis (above 1 enlarges the content).
    shift_x, shift_y : Tensor of shape (N,)
        Translations as fractions of the image size (normalised coordinates span 2).
    flip : Tensor of shape (N,)
        +1, or -1 to mirror the x axis.

    Returns
    -------
    Tensor of shape (N, 2, 3)
        Matrices for :func:`torch.nn.functional.affine_grid`.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import affine_matrices
    >>> ones, zeros = torch.ones(1), torch.zeros(1)
    >>> identity = affine_matrices(zeros, ones, ones, zeros, zeros, ones)
    >>> identity.shape, torch.equal(identity, torch.eye(2, 3)[None])
    (torch.Size([1, 2, 3]), True)
    """
    theta = angle_deg * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    matrix = torch.stack([
        torch.stack([cos * flip / zoom_x, -sin / zoom_x, 2.0 * shift_x], dim=1),
        torch.stack([sin * flip / zoom_y, cos / zoom_y, 2.0 * shift_y], dim=1),
    ], dim=1)                                                                      # (N, 2, 3)
    return matrix


def random_affine(images: Tensor, config: AffineAugmentation,
                  generator: torch.Generator | None = None) -> Tensor:
    """Rotate, zoom, shift and optionally flip each image by its own random draw.

    One ``affine_grid`` and one ``grid_sample`` for the whole batch, with edge replication.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Float images on any device.
    config : AffineAugmentation
        Ranges of the random factors.
    generator : torch.Generator, optional
        On ``images``' device; each image gets its own draws from it.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        The transformed images.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import AFFINE_PRESETS, random_affine
    >>> images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> views = random_affine(images, AFFINE_PRESETS["digits"], torch.Generator().manual_seed(1))
    >>> views.shape
    torch.Size([4, 1, 8, 8])
    """
    n, device = images.shape[0], images.device
    angle = uniform(n, -config.rotation, config.rotation, generator, device)      # (N,)
    zoom_x = uniform(n, *config.zoom, generator, device)
    zoom_y = uniform(n, *config.zoom, generator, device)
    shift_x = uniform(n, -config.shift, config.shift, generator, device)
    shift_y = uniform(n, -config.shift, config.shift, generator, device)
    if config.flip:
        flip = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    else:
        flip = torch.ones(n, device=device)
    matrix = affine_matrices(angle, zoom_x, zoom_y, shift_x, shift_y, flip)
    grid = F.affine_grid(matrix.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=config.interpolation, padding_mode="border",
                         align_corners=False)                                      # (N, C, H, W)


def random_channel_shift(images: Tensor, max_shift: float, value_range: tuple[float, float],
                         generator: torch.Generator | None = None) -> Tensor:
    """Add one uniform shift per image and channel, then clip to ``value_range``.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Float images.
    max_shift : float
        Largest shift, as a fraction of the range's width.
    value_range : tuple of float
        ``(low, high)`` of the data; results are clipped to it.
    generator : torch.Generator, optional
        On ``images``' device.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        The shifted images.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import random_channel_shift
    >>> images = torch.full((2, 3, 4, 4), 0.5)
    >>> shifted = random_channel_shift(images, 0.1, (0.0, 1.0), torch.Generator().manual_seed(0))
    >>> bool(((shifted - images).abs() <= 0.1).all())
    True
    >>> shifted[0, :, 0, 0].unique().numel() == 3    # one shift per channel
    True
    """
    n, c = images.shape[:2]
    low, high = value_range
    width = high - low
    shift = (torch.rand(n, c, 1, 1, generator=generator, device=images.device) * 2 - 1)
    return (images + shift * (max_shift * width)).clamp_(low, high)


def dccm_view(images: Tensor, config: AffineAugmentation, value_range: tuple[float, float],
              generator: torch.Generator | None = None) -> Tensor:
    """One augmented view for DCCM: affine, channel shift, then the constant factor.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Float images.
    config : AffineAugmentation
        The perturbation's settings.
    value_range : tuple of float
        ``(low, high)`` of the training data (channel shifts are relative to it).
    generator : torch.Generator, optional
        On ``images``' device.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        The perturbed images x'.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import AFFINE_PRESETS, dccm_view
    >>> images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> view = dccm_view(images, AFFINE_PRESETS["cifar"], (0.0, 1.0),
    ...                  torch.Generator().manual_seed(1))
    >>> view.shape, bool(view.max() <= 0.95)        # the released code's factor 0.95
    (torch.Size([4, 3, 32, 32]), True)
    """
    view = random_affine(images, config, generator)
    if config.channel_shift > 0:
        view = random_channel_shift(view, config.channel_shift, value_range, generator)
    if config.multiply != 1.0:
        view = view * config.multiply
    return view


# ----------------------------------------------------------------------------------------
# CRLC two-view augmentation
# ----------------------------------------------------------------------------------------
#
# SimCLR-style views (CRLC paper section 4.3 of DESIGN.md): random resized crop, horizontal
# flip, colour jitter, grayscale and, for large images, Gaussian blur. Every random factor is
# drawn per image from the given generator; colour operations work on values mapped to
# [0, 1] from the data's range and are mapped back, so float images in [0, 16] (scikit-learn's
# digits) are handled like uint8 images.


@dataclass(frozen=True)
class ContrastiveAugmentation:
    """Settings of one contrastive view (SimCLR's recipe as used by CRLC).

    Attributes
    ----------
    crop_scale : tuple of float
        Range of the crop's area as a fraction of the image (CRLC: 0.2 to 1).
    crop_ratio : tuple of float
        Range of the crop's aspect ratio (width / height), drawn log-uniformly.
    flip : bool
        Horizontal flip with probability 0.5 (never for digits or text).
    rotation : float
        Largest rotation of the crop box in degrees, uniform in ``[-rotation, rotation]``
        (not in CRLC's recipe, which has none).
    jitter : tuple of float
        Brightness, contrast, saturation and hue strengths (CRLC: 0.4, 0.4, 0.4, 0.1).
        Factors are uniform in ``[1 - s, 1 + s]``; the hue shift in ``[-h, h]`` turns.
        Saturation and hue act on colour images only.
    jitter_p : float
        Probability of applying the colour jitter to an image (CRLC: 0.8).
    grayscale_p : float
        Probability of turning a colour image grey (CRLC: 0.2).
    blur_p : float
        Probability of a Gaussian blur (CRLC: 0.5 for 96x96 images, 0 for 32x32).
    blur_kernel : int
        Odd kernel size of the blur (CRLC: 9).
    blur_sigma : tuple of float
        Range of the blur's standard deviation in pixels (CRLC: 0.1 to 2).
    noise : float
        Standard deviation of additive Gaussian noise, relative to each feature's standard
        deviation in the batch (flat features, where no image operation applies) or to the
        batch's pixel standard deviation (images).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    rotation: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise: float = 0.0


#: Named settings: CRLC's CIFAR views, the same with blur for images of 64 pixels or more
#: (STL-10, ImageNet subsets), a digit-safe variant (no flip; crops of at least 30% of the
#: area, turned by up to 20 degrees; brightness and contrast only) and feature noise for
#: flat inputs. The digit settings were chosen on scikit-learn's 8x8 digits (CRLC, MLP
#: backbone, 40 epochs, seed 0, ACC: crops 0.4-1 without rotation 0.84; 0.6-1 with 15
#: degrees 0.94; 0.3-1 with 20 degrees 0.95; 0.2-1 with 20 degrees and 0.3-1 with 30 degrees
#: 0.94).
CONTRASTIVE_PRESETS: dict[str, ContrastiveAugmentation | None] = {
    "cifar": ContrastiveAugmentation(),
    "large": ContrastiveAugmentation(blur_p=0.5),
    "digits": ContrastiveAugmentation(crop_scale=(0.3, 1.0), flip=False, rotation=20.0,
                                      jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0),
    "features": ContrastiveAugmentation(crop_scale=(1.0, 1.0), flip=False,
                                        jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0,
                                        grayscale_p=0.0, noise=0.5),
    "none": None,
}


def resolve_contrastive(
    name: str | ContrastiveAugmentation | None, sample_shape: tuple[int, ...],
    photographic: bool | None = None,
) -> ContrastiveAugmentation | None:
    """Pick the contrastive views for ``name`` (or ``"auto"``) and samples of ``sample_shape``.

    ``"auto"``: ``"features"`` for flat features, ``"digits"`` for grey images, ``"large"``
    for colour images (and others given the defaults for photographs) of 64 pixels or
    more, ``"cifar"`` otherwise.

    Parameters
    ----------
    name : str, ContrastiveAugmentation or None
        ``"auto"``, a key of ``CONTRASTIVE_PRESETS``, or settings (returned as they are).
    sample_shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for flat features.
    photographic : bool or None, default=None
        Whether images take the defaults for photographs (``InputLayout.photographic``);
        None: colour images do.

    Returns
    -------
    ContrastiveAugmentation or None
        The settings; None gives two identical views.

    Examples
    --------
    >>> from skdccm.augment import resolve_contrastive
    >>> resolve_contrastive("auto", (3, 96, 96)).blur_p     # STL-10-sized images: blur
    0.5
    >>> resolve_contrastive("auto", (1, 28, 28)).flip       # digits: no flips
    False
    """
    if name is None or isinstance(name, ContrastiveAugmentation):
        return name
    if name == "auto":
        if len(sample_shape) != 3:
            return CONTRASTIVE_PRESETS["features"]
        if not is_photographic(sample_shape, photographic):
            return CONTRASTIVE_PRESETS["digits"]
        return CONTRASTIVE_PRESETS["large" if min(sample_shape[1:]) >= 64 else "cifar"]
    if name not in CONTRASTIVE_PRESETS:
        raise ValueError(
            f"unknown augmentation {name!r}; choose one of 'auto', "
            + ", ".join(repr(k) for k in CONTRASTIVE_PRESETS)
            + ", or pass an skdccm.augment.ContrastiveAugmentation"
        )
    if name not in ("features", "none") and len(sample_shape) != 3:
        raise ValueError(f"augmentation={name!r} needs images; X holds flat features. Use "
                         "'features' or 'auto'")
    return CONTRASTIVE_PRESETS[name]


def _bernoulli(n: int, p: float, generator: torch.Generator | None,
               device: torch.device) -> Tensor:
    """(N,) bool, each True with probability ``p``."""
    return torch.rand(n, generator=generator, device=device) < p


def _per_sample(values: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1), to broadcast over an image batch."""
    return values[:, None, None, None]


def random_resized_crop(images: Tensor, scale: tuple[float, float],
                        ratio: tuple[float, float], flip: bool,
                        generator: torch.Generator | None = None,
                        rotation: float = 0.0) -> Tensor:
    """Crop a random box of each image, resize it to the full size, optionally flip.

    The area fraction is uniform in ``scale`` and the aspect ratio log-uniform in ``ratio``;
    a box wider or taller than the image is clipped to it (torchvision instead retries ten
    times, then falls back to a centre crop). With ``rotation`` > 0 the box also turns by an
    angle uniform in ``[-rotation, rotation]`` degrees (edges replicated). One
    ``affine_grid`` and one bilinear ``grid_sample`` for the whole batch.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Float images.
    scale : tuple of float
        Range of the box's area as a fraction of the image.
    ratio : tuple of float
        Range of the box's aspect ratio (width / height).
    flip : bool
        Also flip horizontally with probability 0.5.
    generator : torch.Generator, optional
        On ``images``' device.
    rotation : float, default=0
        Largest rotation of the box, in degrees.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        The crops, resized to the input size.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import random_resized_crop
    >>> images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> random_resized_crop(images, (0.2, 1.0), (3 / 4, 4 / 3), flip=True).shape
    torch.Size([2, 3, 32, 32])
    """
    n, device = images.shape[0], images.device
    area = uniform(n, *scale, generator, device)                                   # (N,)
    log_ratio = uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)                                  # fraction
    height = (area / aspect).sqrt().clamp(max=1.0)
    # Box centres in normalised coordinates ([-1, 1]), keeping the box inside the image.
    centre_x = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - height)
    if flip:
        sign = torch.where(_bernoulli(n, 0.5, generator, device), -1.0, 1.0)
    else:
        sign = torch.ones(n, device=device)
    if rotation > 0:
        angle = uniform(n, -rotation, rotation, generator, device) * (math.pi / 180.0)
    else:
        angle = torch.zeros(n, device=device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output -> input coordinates: scale to the box (and mirror), rotate, move to its centre.
    matrix = torch.stack([
        torch.stack([cos * width * sign, -sin * height, centre_x], dim=1),
        torch.stack([sin * width * sign, cos * height, centre_y], dim=1),
    ], dim=1)                                                                      # (N, 2, 3)
    grid = F.affine_grid(matrix.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)                                      # (N, C, H, W)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma of RGB images.

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W)
        RGB images.

    Returns
    -------
    Tensor of shape (N, 1, H, W)
        ``0.299 R + 0.587 G + 0.114 B``.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import grayscale
    >>> grayscale(torch.ones(1, 3, 2, 2)).shape
    torch.Size([1, 1, 2, 2])
    """
    r, g, b = images.unbind(dim=-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def rgb_to_hsv(images: Tensor, eps: float = 1e-8) -> Tensor:
    """Convert RGB images in [0, 1] to HSV, with hue in [0, 1) turns.

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W)
        RGB values in [0, 1].
    eps : float, default=1e-8
        Guards the divisions for grey pixels.

    Returns
    -------
    Tensor of shape (N, 3, H, W)
        Hue, saturation and value channels.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import rgb_to_hsv
    >>> red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    >>> rgb_to_hsv(red).flatten()
    tensor([0., 1., 1.])
    """
    r, g, b = images.unbind(dim=-3)                                                # (N, H, W)
    value, argmax = images.max(dim=-3)
    delta = value - images.min(dim=-3).values
    saturation = delta / value.clamp_min(eps)
    safe = delta.clamp_min(eps)
    hue = torch.where(argmax == 0, (g - b) / safe,
                      torch.where(argmax == 1, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(delta > eps, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Convert HSV images back to RGB (the inverse of :func:`rgb_to_hsv`).

    Parameters
    ----------
    hsv : Tensor of shape (N, 3, H, W)
        Hue in turns, saturation and value, each in [0, 1].

    Returns
    -------
    Tensor of shape (N, 3, H, W)
        RGB values in [0, 1].

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import hsv_to_rgb, rgb_to_hsv
    >>> rgb = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)
    True
    """
    hue, saturation, value = hsv.unbind(dim=-3)                                    # (N, H, W)
    sector = hue * 6.0
    index = sector.floor()
    frac = sector - index
    index = index.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * frac)
    t = value * (1 - saturation * (1 - frac))
    # Rows: r, g, b for each of the six hue sectors.
    choices = torch.stack([
        torch.stack([value, q, p, p, t, value]),
        torch.stack([t, value, value, q, p, p]),
        torch.stack([p, p, t, value, value, q]),
    ])                                                                             # (3, 6, N, H, W)
    index = index.expand(3, 1, *index.shape)                                       # (3, 1, N, H, W)
    return choices.gather(1, index)[:, 0].movedim(0, -3)                           # (N, 3, H, W)


def color_jitter(images: Tensor, strengths: tuple[float, float, float, float],
                 p: float, generator: torch.Generator | None = None) -> Tensor:
    """Brightness, contrast, saturation and hue jitter of images in [0, 1], per image.

    Applied with probability ``p`` to each image, in a fixed order (torchvision shuffles the
    order per call). Saturation and hue are skipped for single-channel images.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Images with values in [0, 1].
    strengths : tuple of float
        Brightness, contrast, saturation and hue strengths; factors are uniform in
        ``[1 - s, 1 + s]``, the hue shift in ``[-h, h]`` turns.
    p : float
        Probability of jittering each image.
    generator : torch.Generator, optional
        On ``images``' device.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        Jittered images in [0, 1].

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import color_jitter
    >>> images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> out = color_jitter(images, (0.4, 0.4, 0.4, 0.1), p=0.0)     # p=0: unchanged
    >>> torch.equal(out, images)
    True
    """
    n, channels, device = images.shape[0], images.shape[1], images.device
    brightness, contrast, saturation, hue = strengths
    apply = _per_sample(_bernoulli(n, p, generator, device))                       # (N, 1, 1, 1)
    out = images
    if brightness > 0:
        factor = uniform(n, 1 - brightness, 1 + brightness, generator, device)
        out = (out * _per_sample(factor)).clamp(0, 1)
    if contrast > 0:
        factor = _per_sample(uniform(n, 1 - contrast, 1 + contrast, generator, device))
        grey = grayscale(out) if channels == 3 else out
        mean = grey.mean(dim=(-3, -2, -1), keepdim=True)                           # (N, 1, 1, 1)
        out = ((out - mean) * factor + mean).clamp(0, 1)
    if channels == 3 and saturation > 0:
        factor = _per_sample(uniform(n, 1 - saturation, 1 + saturation, generator, device))
        grey = grayscale(out)                                                      # (N, 1, H, W)
        out = ((out - grey) * factor + grey).clamp(0, 1)
    if channels == 3 and hue > 0:
        shift = uniform(n, -hue, hue, generator, device)[:, None, None]           # (N, 1, 1)
        hsv = rgb_to_hsv(out)
        hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1)
        out = hsv_to_rgb(hsv)
    return torch.where(apply, out, images)


def random_grayscale(images: Tensor, p: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Turn each colour image grey (all three channels) with probability ``p``.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Images; those without three channels are returned unchanged.
    p : float
        Probability per image.
    generator : torch.Generator, optional
        On ``images``' device.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        Images, some of them grey.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import random_grayscale
    >>> out = random_grayscale(torch.rand(2, 3, 4, 4), p=1.0)
    >>> torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    True
    """
    if images.shape[1] != 3:
        return images
    apply = _per_sample(_bernoulli(images.shape[0], p, generator, images.device))
    return torch.where(apply, grayscale(images).expand_as(images), images)


def random_gaussian_blur(images: Tensor, kernel_size: int, sigma: tuple[float, float],
                         p: float, generator: torch.Generator | None = None) -> Tensor:
    """Blur each image with probability ``p`` by its own Gaussian (separable, reflect pad).

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        Float images.
    kernel_size : int
        Odd width of the kernel.
    sigma : tuple of float
        Range of each image's standard deviation, in pixels.
    p : float
        Probability per image.
    generator : torch.Generator, optional
        On ``images``' device.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        Images, some of them blurred.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import random_gaussian_blur
    >>> flat = torch.full((2, 3, 16, 16), 0.3)
    >>> torch.allclose(random_gaussian_blur(flat, 9, (0.1, 2.0), p=1.0), flat)  # nothing to blur
    True
    """
    n, c, h, w = images.shape
    device = images.device
    apply = _per_sample(_bernoulli(n, p, generator, device))
    std = uniform(n, *sigma, generator, device)                                    # (N,)
    offsets = torch.arange(kernel_size, device=device) - (kernel_size - 1) / 2     # (k,)
    kernel = torch.exp(-0.5 * (offsets[None, :] / std[:, None]) ** 2)               # (N, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(images.dtype)
    kernel = kernel.repeat_interleave(c, dim=0)                                    # (N*C, k)
    pad = kernel_size // 2
    # One grouped convolution per axis: every (image, channel) plane has its own kernel.
    planes = images.reshape(1, n * c, h, w)
    planes = F.pad(planes, (pad, pad, 0, 0), mode="reflect" if w > pad else "replicate")
    planes = F.conv2d(planes, kernel[:, None, None, :], groups=n * c)
    planes = F.pad(planes, (0, 0, pad, pad), mode="reflect" if h > pad else "replicate")
    planes = F.conv2d(planes, kernel[:, None, :, None], groups=n * c)
    return torch.where(apply, planes.reshape(n, c, h, w), images)


def contrastive_view(images: Tensor, config: ContrastiveAugmentation,
                     value_range: tuple[float, float],
                     generator: torch.Generator | None = None) -> Tensor:
    """One random view of each image (or feature vector) for a contrastive objective.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W) or (N, d)
        Batch on any device; flat features only get the additive noise.
    config : ContrastiveAugmentation
        What to apply.
    value_range : tuple of float
        The data's smallest and largest value; colour operations work on the range mapped
        to [0, 1] and the result is mapped back.
    generator : torch.Generator, optional
        On ``images``' device; every random factor is drawn per sample from it.

    Returns
    -------
    Tensor
        Same shape and dtype as ``images``.

    Examples
    --------
    >>> import torch
    >>> from skdccm.augment import CONTRASTIVE_PRESETS, contrastive_view
    >>> images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> gen = torch.Generator().manual_seed(1)
    >>> view1 = contrastive_view(images, CONTRASTIVE_PRESETS["cifar"], (0.0, 1.0), gen)
    >>> view2 = contrastive_view(images, CONTRASTIVE_PRESETS["cifar"], (0.0, 1.0), gen)
    >>> view1.shape, torch.equal(view1, view2)      # two different views of each image
    (torch.Size([4, 3, 32, 32]), False)
    """
    if images.dim() != 4:
        if config.noise <= 0:
            return images
        spread = images.std(dim=0, keepdim=True) if images.shape[0] > 1 else torch.ones_like(
            images[:1])
        noise = torch.randn(images.shape, generator=generator, device=images.device,
                            dtype=images.dtype)
        return images + config.noise * spread * noise
    low, high = value_range
    width = (high - low) if high > low else 1.0
    view = (images - low) / width                                                  # [0, 1]
    view = random_resized_crop(view, config.crop_scale, config.crop_ratio, config.flip,
                               generator, config.rotation)
    if config.jitter_p > 0 and any(s > 0 for s in config.jitter):
        view = color_jitter(view, config.jitter, config.jitter_p, generator)
    if config.grayscale_p > 0:
        view = random_grayscale(view, config.grayscale_p, generator)
    if config.blur_p > 0:
        view = random_gaussian_blur(view, config.blur_kernel, config.blur_sigma,
                                    config.blur_p, generator)
    if config.noise > 0:
        view = view + config.noise * view.std() * torch.randn(
            view.shape, generator=generator, device=view.device, dtype=view.dtype)
    return view * width + low
