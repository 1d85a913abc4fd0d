"""Tests of the DCCM part of skdccm.augment: batched affine views with per-image draws."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from skdccm.augment import (
    AFFINE_PRESETS,
    AffineAugmentation,
    affine_matrices,
    dccm_view,
    random_affine,
    random_channel_shift,
    resolve_affine,
)

#: No rotation, shift, zoom, flip, channel shift or scaling: the identity transform.
IDENTITY = AffineAugmentation(rotation=0.0, shift=0.0, zoom=(1.0, 1.0), channel_shift=0.0,
                              flip=False, multiply=1.0)


@pytest.fixture
def images(digits):
    """16 distinct digit images, (16, 1, 8, 8) float32 in [0, 1]."""
    return torch.from_numpy(digits[0][:16].astype(np.float32) / 255.0)[:, None]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_transform(images: torch.Tensor, angle=0.0, zoom=1.0, shift_x=0.0, shift_y=0.0,
                  flip=1.0, mode="nearest") -> torch.Tensor:
    """Apply one fixed affine map to every image, through the module's matrix builder."""
    n = images.shape[0]
    full = torch.full((n,), 1.0)
    matrix = affine_matrices(full * angle, full * zoom, full * zoom, full * shift_x,
                             full * shift_y, full * flip)
    grid = torch.nn.functional.affine_grid(matrix, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode=mode, padding_mode="border",
                                           align_corners=False)


# ---------------------------------------------------------------------------------------
# shapes, dtypes, randomness
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 3, 32, 32), (2, 3, 12, 20)])
def test_views_keep_shape_and_dtype(shape, dtype):
    x = torch.rand(shape, generator=gen(), dtype=dtype)
    for config in (AFFINE_PRESETS["cifar"], AFFINE_PRESETS["digits"], AFFINE_PRESETS["mild"]):
        out = random_affine(x, config, gen(1))
        assert out.shape == x.shape and out.dtype == dtype
        view = dccm_view(x, config, (0.0, 1.0), gen(1))
        assert view.shape == x.shape and view.dtype == dtype
        assert torch.isfinite(view).all()


def test_every_image_gets_its_own_transform(images):
    same = images[:1].repeat(12, 1, 1, 1)                      # 12 copies of one digit
    out = random_affine(same, AFFINE_PRESETS["digits"], gen())
    flat = out.flatten(1)
    distinct = {tuple(np.round(row.numpy(), 5)) for row in flat}
    assert len(distinct) == 12


def test_same_generator_seed_gives_same_views(images):
    config = AFFINE_PRESETS["cifar"]
    a = dccm_view(images, config, (0.0, 1.0), gen(3))
    b = dccm_view(images, config, (0.0, 1.0), gen(3))
    c = dccm_view(images, config, (0.0, 1.0), gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_torch_rng_is_not_used(images):
    state = torch.get_rng_state()
    dccm_view(images, AFFINE_PRESETS["cifar"], (0.0, 1.0), gen())
    assert torch.equal(torch.get_rng_state(), state)


def test_input_is_not_modified(images):
    before = images.clone()
    dccm_view(images, AFFINE_PRESETS["cifar"], (0.0, 1.0), gen())
    assert torch.equal(images, before)


# ---------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_zero_ranges_give_the_identity(images, interpolation):
    config = replace(IDENTITY, interpolation=interpolation)
    torch.testing.assert_close(random_affine(images, config, gen()), images, atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(dccm_view(images, config, (0.0, 1.0), gen()), images,
                               atol=1e-5, rtol=0)


def test_flip_really_flips_about_half_the_images(images):
    batch = images.repeat(4, 1, 1, 1)                          # 64 images
    out = random_affine(batch, replace(IDENTITY, flip=True), gen(5))
    mirrored = torch.flip(batch, dims=[-1])
    is_same = (out - batch).flatten(1).abs().amax(1) < 1e-5
    is_flipped = (out - mirrored).flatten(1).abs().amax(1) < 1e-5
    symmetric = (batch - mirrored).flatten(1).abs().amax(1) < 1e-5
    assert not symmetric.any()                                 # digits are not mirror images
    assert (is_same | is_flipped).all()
    assert 16 <= int(is_flipped.sum()) <= 48


def test_digits_preset_never_flips(images):
    config = AFFINE_PRESETS["digits"]
    assert config.flip is False
    # Only the flip left random: every view must equal its input.
    frozen = replace(config, rotation=0.0, shift=0.0, zoom=(1.0, 1.0))
    batch = images.repeat(8, 1, 1, 1)
    torch.testing.assert_close(random_affine(batch, frozen, gen(6)), batch, atol=1e-5,
                               rtol=0)
    assert resolve_affine("auto", (1, 28, 28)).flip is False


def test_rotation_by_90_degrees_is_a_quarter_turn(images):
    out = one_transform(images, angle=90.0)
    quarter = [torch.rot90(images, k, dims=(-2, -1)) for k in (1, -1)]
    assert any(torch.allclose(out, q, atol=1e-5) for q in quarter)


def test_shift_moves_content_by_a_fraction_of_the_size(images):
    out = one_transform(images, shift_x=0.25)                  # 2 of 8 pixels
    left = torch.cat([images[..., 2:], images[..., -1:].expand(-1, -1, -1, 2)], dim=-1)
    right = torch.cat([images[..., :1].expand(-1, -1, -1, 2), images[..., :-2]], dim=-1)
    assert torch.allclose(out, left, atol=1e-5) or torch.allclose(out, right, atol=1e-5)
    down = one_transform(images, shift_y=0.25)
    assert torch.allclose(down.transpose(-1, -2),
                          one_transform(images.transpose(-1, -2), shift_x=0.25), atol=1e-5)


def test_zoom_factor_two_magnifies_the_centre(images):
    out = one_transform(images, zoom=2.0)
    centre = torch.tensor([2, 2, 3, 3, 4, 4, 5, 5])           # each central pixel twice
    torch.testing.assert_close(out, images[..., centre, :][..., centre], atol=1e-5, rtol=0)


def test_affine_matrices_shape_and_values():
    n = 3
    angle = torch.tensor([0.0, 30.0, -45.0])
    ones = torch.ones(n)
    m = affine_matrices(angle, ones * 2.0, ones, ones * 0.1, ones * -0.2, -ones)
    assert m.shape == (n, 2, 3)
    theta = math.radians(30.0)
    expected = torch.tensor([[-math.cos(theta) / 2, -math.sin(theta) / 2, 0.2],
                             [-math.sin(theta), math.cos(theta), -0.4]])
    torch.testing.assert_close(m[1], expected)


# ---------------------------------------------------------------------------------------
# intensities
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.0, 16.0), (-1.0, 1.0)])
def test_channel_shift_stays_in_range_and_is_constant_per_channel(value_range):
    low, high = value_range
    x = torch.rand(20, 3, 6, 6, generator=gen(7), dtype=torch.float64) * (high - low) + low
    out = random_channel_shift(x, 0.2, value_range, gen(8))
    assert out.min() >= low and out.max() <= high
    delta = out - x
    for i in range(20):
        for c in range(3):
            unclipped = (out[i, c] > low) & (out[i, c] < high)
            shifts = delta[i, c][unclipped]
            assert shifts.numel() > 0
            assert float(shifts.max() - shifts.min()) < 1e-9       # one shift per channel
            assert float(shifts.abs().max()) <= 0.2 * (high - low) + 1e-9
    per_channel = torch.stack([delta[i, c][(out[i, c] > low) & (out[i, c] < high)][0]
                               for i in range(20) for c in range(3)])
    assert len(set(np.round(per_channel.numpy(), 9))) == 60          # drawn per image and channel


