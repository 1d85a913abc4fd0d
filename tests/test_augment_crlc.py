"""CRLC's two-view augmentation: shapes, per-sample draws, determinism, ranges, digit safety."""

from __future__ import annotations

import colorsys
from dataclasses import replace

import numpy as np
import pytest
import torch

from skdccm.augment import (
    CONTRASTIVE_PRESETS,
    ContrastiveAugmentation,
    color_jitter,
    contrastive_view,
    hsv_to_rgb,
    random_gaussian_blur,
    random_grayscale,
    random_resized_crop,
    resolve_contrastive,
    rgb_to_hsv,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _colour_images(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=_gen(seed))


@pytest.mark.parametrize("shape,name", [
    ((8, 1, 8, 8), "auto"), ((8, 3, 32, 32), "cifar"), ((4, 3, 64, 64), "large"),
    ((8, 20), "features"),
])
def test_view_keeps_shape_and_dtype(shape, name):
    images = torch.rand(*shape, generator=_gen())
    config = resolve_contrastive(name, shape[1:])
    view = contrastive_view(images, config, (0.0, 1.0), _gen(1))
    assert view.shape == images.shape
    assert view.dtype == images.dtype
    assert not torch.equal(view, images)


def test_each_sample_gets_its_own_draw():
    one = _colour_images(1)
    batch = one.expand(12, -1, -1, -1).contiguous()
    view = contrastive_view(batch, CONTRASTIVE_PRESETS["cifar"], (0.0, 1.0), _gen())
    flat = view.flatten(1)
    distinct = {tuple(np.round(row.numpy(), 5)) for row in flat}
    assert len(distinct) == 12


def test_seeded_generator_gives_identical_views_and_other_seeds_differ():
    images = _colour_images()
    config = CONTRASTIVE_PRESETS["large"]
    first = contrastive_view(images, config, (0.0, 1.0), _gen(3))
    again = contrastive_view(images, config, (0.0, 1.0), _gen(3))
    other = contrastive_view(images, config, (0.0, 1.0), _gen(4))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (0.0, 16.0), (-1.0, 1.0)])
def test_views_stay_in_the_data_range(low, high):
    images = _colour_images() * (high - low) + low
    for name in ("cifar", "large"):
        view = contrastive_view(images, CONTRASTIVE_PRESETS[name], (low, high), _gen())
        assert view.min().item() >= low - 1e-5
        assert view.max().item() <= high + 1e-5
    grey = images[:, :1]
    view = contrastive_view(grey, resolve_contrastive("auto", (1, 32, 32)), (low, high), _gen())
    assert view.min().item() >= low - 1e-5
    assert view.max().item() <= high + 1e-5


def test_grey_images_get_digit_safe_views():
    config = resolve_contrastive("auto", (1, 28, 28))
    assert config.flip is False
    assert config.grayscale_p == 0.0
    assert config.jitter[2:] == (0.0, 0.0)     # no saturation or hue for grey images
    assert resolve_contrastive("auto", (3, 32, 32)).flip is True
    assert resolve_contrastive("auto", (3, 96, 96)).blur_p == 0.5
    assert resolve_contrastive("auto", (3, 32, 32)).blur_p == 0.0
    assert resolve_contrastive("auto", (64,)).noise > 0


def test_digit_view_never_mirrors():
    # A left-heavy image: with full-size crops and no rotation or jitter, the digit view
    # equals the image (never its mirror), whatever the draws.
    image = torch.zeros(1, 1, 8, 8)
    image[..., :, 1] = 1.0
    batch = image.expand(64, -1, -1, -1)
    config = replace(CONTRASTIVE_PRESETS["digits"], crop_scale=(1.0, 1.0),
                     crop_ratio=(1.0, 1.0), rotation=0.0, jitter_p=0.0)
    view = contrastive_view(batch, config, (0.0, 1.0), _gen())
    torch.testing.assert_close(view, batch, rtol=0, atol=1e-5)


def test_flip_mirrors_about_half_of_the_images():
    images = _colour_images(64, 8)
    view = random_resized_crop(images, (1.0, 1.0), (1.0, 1.0), True, _gen())
    same = (view - images).abs().flatten(1).amax(1) < 1e-5
    mirrored = (view - images.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same | mirrored).all())
    assert 16 <= int(mirrored.sum()) <= 48


def test_resized_crop_zooms_by_the_box_size():
    # A horizontal ramp I[j] = j: a crop of width fraction w resized to the full width has
    # slope w per pixel (bilinear sampling is exact on a linear ramp).
    ramp = torch.arange(16.0).expand(6, 1, 16, 16).contiguous()
    view = random_resized_crop(ramp, (0.25, 0.25), (1.0, 1.0), False, _gen())
    slopes = view[:, 0, :, 2:14].diff(dim=-1)
    torch.testing.assert_close(slopes, torch.full_like(slopes, 0.5), rtol=0, atol=1e-4)
    # Each image has its own box: the crops start at different places.
    assert len({round(float(v), 4) for v in view[:, 0, 0, 0]}) == 6


