"""CRLCClustering: Clustering by maximising mutual information across views (Do et al., ICCV 2021).

One backbone, two heads. The representation head is trained with the NT-Xent loss between
two augmented views of each image (feature contrastive, FC); the clustering head's H
sub-heads are trained with an InfoNCE loss between the views' cluster probabilities whose
critic is the log of their dot product (probability contrastive, PC), plus the entropy of
the batch-marginal cluster distribution and a bound on the logits. After training, the
sub-head with the lowest PC loss on the training data predicts; no label is ever used.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .augment import ContrastiveAugmentation, resolve_contrastive
from .base import DeepClusteringBase, _as_list, check_pretrain_epochs
from .budget import TimeBudget
from .data import ArraySource, InputLayout, is_photographic, shuffled_batches
from .distributed import SINGLE_PROCESS, Collective
from .losses import (
    logit_bound_penalty,
    nt_xent_loss,
    probability_contrastive_loss,
    two_view_marginal_entropy,
)
from .networks import (
    CRLCNetwork,
    ResNet,
    infer_output_shapes,
    init_kaiming_,
    make_backbone,
)
from .pretraining import TwoViewObjective
from .training import StepResult, TrainResult, TrainSpec, train
from .validation import check_int

#: ``min_steps="auto"`` (the default preset): at least this many optimiser steps per cluster
#: when ``max_iter`` is not given, so that small data sets with many clusters get more
#: epochs (ORL, 400 faces of 40 people: 4 steps an epoch at batch size 128).
MIN_STEPS_PER_CLUSTER = 50

#: ``n_neighbors="auto"``: no neighbours when the mean cluster size is above this. CRLC takes
#: a neighbour's view as a positive in both of its losses; with 500 and more images a cluster
#: (MNIST 5k, USPS) 20 neighbours cost it 0.03-0.04 of mean ACC over 3 seeds, while they lift
#: the sets with up to 180 (digits, COIL-20, ORL). 300 lies between the two.
NEIGHBOUR_MAX_CLUSTER_SIZE = 300

_PAPER = {
    "backbone": "resnet34", "n_heads": 10, "hidden_dim": 512, "max_iter": 2000, "batch_size": 512,
    "optimizer": "sgd", "learning_rate": 0.1, "lr_schedule": "constant",
    "weight_decay": 5e-4, "temperature": 0.1, "fc_weight": 10.0, "pc_weight": 1.0,
    "entropy_weight": 2.0, "logit_bound": 25.0, "logit_weight": 0.01, "smoothing": 0.01,
    "pretrain_epochs": 0, "n_neighbors": 0, "min_steps": 0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The released code's settings for CIFAR (DESIGN.md section 4).
    "paper": _PAPER,
    # A practical budget: a small network sized to the input ("auto"), Adam with a cosine
    # schedule, smaller batches (more steps) and far fewer epochs. The network's heads, the
    # losses and their weights are the paper's.
    "default": {**_PAPER, "backbone": "auto", "max_iter": 60, "batch_size": 128,
                "optimizer": "adam", "learning_rate": 2e-3, "lr_schedule": "cosine",
                "weight_decay": 0.0, "n_neighbors": "auto",
                "min_steps": "auto", "pretrain_epochs": "auto"},
}

#: The default preset's epochs for colour images (60 for the rest). The step from 40 to 60
#: was measured on grey images; with 40 a fit of 5,000 CIFAR-10 images and its warm start
#: takes about 8 minutes on 2 CPU cores (ACC 0.301 +- 0.002 over seeds 0-2), inside the
#: 10-minute budget that 60 would exceed.
COLOUR_MAX_ITER = 40

#: Seed of the augmented views used to choose the sub-head after training: fixed, so that
#: the choice depends on the trained network only.
HEAD_SELECTION_SEED = 0


#: Images smaller than this on a side get the MLP under ``backbone="auto"``. Chosen for the
#: network, apart from ``data.PHOTO_MIN_SIDE`` (the rule for grey photographs), which happens
#: to share the value.
SMALL_IMAGE = 16

#: Grey images up to this many pixels a side (digits, characters) get the MLP too.
GREY_MLP_MAX_SIDE = 32


def resolve_backbone(spec: Any, sample_shape: tuple[int, ...],
                     photographic: bool | None = None) -> Any:
    """``"auto"``: an MLP for flat features, images under 16 pixels a side and grey images
    up to 32 pixels a side; the small CNN for other images, and for grey ones that take the
    defaults for photographs (``photographic``).

    On scikit-learn's 8x8 digits the shallow AlexNet (``"conv"``) learned far less per
    second than an MLP on the 64 pixels (same settings otherwise: ACC 0.56 after 20 epochs,
    against 0.84 after 40 epochs that took half the time). On MNIST 5k (28x28, 2 CPU
    cores) the MLP reaches ACC 0.927 in 40 epochs (about 100 s per fit, seeds 0 to 2);
    the CNNs take 2 (``"small"``) to 13 (``"conv"``) times longer per epoch, and the small
    CNN reached 0.666 in 40 epochs (seed 0; ``benchmarks/crlc_mnist_sweep.py``). On a
    5,000-image CIFAR-10 subset the small CNN (colour widths) trains an epoch four times
    faster than the shallow AlexNet: a default fit with its warm start takes about 8
    minutes (ACC 0.300, 0.299, 0.304 for seeds 0 to 2) where the shallow AlexNet took 15
    minutes without one (0.327, seed 0), and in 5 minutes both reached 0.28.

    Grey photographs with few a cluster (:func:`skdccm.data.grey_photographs`) take every
    default of colour images, this network with them: on COIL-20 (seeds 0-2, one thread of
    an AVX2 EPYC) ACC 0.826 / 0.837 / 0.853 against the grey defaults' 0.781 / 0.765 /
    0.769 (with the MLP), at about 15 minutes a fit instead of 2.

    Parameters
    ----------
    spec : str, nn.Module class or instance
        The ``backbone`` parameter; anything but ``"auto"`` is returned unchanged.
    sample_shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for flat features.
    photographic : bool or None
        Whether the images take the defaults for photographs
        (``InputLayout.photographic``); None: colour images do.

    Returns
    -------
    str, nn.Module class or instance
        ``"mlp"`` or ``"small"`` for ``"auto"``, else ``spec``.

    Examples
    --------
    >>> from skdccm.crlc import resolve_backbone
    >>> [resolve_backbone("auto", shape) for shape in [(1, 8, 8), (1, 28, 28), (1, 64, 64),
    ...                                                  (3, 32, 32)]]
    ['mlp', 'mlp', 'small', 'small']
    >>> resolve_backbone("auto", (1, 32, 32), photographic=True)
    'small'
    """
    if not (isinstance(spec, str) and spec == "auto"):
        return spec
    if len(sample_shape) != 3:
        return "mlp"
    _, height, width = sample_shape
    if min(height, width) < SMALL_IMAGE or (
            not is_photographic(sample_shape, photographic)
            and max(height, width) <= GREY_MLP_MAX_SIDE):
        return "mlp"
    return "small"


class CRLCObjective(TwoViewObjective):
    """CRLC's loss on two augmented views of a minibatch.

    ``fc_weight * L_FC + mean over sub-heads of (pc_weight * L_PC - entropy_weight * H
    + logit_weight * (P_lo + P_hi))``, with the paper's weights 10, 1, 2 and 0.01.

    Parameters
    ----------
    n_clusters : int
        K.
    n_heads : int
        H, the number of clustering sub-heads.
    augmentation : ContrastiveAugmentation or None
        How each view is drawn; None gives two identical views.
    value_range : tuple of float
        The data's value range (colour operations are relative to it).
    temperature : float
        NT-Xent temperature of the FC loss.
    fc_weight, pc_weight, entropy_weight, logit_weight : float
        Weights of the loss terms.
    logit_bound : float
        Logits beyond ``+-logit_bound`` are penalised quadratically.
    smoothing : float
        Uniform mixture weight of the PC loss's smoothed probabilities.
    clustering : bool, default=True
        False trains the representation head only (stage 1 of the two-stage variant).
    """

    def __init__(self, *, n_clusters: int, n_heads: int,
                 augmentation: ContrastiveAugmentation | None,
                 value_range: tuple[float, float], temperature: float, fc_weight: float,
                 pc_weight: float, entropy_weight: float, logit_weight: float,
                 logit_bound: float, smoothing: float, clustering: bool = True) -> None:
        super().__init__()
        self.n_clusters = n_clusters if clustering else 0
        self.augmentation = augmentation
        self.value_range = value_range
        self.temperature = temperature
        self.fc_weight = fc_weight
        self.pc_weight = pc_weight
        self.entropy_weight = entropy_weight
        self.logit_weight = logit_weight
        self.logit_bound = logit_bound
        self.smoothing = smoothing
        self.clustering = clustering
        # Running PC loss of each sub-head: the one with the lowest gives the labels logged
        # in the history during training (the final choice is made after training).
        self.register_buffer("head_pc_running", torch.full((n_heads,), float("nan")))

    def views(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """Two independent views stacked view by view: ``(2n, ...)``."""
        return torch.cat([self.view(images, generator) for _ in range(2)])

    def batchnorm_input(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The two augmented views: CRLC trains on nothing else, so BatchNorm statistics of
        clean images would not match the trained network (on MNIST 5k they cost a fitted
        sub-head 0.04 ACC, and the label-free choice of sub-head its agreement with ACC)."""
        return self.views(images, generator)

    def step(self, module: nn.Module, images: Tensor, targets: None, index: Tensor,
             generator: torch.Generator, collective: Collective = SINGLE_PROCESS,
             partners: Tensor | None = None) -> StepResult:
        """CRLC's loss on one minibatch of n images (2n rows).

        ``partners``: each image or one of its nearest neighbours (``n_neighbors``); the
        second view is then drawn from the partner, so both the FC and the PC loss treat
        a neighbour as the positive (as NNCLR and SCAN do in a learned feature space).

        Data-parallel: ``images`` are this rank's part of the minibatch; projections and
        logits of both views are gathered (with gradient), so the contrastive negatives and
        the batch-marginal entropy are those of the whole minibatch.
        """
        view_generator = collective.augmentation_generator(generator)
        if partners is None:
            out = module(self.views(images, view_generator))
        else:
            out = module(torch.cat([self.view(images, view_generator),
                                    self.view(partners, view_generator)]))
        projection = collective.gather(out.projection.float(), groups=2)  # (2n, P)
        n = projection.shape[0] // 2
        z1, z2 = projection.split(n)                                      # (n, P) each
        fc = nt_xent_loss(z1, z2, self.temperature)
        parts = {"fc": fc.detach()}
        loss = self.fc_weight * fc
        if not self.clustering:
            return StepResult(loss, parts)

        logits = collective.gather(out.logits.float().transpose(0, 1),
                                   groups=2).transpose(0, 1)              # (H, 2n, K)
        probs = logits.softmax(dim=-1)
        p1, p2 = probs[:, :n], probs[:, n:]                               # (H, n, K) each
        pc = probability_contrastive_loss(p1, p2, self.smoothing)         # (H,)
        entropy = two_view_marginal_entropy(p1, p2)                       # (H,)
        lower, upper = logit_bound_penalty(logits, self.logit_bound)      # (H,), (H,)
        per_head = (self.pc_weight * pc - self.entropy_weight * entropy
                    + self.logit_weight * (lower + upper))                # (H,)
        loss = loss + per_head.mean()

        with torch.no_grad():
            running = self.head_pc_running
            running.copy_(torch.where(running.isnan(), pc, 0.9 * running + 0.1 * pc))
            # index_select, not int(argmin): no host-device sync per step on a GPU.
            best = p1.index_select(0, running.argmin().reshape(1))[0]     # (n, K)
            labels = collective.local_part(best.argmax(dim=1))            # (m,)
        parts.update({"pc": pc.mean().detach(), "pc_min": pc.min().detach(),
                      "entropy": entropy.mean().detach(),
                      "logit_penalty": (lower + upper).mean().detach()})
        return StepResult(loss, parts, labels)


