"""Backbones, clustering heads and the mutual-information discriminator.

Every backbone maps ``(N, C, H, W)`` images (or ``(N, d)`` features) to a pair
``(shallow, features)``: ``shallow`` is an early feature map ``(N, C_s, h, w)`` (DCCM's
"shallow layer feature", used by the mutual-information loss) and ``features`` the pooled
vector ``(N, F)`` that the heads read.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import is_photographic


class DCCMOutput(NamedTuple):
    """What the DCCM network returns for a batch of N samples."""

    shallow: Tensor      # (N, C_s, h, w) first pooled feature map
    embedding: Tensor    # (N, E) the vector that feeds the last linear layer (``transform``)
    deep: Tensor         # (N, K) last linear layer, before its BatchNorm (DCCM's deep feature)
    logits: Tensor       # (N, K) BatchNorm of ``deep``; softmax gives the cluster probabilities


def conv_bn_relu(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU: the unit of the paper's shallow AlexNet.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels before and after.
    padding : int
        0 as in the released code, 1 for small images.

    Returns
    -------
    torch.nn.Sequential
        The three layers (the convolution has no bias: BatchNorm follows).

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import conv_bn_relu
    >>> conv_bn_relu(3, 64, padding=0)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 64, 30, 30])
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ShallowAlexNet(nn.Module):
    """The CNN of DCCM's released CIFAR code, sized to the input.

    conv 3x3 C->64, conv 64->64, max-pool 2 (the shallow map), conv 64->128, max-pool 2,
    conv 128->256, global average pool (the released code's 4x4 average pool at 32x32).
    The released network uses unpadded convolutions; below 24 pixels they would shrink the
    map to nothing, so small images (8x8 and 16x16 digits) use padding 1.

    Parameters
    ----------
    in_channels : int
        Image channels.
    image_size : tuple of int
        ``(H, W)``; decides the padding.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        if min(image_size) < 4:
            raise ValueError(f"images of {image_size} pixels are too small for the CNN (min 4)")
        pad = 0 if min(image_size) >= 24 else 1
        self.shallow = nn.Sequential(
            conv_bn_relu(in_channels, 64, pad),
            conv_bn_relu(64, 64, pad),
            nn.MaxPool2d(2),
        )
        self.deep = nn.Sequential(
            conv_bn_relu(64, 128, pad),
            nn.MaxPool2d(2, ceil_mode=True),
            conv_bn_relu(128, 256, pad),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shallow = self.shallow(x)                            # (N, 64, h, w)
        return shallow, self.deep(shallow)                   # (N, 256)


#: Channels of ``"small"``'s four units for grey images, and for colour images: twice as
#: wide, since colour photographs need more filters than strokes do. On a CIFAR-10 subset
#: (5,000 images, 2 CPU cores) the colour widths train an epoch in 6 s where the shallow
#: AlexNet (``"conv"``, as many parameters) takes 23 s; DCCM's default with a warm start
#: reached ACC 0.321 in 5 minutes with them against 0.290 with ``"conv"`` (seed 0).
SMALL_CNN_WIDTHS = (16, 32, 64, 128)
SMALL_CNN_COLOUR_WIDTHS = (32, 64, 128, 256)


class SmallCNN(nn.Module):
    """A light CNN for small images: four padded conv-BN-ReLU units, max-pooling between.

    conv C->16, max-pool 2 (the shallow map), conv 16->32, max-pool 2, conv 32->64,
    max-pool 2, conv 64->128, global average pool (``"small"`` doubles the widths for
    colour images: ``SMALL_CNN_COLOUR_WIDTHS``). On 28x28 images it needs about a tenth of
    the shallow AlexNet's multiply-adds per image, and with DCCM's default preset it
    clustered MNIST better (BENCHMARKS.md).

    Parameters
    ----------
    in_channels : int, default=1
        Image channels.
    widths : tuple of int, default=(16, 32, 64, 128)
        Channels of the four units; the last is the feature vector's width.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import SmallCNN
    >>> shallow, features = SmallCNN()(torch.zeros(2, 1, 28, 28))
    >>> shallow.shape, features.shape
    (torch.Size([2, 16, 14, 14]), torch.Size([2, 128]))
    """

    def __init__(self, in_channels: int = 1,
                 widths: tuple[int, int, int, int] = SMALL_CNN_WIDTHS) -> None:
        super().__init__()
        a, b, c, d = widths
        self.shallow = nn.Sequential(conv_bn_relu(in_channels, a, 1), nn.MaxPool2d(2))
        # ceil_mode keeps odd maps (7x7 at 28 pixels) from losing their last row and column.
        self.deep = nn.Sequential(
            conv_bn_relu(a, b, 1), nn.MaxPool2d(2, ceil_mode=True),
            conv_bn_relu(b, c, 1), nn.MaxPool2d(2, ceil_mode=True),
            conv_bn_relu(c, d, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shallow = self.shallow(x)                            # (N, 16, H/2, W/2)
        return shallow, self.deep(shallow)                   # (N, 128)


class MLP(nn.Module):
    """Backbone for flat features: two Linear-BN-ReLU layers.

    The first hidden layer, seen as a ``(N, hidden[0], 1, 1)`` map, is the shallow feature.

    Parameters
    ----------
    n_features : int
        Input width d.
    hidden : tuple of int, default=(512, 256)
        Widths of the two layers; the second is the feature vector's width.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import MLP
    >>> shallow, features = MLP(64)(torch.zeros(4, 64))
    >>> shallow.shape, features.shape
    (torch.Size([4, 512, 1, 1]), torch.Size([4, 256]))
    """

    def __init__(self, n_features: int, hidden: tuple[int, int] = (512, 256)) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(n_features, hidden[0]), nn.BatchNorm1d(hidden[0]),
                                   nn.ReLU(inplace=True))
        self.second = nn.Sequential(nn.Linear(hidden[0], hidden[1]), nn.BatchNorm1d(hidden[1]),
                                    nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.first(x.flatten(1))                         # (N, 512)
        return h[:, :, None, None], self.second(h)           # (N, 512, 1, 1), (N, 256)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and a shortcut).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels before and after.
    stride : int
        Stride of the first convolution (2 halves the resolution); the shortcut then
        becomes a strided 1x1 convolution with BatchNorm.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import BasicBlock
    >>> BasicBlock(64, 128, stride=2)(torch.zeros(2, 64, 16, 16)).shape
    torch.Size([2, 128, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class ResNet(nn.Module):
    """ResNet-18/34 with the CIFAR stem (3x3 convolution, stride 1, no max-pool).

    The ImageNet stem (7x7 stride 2 and a max-pool) throws away three quarters of a 32x32
    image's resolution. The output of ``layer1`` is the shallow map; the pooled 512-d vector
    of ``layer4`` is the feature.

    Parameters
    ----------
    in_channels : int
        Image channels.
    blocks : tuple of int
        Basic blocks per stage: ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)`` for
        ResNet-34 (``RESNET_LAYERS``).

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import RESNET_LAYERS, ResNet
    >>> shallow, features = ResNet(3, RESNET_LAYERS["resnet18"])(torch.zeros(2, 3, 32, 32))
    >>> shallow.shape, features.shape
    (torch.Size([2, 64, 32, 32]), torch.Size([2, 512]))
    """

    def __init__(self, in_channels: int, blocks: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        widths = (64, 128, 256, 512)
        layers, in_width = [], 64
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_width, width, stride)]
            stage += [BasicBlock(width, width, 1) for _ in range(count - 1)]
            layers.append(nn.Sequential(*stage))
            in_width = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)  # each block starts as the identity

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shallow = self.layer1(self.stem(x))                  # (N, 64, H, W)
        h = self.layer4(self.layer3(self.layer2(shallow)))   # (N, 512, H/8, W/8)
        return shallow, torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)   # (N, 512)


def build_backbone(name: str, sample_shape: tuple[int, ...],
                   photographic: bool | None = None) -> nn.Module:
    """Build a named backbone for samples of ``sample_shape``.

    Parameters
    ----------
    name : {"auto", "conv", "small", "mlp", "resnet18", "resnet34"}
        ``"auto"``: ``"conv"`` for images, ``"mlp"`` for flat features.
    sample_shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for flat features.
    photographic : bool or None, default=None
        Whether the images take the defaults for photographs: the colour widths of
        ``"small"``. None: colour images do.

    Returns
    -------
    torch.nn.Module
        Maps a batch to ``(shallow map, feature vector)``.

    Examples
    --------
    >>> from skdccm.networks import build_backbone
    >>> type(build_backbone("auto", (1, 28, 28))).__name__
    'ShallowAlexNet'
    >>> type(build_backbone("auto", (64,))).__name__
    'MLP'
    """
    is_image = len(sample_shape) == 3
    if name == "auto":
        name = "conv" if is_image else "mlp"
    if name == "mlp":
        return MLP(int(torch.tensor(sample_shape).prod()))
    if not is_image:
        raise ValueError(
            f"backbone={name!r} needs images; X holds flat features of shape {sample_shape}. "
            "Pass image_shape=(C, H, W) for flattened images or use backbone='mlp'"
        )
    if name == "conv":
        return ShallowAlexNet(sample_shape[0], sample_shape[1:])
    if name == "small":
        widths = (SMALL_CNN_COLOUR_WIDTHS if is_photographic(sample_shape, photographic)
                  else SMALL_CNN_WIDTHS)
        return SmallCNN(sample_shape[0], widths)
    if name in RESNET_LAYERS:
        return ResNet(sample_shape[0], RESNET_LAYERS[name])
    raise ValueError(
        f"unknown backbone {name!r}; choose one of 'auto', 'conv', 'small', 'mlp', "
        "'resnet18', 'resnet34', or pass a torch.nn.Module class or instance"
    )


def init_identity_(layer: nn.Linear) -> None:
    """DCCM's initialisation of linear layers: ones on the diagonal, zero bias.

    Parameters
    ----------
    layer : torch.nn.Linear
        Initialised in place.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import init_identity_
    >>> layer = torch.nn.Linear(3, 2)
    >>> init_identity_(layer)
    >>> layer.weight
    Parameter containing:
    tensor([[1., 0., 0.],
            [0., 1., 0.]], requires_grad=True)
    """
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)


class DCCMNetwork(nn.Module):
    """Backbone plus DCCM's head: Linear F->E + BN + ReLU, Linear E->K, BN over the K logits.

    Parameters
    ----------
    backbone : nn.Module
        Returns ``(shallow map, feature vector)``.
    n_features : int
        Width F of the backbone's feature vector.
    n_clusters : int
        K.
    embedding_dim : int, default=64
        Width E of the embedding returned by ``transform``.
    """

    def __init__(
        self, backbone: nn.Module, n_features: int, n_clusters: int, embedding_dim: int = 64
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Sequential(
            nn.Linear(n_features, embedding_dim), nn.BatchNorm1d(embedding_dim),
            nn.ReLU(inplace=True),
        )
        self.cluster = nn.Linear(embedding_dim, n_clusters)
        self.cluster_norm = nn.BatchNorm1d(n_clusters)
        init_identity_(self.embed[0])
        init_identity_(self.cluster)

    def forward(self, x: Tensor) -> DCCMOutput:
        shallow, features = self.backbone(x)                 # (N, C_s, h, w), (N, F)
        embedding = self.embed(features)                     # (N, E)
        deep = self.cluster(embedding)                       # (N, K)
        return DCCMOutput(shallow, embedding, deep, self.cluster_norm(deep))


class MIDiscriminator(nn.Module):
    """Deep InfoMax's local discriminator T(shallow, deep): three 1x1 convolutions.

    The deep vector is repeated over the shallow map's positions and concatenated on
    channels: ``(C_s + K) -> 512 -> 512 -> 1`` with ReLU between, one score per position.
    A 1x1 convolution is a linear map over channels at each position; it is written as
    ``nn.Linear`` on channels-last features, which runs as one plain matrix product.

    Parameters
    ----------
    shallow_channels : int
        C_s, channels of the shallow map.
    deep_features : int
        K, width of the deep vector.
    hidden : int, default=512
        Width of the two hidden layers.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import MIDiscriminator
    >>> disc = MIDiscriminator(shallow_channels=64, deep_features=10)
    >>> disc(torch.zeros(5, 64, 14, 14), torch.zeros(5, 10)).shape   # one score per position
    torch.Size([5, 196])
    """

    def __init__(self, shallow_channels: int, deep_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(shallow_channels + deep_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        """Scores of P (map, vector) pairs: ``(P, C_s, h, w)``, ``(P, K)`` -> ``(P, h*w)``."""
        p, _, h, w = shallow.shape
        positions = shallow.permute(0, 2, 3, 1).reshape(p, h * w, -1)      # (P, h*w, C_s)
        tiled = deep[:, None, :].expand(p, h * w, deep.shape[1])           # (P, h*w, K)
        # 2-D input to the Linear layers: on a 3-D view the in-place ReLU makes autograd copy
        # the whole activation back in backward (measured 1.25x slower per DCCM step).
        pairs = torch.cat([positions, tiled], dim=2).reshape(p * h * w, -1)  # (P*h*w, C_s+K)
        return self.net(pairs).view(p, h * w)                                # (P, h*w)


def init_kaiming_(module: nn.Module) -> None:
    """Kaiming-normal convolutions and unit BatchNorm, as in DCCM's released code.

    Parameters
    ----------
    module : torch.nn.Module
        Every ``Conv2d`` and affine BatchNorm in it is initialised in place.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import conv_bn_relu, init_kaiming_
    >>> block = conv_bn_relu(3, 8, padding=1)
    >>> init_kaiming_(block)
    >>> bool((block[1].weight == 1).all()), bool((block[1].bias == 0).all())
    (True, True)
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def use_batch_statistics(module: nn.Module) -> None:
    """Make every BatchNorm normalise with batch statistics, in training and prediction.

    This is DCCM's released code (``track_running_stats=False``); predictions then depend on
    the batch they are computed in, so predict in large batches.

    Parameters
    ----------
    module : torch.nn.Module
        Changed in place; its running statistics are dropped.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import use_batch_statistics
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    >>> use_batch_statistics(net)
    >>> net[1].running_mean is None
    True
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


def infer_output_shapes(backbone: nn.Module, sample_shape: tuple[int, ...]) -> tuple[int, int]:
    """Find the channels of the shallow map and the width of the feature vector.

    The backbone runs once on a copy (so that BatchNorm statistics stay untouched) with two
    zero samples, which also checks that it returns the pair skdccm needs.

    Parameters
    ----------
    backbone : torch.nn.Module
        Should map ``(N, *sample_shape)`` to ``(shallow (N, C, h, w), features (N, F))``.
    sample_shape : tuple of int
        Shape of one sample.

    Returns
    -------
    shallow_channels : int
        C.
    n_features : int
        F.

    Examples
    --------
    >>> from skdccm.networks import build_backbone, infer_output_shapes
    >>> infer_output_shapes(build_backbone("conv", (3, 32, 32)), (3, 32, 32))
    (64, 256)
    """
    probe = copy.deepcopy(backbone).train()  # a copy: the dry run must not touch BN statistics
    with torch.no_grad():
        output = probe(torch.zeros(2, *sample_shape))
    expected = ("a custom backbone must return a pair (shallow map of shape (N, C, h, w), "
                "feature vector of shape (N, F))")
    if (not isinstance(output, tuple | list) or len(output) != 2
            or not all(isinstance(t, Tensor) for t in output)):
        got = (f"a {type(output).__name__} of {len(output)}" if isinstance(output, tuple | list)
               else f"a {type(output).__name__}")
        raise ValueError(f"{expected}; got {got}")
    shallow, features = output
    if shallow.dim() != 4 or features.dim() != 2 or len(shallow) != 2 or len(features) != 2:
        raise ValueError(
            f"{expected}; got shapes {tuple(shallow.shape)} and {tuple(features.shape)} for "
            "N=2"
        )
    return int(shallow.shape[1]), int(features.shape[1])


def make_backbone(spec: Any, params: dict | None, sample_shape: tuple[int, ...],
                  photographic: bool | None = None) -> nn.Module:
    """Make a backbone from a name, an ``nn.Module`` class (with ``params``) or an instance.

    An instance is deep-copied: the user's module is never trained in place.

    Parameters
    ----------
    spec : str, type or torch.nn.Module
        A name for :func:`build_backbone`, a module class, or a module instance.
    params : dict or None
        Keyword arguments for a class.
    sample_shape : tuple of int
        Shape of one sample (used for names).
    photographic : bool or None, default=None
        Passed to :func:`build_backbone` for names.

    Returns
    -------
    torch.nn.Module
        A new module.

    Examples
    --------
    >>> import torch
    >>> from skdccm.networks import MLP, make_backbone
    >>> mine = MLP(64)
    >>> make_backbone(mine, None, (64,)) is mine
    False
    >>> type(make_backbone(MLP, {"n_features": 64, "hidden": (32, 16)}, (64,))).__name__
    'MLP'
    """
    if isinstance(spec, str):
        return build_backbone(spec, sample_shape, photographic)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec(**(params or {}))
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    raise TypeError(f"backbone must be a name, an nn.Module class or instance; got {spec!r}")


# ----------------------------------------------------------------------------------------
# CRLC network (Do et al., ICCV 2021): a backbone, a representation head, H clustering heads
# ----------------------------------------------------------------------------------------


class CRLCOutput(NamedTuple):
    """What the CRLC network returns for a batch of N samples."""

    features: Tensor     # (N, F) backbone feature h (``transform``)
    projection: Tensor   # (N, P) representation head output z, L2-normalised
    logits: Tensor       # (H, N, K) logits of every clustering sub-head


class ClusteringHeads(nn.Module):
    """H independent sub-heads Linear F->D, ReLU, Linear D->K, evaluated as batched matmuls.

    The weights of all sub-heads are stacked (``(H, F, D)`` and ``(H, D, K)``) so that the ten
    heads cost two batched matrix products instead of twenty small ones. Each sub-head is
    initialised like ``nn.Linear``.

    Parameters
    ----------
    n_features : int
        F.
    n_clusters : int
        K.
    n_heads : int
        H.
    hidden : int, default=512
        D.
    """

    def __init__(self, n_features: int, n_clusters: int, n_heads: int,
                 hidden: int = 512) -> None:
        super().__init__()
        self.hidden_weight = nn.Parameter(torch.empty(n_heads, n_features, hidden))
        self.hidden_bias = nn.Parameter(torch.empty(n_heads, 1, hidden))
        self.out_weight = nn.Parameter(torch.empty(n_heads, hidden, n_clusters))
        self.out_bias = nn.Parameter(torch.empty(n_heads, 1, n_clusters))
        for weight, bias, fan_in in ((self.hidden_weight, self.hidden_bias, n_features),
                                     (self.out_weight, self.out_bias, hidden)):
            bound = 1.0 / fan_in ** 0.5  # nn.Linear's default: U(-1/sqrt(fan_in), ...)
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    @property
    def n_heads(self) -> int:
        return int(self.hidden_weight.shape[0])

    def forward(self, h: Tensor) -> Tensor:
        return torch.baddbmm(self.out_bias, self.hidden(h), self.out_weight)          # (H, N, K)

    def hidden(self, h: Tensor) -> Tensor:
        """Every sub-head's hidden layer ``(H, N, D)``: the input of its output layer."""
        return torch.relu(torch.matmul(h, self.hidden_weight) + self.hidden_bias)

    def set_output(self, head: int, weight: Tensor, bias: Tensor) -> None:
        """Make sub-head ``head``'s logits ``hidden @ weight.T + bias`` (weight ``(K, D)``)."""
        with torch.no_grad():
            self.out_weight[head].copy_(weight.T)
            self.out_bias[head].copy_(bias[None])

    def permute_clusters(self, head: int, order: Tensor) -> None:
        """Make output j of sub-head ``head`` what output ``order[j]`` was."""
        with torch.no_grad():
            self.out_weight[head].copy_(self.out_weight[head][:, order])
            self.out_bias[head].copy_(self.out_bias[head][:, order])


class CRLCNetwork(nn.Module):
    """Backbone plus CRLC's two heads (paper: "representation" and "clustering").

    Representation head: Linear F->D, ReLU, Linear D->P, L2 normalisation. Clustering head:
    H sub-heads Linear F->D, ReLU, Linear D->K (:class:`ClusteringHeads`).

    Parameters
    ----------
    backbone : nn.Module
        Returns ``(shallow map, feature vector)``; only the vector is used.
    n_features : int
        Width F of the backbone's feature vector.
    n_clusters : int
        K.
    n_heads : int, default=10
        H.
    hidden : int, default=512
        Width D of both heads' hidden layer.
    projection_dim : int, default=128
        Width P of the representation head's output.
    freeze_backbone : bool, default=False
        Keep the backbone fixed: no gradient, and BatchNorm in eval mode even when the
        network trains (its running statistics stay as loaded).
    """

    def __init__(self, backbone: nn.Module, n_features: int, n_clusters: int,
                 n_heads: int = 10, hidden: int = 512, projection_dim: int = 128,
                 freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, projection_dim))
        self.heads = ClusteringHeads(n_features, n_clusters, n_heads, hidden)
        self.freeze_backbone = False
        self.set_backbone_frozen(freeze_backbone)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the backbone's parameters and BatchNorm statistics."""
        self.freeze_backbone = frozen
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> CRLCNetwork:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> CRLCOutput:
        if self.freeze_backbone:
            with torch.no_grad():
                features = self.backbone(x)[1]               # (N, F)
        else:
            features = self.backbone(x)[1]                   # (N, F)
        projection = F.normalize(self.projector(features), dim=1)   # (N, P)
        return CRLCOutput(features, projection, self.heads(features))  # logits (H, N, K)