def test_multiply_is_applied_last(images):
    config = replace(IDENTITY, multiply=0.95)
    torch.testing.assert_close(dccm_view(images, config, (0.0, 1.0), gen()), images * 0.95,
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------
# presets and resolve_affine
# ---------------------------------------------------------------------------------------


def test_released_cifar_and_mild_settings():
    cifar, mild = AFFINE_PRESETS["cifar"], AFFINE_PRESETS["mild"]
    assert (cifar.rotation, cifar.shift, cifar.zoom, cifar.channel_shift, cifar.flip,
            cifar.multiply, cifar.interpolation) == (20.0, 0.18, (0.85, 1.15), 0.1, True,
                                                     0.95, "nearest")
    assert (mild.rotation, mild.shift, mild.zoom, mild.channel_shift, mild.multiply) == (
        10.0, 0.1, (0.95, 1.05), 0.05, 0.975)


@pytest.mark.parametrize(("shape", "expected"), [
    ((64,), None),
    ((1, 8, 8), "digits"),
    ((1, 28, 28), "digits"),
    ((1, 96, 96), "digits"),
    ((3, 32, 32), "cifar"),
    ((3, 63, 63), "cifar"),
    ((3, 64, 64), "mild"),
    ((3, 96, 96), "mild"),
    ((4, 32, 32), "cifar"),
])
def test_resolve_affine_auto(shape, expected):
    got = resolve_affine("auto", shape)
    assert got is (None if expected is None else AFFINE_PRESETS[expected])


def test_resolve_affine_names_instances_and_none():
    custom = AffineAugmentation(rotation=5.0)
    assert resolve_affine(custom, (3, 32, 32)) is custom
    assert resolve_affine(None, (3, 32, 32)) is None
    assert resolve_affine("none", (3, 32, 32)) is None
    assert resolve_affine("none", (10,)) is None
    for name in ("cifar", "mild", "digits"):
        assert resolve_affine(name, (1, 16, 16)) is AFFINE_PRESETS[name]


def test_resolve_affine_errors():
    with pytest.raises(ValueError, match=r"unknown augmentation 'color'.*'cifar'.*'digits'"):
        resolve_affine("color", (3, 32, 32))
    with pytest.raises(ValueError, match="needs images"):
        resolve_affine("cifar", (64,))


@pytest.mark.parametrize("shape, photographic, affine, contrastive", [
    ((1, 32, 32), None, "digits", "digits"),    # grey: the digits' defaults
    ((1, 32, 32), True, "cifar", "cifar"),      # grey given the defaults for photographs
    ((1, 96, 96), True, "mild", "large"),
    ((3, 32, 32), None, "cifar", "cifar"),      # colour: photographs
    ((3, 32, 32), False, "digits", "digits"),
])
def test_auto_views_follow_the_defaults_for_photographs(shape, photographic, affine,
                                                        contrastive):
    from skdccm.augment import (
        AFFINE_PRESETS,
        CONTRASTIVE_PRESETS,
        resolve_affine,
        resolve_contrastive,
    )

    assert resolve_affine("auto", shape, photographic) is AFFINE_PRESETS[affine]
    assert resolve_contrastive("auto", shape, photographic) is CONTRASTIVE_PRESETS[contrastive]