def head_losses(module: CRLCNetwork, objective: CRLCObjective, source: ArraySource,
                batch_size: int, seed: int = HEAD_SELECTION_SEED,
                collective: Collective = SINGLE_PROCESS) -> Tensor:
    """Mean PC loss of every sub-head over the data, on seeded augmented view pairs.

    Un-augmented pairs would be identical and say nothing about consistency across views,
    so each batch of ``batch_size`` images gets two views drawn from a generator seeded with
    ``seed``. The batches are random (seeded too), as in training: the PC loss contrasts
    each image with the rest of its batch, and over data stored in class order consecutive
    batches would hold a single class, a setting in which the sub-heads that split classes
    score best. Runs in eval mode without gradient.

    Parameters
    ----------
    module : CRLCNetwork
        The trained network.
    objective : CRLCObjective
        Draws the views and holds the PC loss's smoothing.
    source : ArraySource
        The training data.
    batch_size : int
        Images per batch (each gives two views).
    seed : int, default=HEAD_SELECTION_SEED
        Seed of the views, fixed so that the choice depends on the network only.
    collective : Collective
        Data-parallel: ``source`` is this rank's shard and the means are averaged over
        ranks (equal shards), so every rank chooses the same sub-head.

    Returns
    -------
    Tensor of shape (H,)
        Mean PC loss of each sub-head, on CPU, float64.
    """
    generator = torch.Generator(device=source.device).manual_seed(seed)
    n = len(source)
    totals = torch.zeros(module.heads.n_heads, dtype=torch.float64)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for index in shuffled_batches(n, batch_size, seed):
            images = source.gather(index)                                 # (b, C, H, W)
            b = images.shape[0]
            probs = module(objective.views(images, generator)).logits.float().softmax(-1)
            pc = probability_contrastive_loss(probs[:, :b], probs[:, b:],
                                              objective.smoothing)        # (H,)
            totals += pc.double().cpu() * b
    module.train(was_training)
    return collective.mean_(totals.to(collective.device)).cpu() / n