def test_rotated_crop_turns_each_image_within_the_limit():
    # On a horizontal ramp I[i, j] = j, a full-size box turned by theta gives, away from the
    # borders, a horizontal step of cos(theta) and a vertical step of -sin(theta) per pixel.
    ramp = torch.arange(16.0).expand(32, 1, 16, 16).contiguous()
    view = random_resized_crop(ramp, (1.0, 1.0), (1.0, 1.0), False, _gen(), rotation=30.0)
    centre = view[:, 0, 6:10, 6:10]
    step_x = centre.diff(dim=-1).mean(dim=(-2, -1))
    step_y = centre.diff(dim=-2).mean(dim=(-2, -1))
    angle = torch.rad2deg(torch.atan2(-step_y, step_x))
    torch.testing.assert_close(step_x ** 2 + step_y ** 2, torch.ones(32), rtol=0, atol=1e-3)
    assert angle.abs().max().item() <= 30.0 + 1e-3
    assert angle.max().item() - angle.min().item() > 20.0    # one angle per image
    unturned = random_resized_crop(ramp, (1.0, 1.0), (1.0, 1.0), False, _gen())
    torch.testing.assert_close(unturned, ramp, rtol=0, atol=1e-4)


def test_hsv_round_trip_matches_colorsys():
    rgb = _colour_images(2, 4)
    hsv = rgb_to_hsv(rgb)
    for n, i, j in [(0, 0, 0), (1, 2, 3), (0, 3, 1)]:
        expected = colorsys.rgb_to_hsv(*rgb[n, :, i, j].double().tolist())
        np.testing.assert_allclose(hsv[n, :, i, j].numpy(), expected, atol=1e-5)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb, rtol=0, atol=1e-5)


def test_brightness_scales_each_image_by_its_own_factor():
    images = _colour_images(8) * 0.5            # no clipping for factors up to 1.4 + margin
    out = color_jitter(images, (0.4, 0.0, 0.0, 0.0), p=1.0, generator=_gen())
    ratio = (out / images.clamp_min(1e-6)).flatten(1)
    factors = ratio[:, 0]
    torch.testing.assert_close(ratio, factors[:, None].expand_as(ratio), rtol=1e-4, atol=1e-4)
    assert bool(((factors >= 0.6) & (factors <= 1.4)).all())
    assert len({round(float(f), 4) for f in factors}) == 8


def test_jitter_with_p_zero_is_identity_and_hue_keeps_grey_pixels():
    images = _colour_images()
    torch.testing.assert_close(color_jitter(images, (0.4, 0.4, 0.4, 0.1), 0.0, _gen()), images)
    grey = images[:, :1].expand(-1, 3, -1, -1)
    out = color_jitter(grey, (0.0, 0.0, 0.0, 0.5), 1.0, _gen())
    torch.testing.assert_close(out, grey, rtol=0, atol=1e-5)


def test_grayscale_all_or_nothing():
    images = _colour_images()
    grey = random_grayscale(images, 1.0, _gen())
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    torch.testing.assert_close(grey[:, 0], grey[:, 2])
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    torch.testing.assert_close(grey[:, 0], expected)
    torch.testing.assert_close(random_grayscale(images, 0.0, _gen()), images)
    single = images[:, :1]
    assert random_grayscale(single, 1.0, _gen()) is single


def test_blur_preserves_constants_and_smooths_noise():
    constant = torch.full((4, 3, 16, 16), 0.3)
    torch.testing.assert_close(random_gaussian_blur(constant, 9, (0.1, 2.0), 1.0, _gen()),
                               constant)
    noise = _colour_images(4, 16)
    blurred = random_gaussian_blur(noise, 9, (1.5, 2.0), 1.0, _gen())
    assert blurred.std().item() < 0.6 * noise.std().item()
    sharp = random_gaussian_blur(noise, 9, (0.1, 0.1), 1.0, _gen())
    torch.testing.assert_close(sharp, noise, rtol=0, atol=1e-4)
    torch.testing.assert_close(random_gaussian_blur(noise, 9, (1.0, 2.0), 0.0, _gen()), noise)


def test_feature_noise_scales_with_each_feature():
    x = torch.randn(2000, 3, generator=_gen()) * torch.tensor([1.0, 10.0, 100.0])
    config = CONTRASTIVE_PRESETS["features"]
    delta = contrastive_view(x, config, (0.0, 1.0), _gen(1)) - x
    np.testing.assert_allclose(delta.std(0).numpy() / x.std(0).numpy(), config.noise,
                               rtol=0.1)


def test_unknown_or_misplaced_settings_raise():
    with pytest.raises(ValueError, match="unknown augmentation 'blurry'"):
        resolve_contrastive("blurry", (3, 32, 32))
    with pytest.raises(ValueError, match="needs images"):
        resolve_contrastive("cifar", (64,))
    custom = ContrastiveAugmentation(flip=False)
    assert resolve_contrastive(custom, (3, 8, 8)) is custom
    assert resolve_contrastive("none", (3, 8, 8)) is None
