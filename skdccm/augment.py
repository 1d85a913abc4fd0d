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
    name: str | AffineAugmentation | None, sample_shape: tuple[int, ...]
) -> AffineAugmentation | None:
    """Pick the augmentation for ``name`` (or ``"auto"``) and samples of ``sample_shape``.

    ``"auto"``: none for flat features, ``"digits"`` for grey images, ``"mild"`` for colour
    images of 64 pixels or more, ``"cifar"`` otherwise.
    """
    if name is None or isinstance(name, AffineAugmentation):
        return name
    if name == "auto":
        if len(sample_shape) != 3:
            return None
        channels, height, width = sample_shape
        if channels == 1:
            return AFFINE_PRESETS["digits"]
        return AFFINE_PRESETS["mild" if min(height, width) >= 64 else "cifar"]
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
    """``n`` draws from U(low, high) on ``device``."""
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def affine_matrices(angle_deg: Tensor, zoom_x: Tensor, zoom_y: Tensor, shift_x: Tensor,
                    shift_y: Tensor, flip: Tensor) -> Tensor:
    """Per-sample 2x3 matrices mapping output to input coordinates for ``affine_grid``.

    Shifts are fractions of the image size (normalised coordinates span 2); ``flip`` is
    +1 or -1 on the x axis. Shapes: all inputs (N,), output (N, 2, 3).
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

    ``max_shift`` is a fraction of the range's width.
    """
    n, c = images.shape[:2]
    low, high = value_range
    width = high - low
    shift = (torch.rand(n, c, 1, 1, generator=generator, device=images.device) * 2 - 1)
    return (images + shift * (max_shift * width)).clamp_(low, high)


def dccm_view(images: Tensor, config: AffineAugmentation, value_range: tuple[float, float],
              generator: torch.Generator | None = None) -> Tensor:
    """One augmented view for DCCM: affine, channel shift, then the constant factor."""
    view = random_affine(images, config, generator)
    if config.channel_shift > 0:
        view = random_channel_shift(view, config.channel_shift, value_range, generator)
    if config.multiply != 1.0:
        view = view * config.multiply
    return view