class CRLCClustering(DeepClusteringBase):
    """Contrastive Representation Learning and Clustering (Do, Tran, Venkatesh, ICCV 2021).

    A backbone with two heads, trained end to end on two augmented views of each image: a
    representation head (Linear, ReLU, Linear to 128, L2-normalised) with the NT-Xent loss
    at temperature 0.1 (feature contrastive, FC), and ``n_heads`` clustering sub-heads
    (Linear, ReLU, Linear to K, softmax) with an InfoNCE loss whose critic is the log of the
    dot product of the views' smoothed cluster probabilities (probability contrastive, PC),
    an entropy bonus on the batch-marginal cluster distribution (not the mean per-sample
    entropy) and a quadratic bound on the logits. The total is
    ``fc_weight L_FC + mean over sub-heads (pc_weight L_PC - entropy_weight H
    + logit_weight (P_lo + P_hi))``. After training, the sub-head with the lowest PC loss on
    seeded augmented views of the training data predicts: no label is used to choose it.

    Every parameter left as None takes the value of ``preset``. ``"paper"`` follows the
    authors' settings for CIFAR: ResNet-34 with the CIFAR stem, SGD with learning rate 0.1,
    momentum 0.9 and weight decay 5e-4 on weight matrices, constant rate, batches of 512,
    2000 epochs. ``"default"`` fits a practical CPU budget.

    Differences from the paper, in both presets:

    - The sub-head is chosen by the lowest PC loss on the training data (the released code
      chooses by test accuracy, which uses labels).
    - Colour jitter applies brightness, contrast, saturation and hue in a fixed order
      (torchvision shuffles the order); a crop box larger than the image is clipped to it
      (torchvision retries, then crops the centre).
    - No dataset normalisation: the backbone's first convolution is followed by BatchNorm,
      which absorbs a per-channel affine normalisation.
    - Each logit penalty is a mean over the batch and the K logits (our normalisation): at
      the same ``logit_weight`` it is 2/K of the released code's penalty. Both contrastive
      losses are computed in float32 even under mixed precision.
    - Grey images get digit-safe views by default (no flip; crops of at least 30% of the
      area, turned by up to 20 degrees, a rotation CRLC's recipe does not have; brightness
      and contrast jitter only). Flat features get Gaussian feature noise, since image
      augmentations do not apply to them.

    Differences in ``"default"`` only: ``backbone="auto"`` (an MLP for flat features,
    images under 16 pixels a side and grey images up to 32, the small CNN ``"small"``
    otherwise) instead of ResNet-34; Adam with learning rate 2e-3 and a cosine schedule
    instead of constant-rate SGD at 0.1; no weight decay; batches of 128 and 60 epochs
    instead of 512 and 2000, after a contrastive warm start of 40% of them. On
    scikit-learn's 1,797 digits, with two CPU threads, this reaches ACC 0.962 ± 0.007
    (worst 0.948) over seeds 0 to 4 in about 26 seconds per fit (KMeans: 0.79;
    BENCHMARKS.md).

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters K (width of every sub-head).
    preset : {"default", "paper"}, default="default"
        Source of every parameter left as None.
    backbone : {"auto", "conv", "small", "mlp", "resnet18", "resnet34"}, nn.Module \
class or instance, default=None
        Feature extractor returning ``(shallow map, feature vector)``; CRLC reads the
        vector. ``"auto"``: an MLP for flat features, images under 16 pixels a side and
        grey images up to 32 pixels a side (digits, characters), the small CNN
        (``"small"``) otherwise and for grey photographs with few a cluster
        (``photo_defaults_``; see :func:`resolve_backbone`). Paper:
        ``"resnet34"`` (CIFAR stem); default: ``"auto"``.
    backbone_params : dict, default=None
        Keyword arguments for a backbone class.
    backbone_weights : dict or str, default=None
        Weights to start the backbone from: a state dict, or a path read with
        ``torch.load(..., weights_only=True)``. Keys may carry a ``"backbone."`` prefix
        (a whole CRLC network's state dict).
    image_shape : tuple of int, default=None
        ``(C, H, W)`` or ``(H, W)`` when 2-D ``X`` holds flattened images.
    channels : {"first", "last"}, default=None
        Channel axis of 4-D input (or of flattened images); None infers it.
    n_heads : int, default=None
        Number of clustering sub-heads H (paper: 10).
    hidden_dim : int, default=None
        Width of the hidden layer of the representation head and of every clustering
        sub-head (paper: 512).
    max_iter : int, default=None
        Epochs of the full loss (stage 2 when ``pretrain_epochs > 0``). Paper: 2000;
        default: 60 (40 for colour images, see ``COLOUR_MAX_ITER``; 40 for every image
        before: MNIST 5k 0.944 -> 0.953 over 5 seeds, BENCHMARKS.md).
    batch_size : int, default=None
        Images per step (each gives two views). Paper: 512; default: 128.
    optimizer : {"sgd", "adam", "adamw", "rmsprop"}, default=None
        Paper: SGD with momentum 0.9; default: Adam.
    learning_rate : float, default=None
        Paper: 0.1; default: 2e-3.
    lr_schedule : {"constant", "cosine"}, default=None
        Per-step schedule (restarted for each stage). Paper: constant; default: cosine.
    weight_decay : float, default=None
        On weight matrices and kernels only. Paper: 5e-4; default: 0.
    temperature : float, default=None
        Temperature of the FC loss's NT-Xent (paper: 0.1).
    fc_weight : float, default=None
        Weight of the FC loss (paper: 10).
    pc_weight : float, default=None
        Weight of the PC loss (paper: 1).
    entropy_weight : float, default=None
        Weight of the marginal-entropy bonus (paper: 2).
    logit_bound : float, default=None
        Logits beyond ``+-logit_bound`` are penalised (paper: 25).
    logit_weight : float, default=None
        Weight of each side's quadratic logit penalty (paper: 0.01).
    smoothing : float, default=None
        ``p~ = (1 - smoothing) p + smoothing / K`` in the PC loss (paper: 0.01).
    pretrain_epochs : int or "auto", default=None
        Two-stage variant: epochs of FC-only training (instance-contrastive pre-training)
        before the ``max_iter`` epochs of the full loss; 0 trains in one stage.
        ``"auto"``: 40% of the clustering stage's epochs for images (grey and colour),
        none for flat features or with ``backbone_weights``. Paper: 0; default:
        ``"auto"``. On the grey sets of the suite (2 CPU cores, seeds 0 to 2, mean ACC
        without -> with): digits 0.962 -> 0.963, MNIST 5k 0.929 -> 0.944, USPS 0.885 ->
        0.925 (worst seed 0.814 -> 0.924), COIL-20 0.776 -> 0.779, ORL 0.599 -> 0.624, in
        about the same time per fit (BENCHMARKS.md).
    freeze_encoder : bool, default=False
        Keep the backbone fixed (weights and BatchNorm statistics) while the full loss
        trains: after pre-training, or with ``backbone_weights``.
    min_steps : int or "auto", default=None
        When ``max_iter`` is not given, train at least this many optimiser steps: the
        preset's epochs are stretched on small data sets (400 images at batch size 128 make
        4 steps an epoch). ``"auto"``: 50 steps per cluster. An explicit ``max_iter`` is
        used as given. Paper: 0 (epochs only); default: ``"auto"``.
    n_neighbors : int or "auto", default=None
        Pair each image with one of its ``n_neighbors`` nearest neighbours in pixel space
        (after PCA), mined once before training: the second view is drawn from the image
        or a neighbour, a positive pair for both the FC and the PC loss. ``"auto"``: a
        quarter of the mean cluster size, at most 20, for grey images and flat features
        with at most 300 images a cluster on average; 0 for colour images and larger
        clusters (see :mod:`skdccm.neighbours`). Paper: 0; default: ``"auto"``.
    neighbor_space : {"auto", "pixels", "features"}, default="auto"
        Where the ``n_neighbors`` are mined: ``"pixels"`` (after PCA, once before
        training) or ``"features"``: the backbone's features after the warm start
        (``pretrain_epochs``), for the clustering stage, as SCAN mines them. ``"auto"``:
        ``"features"`` for colour images when the fit warm-starts, ``"pixels"`` otherwise
        (a grey image's nearest pixels show its class far more often). With
        ``"features"``, ``n_neighbors="auto"`` is a quarter of the mean cluster size (at
        most 20) for every kind of image.
    augmentation : str or ContrastiveAugmentation, default="auto"
        ``"auto"`` (``"digits"`` for grey images, ``"large"`` for colour images of 64 pixels
        or more, ``"cifar"`` otherwise, ``"features"`` for flat features), ``"cifar"``,
        ``"large"`` (with Gaussian blur), ``"digits"``, ``"features"``, ``"none"`` or an
        :class:`~skdccm.augment.ContrastiveAugmentation`.
    photo_defaults : "auto" or bool, default="auto"
        Whether the ``"auto"`` settings take the choices made for colour photographs (the
        views, feature neighbours, the small CNN with its colour widths, epochs) rather
        than those for digits. ``"auto"``: colour images, and in the ``"default"`` preset
        grey images shaded like photographs with at most 100 a cluster (see
        ``photo_defaults_``). True or False decides for any images, e.g. for grey
        photographs with more images a cluster, or scans that the rule takes for
        photographs. Parameters you set still win.
    refine : {"auto", "spectral"} or None, default="auto"
        How training ends. ``"spectral"``: spectral clustering of the training data on the
        10-nearest-neighbour graph of the selected sub-head's hidden layer, then a new last
        layer for that sub-head, fitted to reproduce those clusters
        (:mod:`skdccm.refinement`), so that ``predict`` stays one forward pass and
        ``labels_`` is its argmax. For grey images whose graph does not fall into K clean
        clusters (they leak more than ``refinement.MAX_LEAK`` of their links), the pixels'
        10-neighbour graph is added and the graph cut again (``refine_pixels_``), as in
        :class:`~skdccm.DCCMClustering`. ``"auto"``, in the ``"default"`` preset:
        ``"spectral"`` for images given the defaults for photographs (``photo_defaults_``)
        with at most 100 a cluster on average, as in :class:`~skdccm.DCCMClustering`; for
        grey images with more a cluster (digits, scans), ``"spectral"`` where the cut passes
        a check, the trained head where it does not: the spectral clusters must leak no more
        of their links than the head's clusters on a 100-neighbour graph
        (``refinement.CHECK_NEIGHBOURS``), where a small tight group that the 10-neighbour
        graph cut off as a cluster links out; None otherwise. None: the trained head as it
        is (the paper). A data-parallel or interrupted fit is not refined.
    device : str, default="auto"
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    precision : {"auto", "float32", "bf16", "fp16"}, default="auto"
        Autocast on CUDA (bf16 where supported) with ``"auto"``; float32 on CPU. The PC
        loss is always computed in float32.
    compile : bool, default=False
        Train through ``torch.compile``.
    strategy : {"auto", "single", "ddp"}, default="auto"
        ``"auto"`` trains data-parallel (PyTorch DDP, one shard of the data per process)
        when the script runs under ``torchrun`` with several processes or in an initialised
        ``torch.distributed`` process group, in one process otherwise; ``"ddp"`` requires
        it; ``"single"`` never does. ``batch_size`` is then the global size, summed over
        processes. See the documentation's distributed page.
    predict_batch_size : int, default=1024
        Batch size of ``predict``, ``predict_proba`` and ``transform``.
    tol : float, default=0.0
        Stop when the share of samples whose cluster changed during an epoch is at most
        ``tol`` (0 disables).
    max_time : float, default=None
        Time budget of the whole ``fit`` in seconds (None: no limit). After each epoch the
        seconds per epoch are estimated and the stage is planned to the epochs that fit in
        the rest of the budget (at most ``max_iter``, or ``pretrain_epochs``): each
        stage's learning-rate schedule spans its planned epochs, so a short budget trains
        a short schedule rather than a cut long one. Pre-training plans its share
        ``pretrain_epochs / (pretrain_epochs + max_iter)`` of the affordable epochs, the
        clustering stage the rest. A stage ends at the end of its planned epoch, or of the
        epoch that reaches the budget, and trains at least one epoch. The choice of
        sub-head (two views of every image), the final BatchNorm pass and the labelling of
        the training data follow training: the clustering stage plans its epochs to leave
        time for them, three times the pre-training's last (timed) pass over the data, four
        when the fit may be refined (the refinement's pass; the spectral clustering
        itself is not planned for: about a second at 100 images a cluster, 4 s for the
        9,298 USPS digits with ``"auto"``'s check, about 90 s for 60,000 grey images on
        one CPU thread).
        ``stopped_by_time_`` tells whether it shortened training.
    callbacks : callable or list, default=None
        Called as ``cb(estimator, record)`` (or ``cb.on_epoch_end(estimator, record)``) after
        each epoch; return True to stop.
    checkpoint_dir : str, default=None
        Directory for ``checkpoint.pt``; pre-training writes to its ``pretrain`` folder.
    checkpoint_every : int, default=1
        Epochs between checkpoints.
    resume : bool, default=False
        Continue from the checkpoints in ``checkpoint_dir`` when there are some.
    verbose : int, default=0
        0 silent, 1 one updating progress line, 2 one line per epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and augmentation through local generators. On CPU
        the same value gives the same labels.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample. Clusters are numbered by decreasing size.
    head_losses_ : ndarray of shape (n_heads,)
        PC loss of each sub-head on seeded augmented view pairs of the training data.
    selected_head_ : int
        The sub-head used by ``predict`` and ``predict_proba``: ``argmin(head_losses_)``.
    module_ : CRLCNetwork
        The trained network, on CPU.
    history_ : list of dict
        One record per epoch: ``loss``, ``loss_parts`` (``fc``, and for the full loss
        ``pc`` and ``entropy`` averaged over sub-heads, ``pc_min``, ``logit_penalty``),
        ``cluster_sizes``, ``cluster_min``/``cluster_max``, ``label_change`` (clusters of
        the sub-head with the lowest running PC loss), ``lr``, ``seconds``, ``elapsed``
        (seconds since ``fit`` started), ``planned_epochs`` (the stage's length as planned
        at the end of the epoch: ``pretrain_epochs`` or ``max_iter``, or less under
        ``max_time``) and ``stage`` (``"pretrain"`` or ``"cluster"``).
    n_iter_ : int
        Epochs run, both stages together.
    stopped_by_time_ : bool
        True when ``max_time`` ended a stage before its planned length
        (``pretrain_epochs`` or ``max_iter``).
    n_features_in_ : int
        Features seen in ``fit`` (scikit-learn's count; for 3-D/4-D input, ``shape[1]``).
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Column names, when ``X`` was a DataFrame with string column names.
    input_shape_ : tuple of int
        Per-sample shape as the network sees it: ``(C, H, W)`` or ``(d,)``.
    device_ : torch.device
        Device used for training (and for prediction where available).
    preset_params_ : dict
        The resolved value of every preset-controlled parameter.
    pretrain_epochs_ : int
        Warm-start epochs planned (``pretrain_epochs`` resolved; 0: none).
    n_neighbors_ : int
        Neighbours mined per image (``n_neighbors`` resolved; 0: none).
    neighbor_space_ : {"pixels", "features"}
        Where they were mined (``neighbor_space`` resolved).
    photo_defaults_ : bool
        Whether the fit took the defaults chosen for colour photographs (views, feature
        neighbours, the small CNN with its colour widths, epochs): ``photo_defaults`` when
        True or False; under ``"auto"`` for colour images, and in the ``"default"`` preset
        for grey images of 16 pixels a side or more with at most 100 images a cluster on
        average whose foreground is mostly mid-tones (:func:`skdccm.data.grey_photographs`):
        faces and objects photographed in grey, not digits or other strokes of ink.
    refine_ : bool
        Whether the fit ended with graph refinement (``refine`` resolved; False where
        ``"auto"``'s check kept the trained head).
    refine_agreement_ : float or None
        Share of training samples whose cluster the refinement kept (clusters matched one
        to one); None when the fit was not refined.
    refine_pixels_ : bool or None
        Whether the refinement added the pixels' graph to the embedding's (grey images
        whose embedding's clusters leak more than ``refinement.MAX_LEAK``); None when the
        fit was not refined.
    refine_check_ : tuple of float or None
        Where ``"auto"`` checked the cut: the leak (``refinement.cluster_leak``) of the
        head's clusters and of the spectral clusters on the 100-neighbour graph of the
        head's input; the cut replaced the head where the second is not larger
        (``refine_``). None where no check ran.

    See Also
    --------
    DCCMClustering : deep comprehensive correlation mining under the same API.
    sklearn.cluster.KMeans : the baseline to compare with.

    Notes
    -----
    ``transform`` returns the backbone feature h (256 values for ``"conv"``, ``"mlp"`` and
    the small CNN on colour images, 128 for the small CNN on grey ones, 512 for the
    ResNets), the input of both heads; not the 128-d projection the FC loss
    acts on, which discards information useful downstream.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdccm import CRLCClustering
    >>> X = load_digits().images[:200]
    >>> est = CRLCClustering(n_clusters=10, max_iter=1, n_heads=2, random_state=0).fit(X)
    >>> est.labels_.shape
    (200,)
    >>> est.predict_proba(X[:3]).shape
    (3, 10)
    >>> est.transform(X[:3]).shape
    (3, 256)
    """

    _presets = PRESETS
    _min_steps_per_cluster = MIN_STEPS_PER_CLUSTER
    _neighbour_max_cluster_size = NEIGHBOUR_MAX_CLUSTER_SIZE
    _colour_max_iter = COLOUR_MAX_ITER
    # The sub-head choice (two views of every image), the BatchNorm statistics, the labels:
    # on 60,000 CIFAR-10 images they took 116 s, 2.1 times the warm start's timed closing
    # pass (the labels' pass draws no views); 3 leaves a margin.
    _final_passes = 3
    # CRLC's head evens its clusters out (its entropy term); on USPS, whose classes are
    # 0.76-1.67 of the mean size, the embedding's spectral clusters follow the classes
    # (ACC 0.93 -> 0.98, seeds 0-3). DCCM's embedding gained on the 8x8 digits and lost on
    # USPS and MNIST 5k (BENCHMARKS.md).
    _refines_many_a_cluster = True

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        preset: str = "default",
        backbone: Any = None,
        backbone_params: dict | None = None,
        backbone_weights: Any = None,
        image_shape: tuple[int, ...] | None = None,
        channels: str | None = None,
        n_heads: int | None = None,
        hidden_dim: int | None = None,
        max_iter: int | None = None,
        batch_size: int | None = None,
        optimizer: str | None = None,
        learning_rate: float | None = None,
        lr_schedule: str | None = None,
        weight_decay: float | None = None,
        temperature: float | None = None,
        fc_weight: float | None = None,
        pc_weight: float | None = None,
        entropy_weight: float | None = None,
        logit_bound: float | None = None,
        logit_weight: float | None = None,
        smoothing: float | None = None,
        pretrain_epochs: int | str | None = None,
        freeze_encoder: bool = False,
        n_neighbors: int | str | None = None,
        neighbor_space: str = "auto",
        min_steps: int | str | None = None,
        augmentation: Any = "auto",
        photo_defaults: bool | str = "auto",
        refine: str | None = "auto",
        device: str = "auto",
        precision: str = "auto",
        compile: bool = False,
        strategy: str = "auto",
        predict_batch_size: int = 1024,
        tol: float = 0.0,
        max_time: float | None = None,
        callbacks: Any = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
        verbose: int = 0,
        random_state: Any = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.preset = preset
        self.backbone = backbone
        self.backbone_params = backbone_params
        self.backbone_weights = backbone_weights
        self.image_shape = image_shape
        self.channels = channels
        self.n_heads = n_heads
        self.hidden_dim = hidden_dim
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.fc_weight = fc_weight
        self.pc_weight = pc_weight
        self.entropy_weight = entropy_weight
        self.logit_bound = logit_bound
        self.logit_weight = logit_weight
        self.smoothing = smoothing
        self.pretrain_epochs = pretrain_epochs
        self.freeze_encoder = freeze_encoder
        self.n_neighbors = n_neighbors
        self.neighbor_space = neighbor_space
        self.min_steps = min_steps
        self.augmentation = augmentation
        self.photo_defaults = photo_defaults
        self.refine = refine
        self.device = device
        self.precision = precision
        self.compile = compile
        self.strategy = strategy
        self.predict_batch_size = predict_batch_size
        self.tol = tol
        self.max_time = max_time
        self.callbacks = callbacks
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.verbose = verbose
        self.random_state = random_state

    # -- hooks ---------------------------------------------------------------------------

    def _resolved_params(self) -> dict[str, Any]:
        params = super()._resolved_params()
        name = type(self).__name__
        for key in ("temperature", "logit_bound"):
            if not params[key] > 0:
                raise ValueError(f"{name}: {key}={params[key]!r} must be > 0")
        for key in ("fc_weight", "pc_weight", "entropy_weight", "logit_weight",
                    "weight_decay"):
            if params[key] < 0:
                raise ValueError(f"{name}: {key}={params[key]!r} must be >= 0")
        if not 0.0 <= params["smoothing"] < 1.0:
            raise ValueError(f"{name}: smoothing={params['smoothing']!r} must be in [0, 1)")
        for key in ("n_heads", "hidden_dim"):
            check_int(params[key], key, name)
        check_pretrain_epochs(params["pretrain_epochs"], name)
        if not isinstance(self.freeze_encoder, bool | np.bool_):
            raise ValueError(f"{name}: freeze_encoder={self.freeze_encoder!r} must be True or "
                             "False")
        if (self.freeze_encoder and params["pretrain_epochs"] == 0
                and self.backbone_weights is None):
            warnings.warn(f"{name}: freeze_encoder=True without pretrain_epochs or "
                          "backbone_weights keeps the randomly initialised backbone fixed",
                          UserWarning, stacklevel=3)
        return params

    def _auto_warm_start(self, layout: InputLayout) -> bool:
        """Images, grey or colour, unless ``backbone_weights`` are given (they are the
        warm start); flat features are not warm-started."""
        return layout.is_image and self.backbone_weights is None

    def _build(self, layout: InputLayout, params: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
        spec = resolve_backbone(params["backbone"], layout.sample_shape, layout.photographic)
        backbone = make_backbone(spec, self.backbone_params, layout.sample_shape,
                                 layout.photographic)
        if isinstance(spec, str) and not isinstance(backbone, ResNet):
            init_kaiming_(backbone)  # ResNet keeps its own (zero-initialised residuals)
        if self.backbone_weights is not None:
            backbone.load_state_dict(_load_backbone_weights(self.backbone_weights,
                                                            type(self).__name__))
        _, n_features = infer_output_shapes(backbone, layout.sample_shape)
        # Without pre-training the backbone is frozen from the start; with it, only after.
        frozen = bool(self.freeze_encoder) and params["pretrain_epochs"] == 0
        module = CRLCNetwork(backbone, n_features, self.n_clusters, params["n_heads"],
                             hidden=params["hidden_dim"], freeze_backbone=frozen)
        return module, self._objective(layout, params, clustering=True)

    def _objective(self, layout: InputLayout, params: dict[str, Any], *,
                   clustering: bool) -> CRLCObjective:
        return CRLCObjective(
            n_clusters=self.n_clusters, n_heads=params["n_heads"],
            augmentation=resolve_contrastive(self.augmentation, layout.sample_shape,
                                             layout.photographic),
            value_range=layout.value_range, temperature=params["temperature"],
            fc_weight=params["fc_weight"], pc_weight=params["pc_weight"],
            entropy_weight=params["entropy_weight"], logit_weight=params["logit_weight"],
            logit_bound=params["logit_bound"], smoothing=params["smoothing"],
            clustering=clustering,
        )

    def _train_spec(self, params: dict[str, Any], n_samples: int,
                    layout: InputLayout) -> TrainSpec:
        batch_size = min(params["batch_size"], n_samples)
        return TrainSpec(
            max_epochs=self._preset_epochs(params, layout), batch_size=batch_size,
            chunk_size=batch_size, passes_per_chunk=1, steps_per_batch=1,
            optimizer=params["optimizer"],
            learning_rate=params["learning_rate"], weight_decay=params["weight_decay"],
            momentum=0.9, lr_schedule=params["lr_schedule"], precision=self.precision,
            compile=self.compile, tol=self.tol, checkpoint_dir=self.checkpoint_dir,
            checkpoint_every=self.checkpoint_every, resume=self.resume,
            verbose=int(self.verbose), fingerprint=self._fingerprint(layout, params),
        )

    def _run_training(self, module: nn.Module, objective: nn.Module, source: ArraySource,
                      spec: TrainSpec, params: dict[str, Any], generator: torch.Generator,
                      device_generator: torch.Generator,
                      collective: Collective = SINGLE_PROCESS,
                      budget: TimeBudget | None = None) -> TrainResult:
        """Optional FC-only pre-training, the full loss, then the choice of sub-head."""
        callbacks = _as_list(self.callbacks)
        history: list[dict[str, Any]] = []
        if params["pretrain_epochs"] > 0:
            pretrain_objective = self._objective(source.layout, params, clustering=False)
            first = self._warm_start(module, pretrain_objective.to(source.device), source,
                                     spec, params["pretrain_epochs"], generator,
                                     device_generator, collective, budget)
            history = list(first.history)
            if first.interrupted:
                self._select_head(module, objective, source, spec.batch_size, collective)
                return replace(first, objective=objective)
            if self.freeze_encoder:
                module.set_backbone_frozen(True)
            self._mine_feature_neighbours(module, source)
        result = train(module, objective, source, spec, generator, device_generator,
                       callbacks=callbacks, owner=self, collective=collective, budget=budget)
        history += [{**record, "stage": "cluster"} for record in result.history]
        self._select_head(module, objective, source, spec.batch_size, collective)
        return replace(result, history=history, n_epochs=len(history))

    def _select_head(self, module: CRLCNetwork, objective: CRLCObjective,
                     source: ArraySource, batch_size: int, collective: Collective) -> None:
        """Label-free choice of the predicting sub-head: the lowest PC loss."""
        losses = head_losses(module, objective, source, batch_size, collective=collective)
        self.head_losses_ = losses.numpy()
        self.selected_head_ = int(np.argmin(self.head_losses_))

    def _infer(self, module: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        out = module(batch)
        return out.logits[self.selected_head_].float().softmax(dim=1), out.features

    def _reorder_clusters(self, module: nn.Module, order: Tensor) -> None:
        module.heads.permute_clusters(self.selected_head_, order)

    def _infer_head_input(self, module: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        out = module(batch)
        head = self.selected_head_
        return (out.logits[head].float().softmax(dim=1),
                module.heads.hidden(out.features)[head])

    def _set_head(self, module: nn.Module, weight: Tensor, bias: Tensor) -> None:
        module.heads.set_output(self.selected_head_, weight, bias)

    def _fingerprint(self, layout: InputLayout, params: dict[str, Any]) -> dict[str, Any]:
        return {**super()._fingerprint(layout, params), "backbone": str(params["backbone"]),
                "n_heads": int(params["n_heads"]), "hidden_dim": int(params["hidden_dim"])}


def _load_backbone_weights(weights: Any, owner: str) -> dict[str, Tensor]:
    """A backbone state dict from a dict or a file; a ``backbone.`` prefix is removed."""
    if isinstance(weights, str | Path):
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # missing, corrupted, or a pickle with code in it
            raise ValueError(f"{owner}: backbone_weights={str(weights)!r} could not be read "
                             f"as a state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(weights, dict):
        raise TypeError(f"{owner}: backbone_weights must be a state dict or a path to one, "
                        f"got {type(weights).__name__}")
    prefix = "backbone."
    if any(key.startswith(prefix) for key in weights):   # a whole network's state dict
        return {key.removeprefix(prefix): value for key, value in weights.items()
                if key.startswith(prefix)}
    return dict(weights)
