"""Tests of skdccm.networks: backbones, DCCM's head, the MI discriminator, custom modules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from skdccm.networks import (
    DCCMNetwork,
    MIDiscriminator,
    ResNet,
    ShallowAlexNet,
    SmallCNN,
    build_backbone,
    infer_output_shapes,
    init_kaiming_,
    make_backbone,
    use_batch_statistics,
)


def network(sample_shape, n_clusters=7):
    backbone = build_backbone("auto", sample_shape)
    _, n_features = infer_output_shapes(backbone, sample_shape)
    return DCCMNetwork(backbone, n_features, n_clusters)


@pytest.mark.parametrize(("sample_shape", "shallow_hw"), [
    ((1, 8, 8), (4, 4)),        # padded convolutions below 24 pixels
    ((1, 16, 16), (8, 8)),
    ((1, 28, 28), (12, 12)),    # unpadded: 28 -> 26 -> 24 -> pool 12
    ((1, 32, 32), (14, 14)),
    ((3, 32, 32), (14, 14)),    # the released CIFAR network: 64 x 14 x 14
    ((3, 28, 28), (12, 12)),
    ((3, 16, 16), (8, 8)),
    ((3, 96, 96), (46, 46)),
    ((1, 96, 96), (46, 46)),
])
def test_conv_network_output_shapes(sample_shape, shallow_hw):
    net = network(sample_shape)
    assert isinstance(net.backbone, ShallowAlexNet)
    out = net(torch.rand(3, *sample_shape, generator=torch.Generator().manual_seed(0)))
    assert out.shallow.shape == (3, 64, *shallow_hw)
    assert out.embedding.shape == (3, 64)
    assert out.deep.shape == (3, 7)
    assert out.logits.shape == (3, 7)
    assert all(torch.isfinite(t).all() for t in out)


def test_flat_features_use_an_mlp():
    net = network((20,), n_clusters=3)
    out = net(torch.rand(5, 20, generator=torch.Generator().manual_seed(0)))
    assert out.shallow.shape == (5, 512, 1, 1)
    assert out.embedding.shape == (5, 64)
    assert out.logits.shape == (5, 3)


def test_images_too_small_for_the_cnn():
    with pytest.raises(ValueError, match="too small"):
        build_backbone("conv", (1, 3, 3))


def test_head_linear_layers_start_as_identity():
    net = network((1, 8, 8), n_clusters=10)
    embed, cluster = net.embed[0], net.cluster
    assert torch.equal(embed.weight, torch.eye(64, 256))
    assert torch.equal(cluster.weight, torch.eye(10, 64))
    assert torch.equal(embed.bias, torch.zeros(64))
    assert torch.equal(cluster.bias, torch.zeros(10))


def test_deep_feature_is_the_linear_output_before_its_batchnorm():
    net = network((1, 8, 8), n_clusters=5).eval()
    out = net(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(out.deep, net.cluster(out.embedding))
    torch.testing.assert_close(out.logits, net.cluster_norm(out.deep))


def test_kaiming_init_of_convolutions_and_unit_batchnorm():
    backbone = build_backbone("conv", (3, 32, 32))
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 3.0)
    init_kaiming_(backbone)
    conv = backbone.deep[2][0]                                  # conv 128 -> 256, 3x3
    fan_out = conv.out_channels * 9
    assert abs(float(conv.weight.detach().std()) / math.sqrt(2.0 / fan_out) - 1) < 0.05
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_use_batch_statistics_makes_eval_use_batch_statistics():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 3 + 1
    plain = network((1, 8, 8))
    assert not torch.allclose(plain.eval()(x).logits, plain.train()(x).logits, atol=1e-3)

    net = network((1, 8, 8))
    use_batch_statistics(net)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.running_mean is None and not m.track_running_stats for m in bns)
    train_out = net.train()(x).logits
    eval_out = net.eval()(x).logits
    torch.testing.assert_close(eval_out, train_out)
    # ... so an image's output depends on the batch it is predicted in.
    assert not torch.allclose(net(x[:4]).logits, eval_out[:4], atol=1e-4)


@pytest.mark.parametrize(("name", "n_params"), [
    # CIFAR-stem ResNets without the final classifier (11,173,962 and 21,282,122 with a
    # 10-way one, as usually quoted).
    ("resnet18", 11_168_832),
    ("resnet34", 21_276_992),
])
def test_resnet_shapes_and_size(name, n_params):
    backbone = build_backbone(name, (3, 32, 32))
    assert isinstance(backbone, ResNet)
    assert sum(p.numel() for p in backbone.parameters()) == n_params
    shallow, features = backbone(torch.rand(2, 3, 32, 32, generator=torch.Generator()
                                            .manual_seed(0)))
    assert shallow.shape == (2, 64, 32, 32)    # CIFAR stem: no stride, no max-pool
    assert features.shape == (2, 512)


def test_resnet_on_grey_images():
    shallow, features = build_backbone("resnet18", (1, 16, 16))(torch.rand(2, 1, 16, 16))
    assert shallow.shape == (2, 64, 16, 16) and features.shape == (2, 512)


@pytest.mark.parametrize(("size", "shallow_side", "channels"), [(28, 14, 1), (16, 8, 1),
                                                                  (8, 4, 1), (9, 4, 3)])
def test_small_cnn_shapes_and_size(size, shallow_side, channels):
    backbone = build_backbone("small", (channels, size, size))
    assert isinstance(backbone, SmallCNN)
    # Four 3x3 convolutions without bias (BatchNorm follows) and four BatchNorms; colour
    # images get twice the width.
    widths = (channels, 16, 32, 64, 128) if channels == 1 else (channels, 32, 64, 128, 256)
    n_params = sum(9 * a * b + 2 * b for a, b in itertools.pairwise(widths))
    assert sum(p.numel() for p in backbone.parameters()) == n_params
    shallow, features = backbone(torch.rand(2, channels, size, size))
    assert shallow.shape == (2, widths[1], shallow_side, shallow_side)
    assert features.shape == (2, widths[-1])


def test_mi_discriminator_shape_and_locality():
    disc = MIDiscriminator(64, 10)
    assert sum(p.numel() for p in disc.parameters()) == (74 * 512 + 512) + (512 * 512 + 512) \
        + (512 + 1)
    gen = torch.Generator().manual_seed(3)
    shallow, deep = torch.rand(6, 64, 3, 5, generator=gen), torch.rand(6, 10, generator=gen)
    scores = disc(shallow, deep)
    assert scores.shape == (6, 15)
    # A 1x1 discriminator scores each position alone: moving positions moves scores.
    moved = disc(shallow.flip(-1), deep)
    torch.testing.assert_close(moved.reshape(6, 3, 5), scores.reshape(6, 3, 5).flip(-1))
    # and each pair's score depends on its own deep vector only.
    swapped = disc(shallow, deep.flip(0))
    assert not torch.allclose(swapped, scores)
    torch.testing.assert_close(disc(shallow[:2], deep[:2]), scores[:2])


def test_build_backbone_errors():
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg'.*'resnet18'"):
        build_backbone("vgg", (3, 32, 32))
    with pytest.raises(ValueError, match=r"needs images.*image_shape"):
        build_backbone("conv", (64,))
    with pytest.raises(TypeError, match="backbone must be"):
        make_backbone(3, None, (1, 8, 8))


def test_infer_output_shapes_leaves_the_backbone_untouched():
    backbone = build_backbone("conv", (1, 8, 8))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert infer_output_shapes(backbone, (1, 8, 8)) == (64, 256)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_make_backbone_copies_instances_and_builds_classes():
    instance = TinyBackbone()
    copied = make_backbone(instance, None, (1, 8, 8))
    assert copied is not instance
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(),
                                                 instance.state_dict().values(), strict=True))
    built = make_backbone(TinyBackbone, {"width": 5}, (1, 8, 8))
    assert built.conv.out_channels == 5


# ---------------------------------------------------------------------------------------
# custom backbones through the estimator
# ---------------------------------------------------------------------------------------


class TinyBackbone(nn.Module):
    """A user module returning (shallow map, feature vector)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        shallow = self.pool(torch.relu(self.conv(x)))           # (N, width, 4, 4)
        return shallow, shallow.mean(dim=(2, 3))               # (N, width)


class VectorOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 16)

    def forward(self, x):
        return self.linear(x.flatten(1))                       # no shallow map


class FlatShallow(TinyBackbone):
    def forward(self, x):
        shallow, features = super().forward(x)
        return shallow.flatten(1), features                    # shallow is not a map


@pytest.mark.parametrize("backbone", [TinyBackbone, TinyBackbone(width=6)])
def test_custom_backbone_through_the_estimator(make_dccm, digit_images, backbone):
    est = make_dccm(backbone=backbone, backbone_params={"width": 4} if isinstance(
        backbone, type) else None).fit(digit_images[:64])
    width = 4 if isinstance(backbone, type) else 6
    assert isinstance(est.module_.backbone, TinyBackbone)
    assert est.module_.backbone.conv.out_channels == width
    assert est.predict_proba(digit_images[:5]).shape == (5, 4)
    assert est.transform(digit_images[:5]).shape == (5, 64)


@pytest.mark.parametrize(("backbone", "match"), [
    (VectorOnly, r"must return a pair.*got a Tensor"),
    (FlatShallow, r"must return a pair.*got shapes \(2, 128\) and \(2, 8\)"),
])
def test_bad_custom_backbone_output_raises_a_clear_error(make_dccm, digit_images, backbone,
                                                        match):
    with pytest.raises(ValueError, match=match):
        make_dccm(backbone=backbone).fit(digit_images[:64])


def test_custom_backbone_instance_is_not_trained_in_place(make_dccm, digit_images):
    user = TinyBackbone()
    before = {k: v.clone() for k, v in user.state_dict().items()}
    est = make_dccm(backbone=user).fit(digit_images[:64])
    assert all(torch.equal(before[k], v) for k, v in user.state_dict().items())
    trained = est.module_.backbone.state_dict()
    assert est.module_.backbone is not user
    assert not all(torch.equal(before[k], trained[k]) for k in before)
    assert user.training  # not even switched to eval mode
    assert np.isfinite(est.predict_proba(digit_images[:3])).all()


def test_small_cnn_widths_follow_the_defaults_for_photographs():
    from skdccm.networks import SMALL_CNN_COLOUR_WIDTHS, SMALL_CNN_WIDTHS, build_backbone

    def first_width(**kwargs):
        net = build_backbone("small", kwargs.pop("shape"), **kwargs)
        return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).out_channels

    assert first_width(shape=(1, 32, 32)) == SMALL_CNN_WIDTHS[0]
    assert first_width(shape=(1, 32, 32), photographic=True) == SMALL_CNN_COLOUR_WIDTHS[0]
    assert first_width(shape=(3, 32, 32)) == SMALL_CNN_COLOUR_WIDTHS[0]
