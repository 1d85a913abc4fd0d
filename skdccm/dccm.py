"""DCCMClustering: Deep Comprehensive Correlation Mining (Wu et al., ICCV 2019).

The objective reads top to bottom as the paper's Algorithm 1: targets (pseudo-graph,
pseudo-labels, confidence) from un-augmented images without gradient, then, per minibatch,
the pseudo-graph, pseudo-label and mutual-information losses on the original and augmented
views (Eq. 15).
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import AffineAugmentation, dccm_view, resolve_affine, resolve_contrastive
from .base import DeepClusteringBase, _as_list, check_pretrain_epochs
from .budget import TimeBudget, TrialShare
from .data import ArraySource, InputLayout
from .distributed import SINGLE_PROCESS, Collective
from .losses import (
    balance_loss,
    jsd_mutual_information_loss,
    nt_xent_loss,
    pseudo_graph,
    pseudo_graph_loss,
    pseudo_label_loss,
    pseudo_labels,
    sample_triplets,
)
from .networks import (
    DCCMNetwork,
    MIDiscriminator,
    infer_output_shapes,
    init_kaiming_,
    make_backbone,
    use_batch_statistics,
)
from .pretraining import PROJECTION_DIM, ContrastiveWarmStart
from .training import (
    CHECKPOINT_NAME,
    ChunkTargets,
    StepResult,
    TrainResult,
    TrainSpec,
    finish_training,
    train,
)
from .validation import check_int

#: The paper's ablation study (Table 3): which loss families each model uses.
ABLATIONS = {
    "M1": {"robustness": False, "labels": False, "mi": False},   # pseudo-graph only
    "M2": {"robustness": True, "labels": False, "mi": False},    # + local robustness
    "M3": {"robustness": True, "labels": True, "mi": False},     # + pseudo-labels
    "M4": {"robustness": True, "labels": True, "mi": True},      # + triplet MI: full DCCM
}

#: NT-Xent temperature of the warm start (``pretrain_epochs``): CRLC's. The instance term of
#: the clustering stage (``instance_weight``) uses it too.
WARM_START_TEMPERATURE = 0.1

#: ``min_steps="auto"`` (the default preset): at least this many optimiser steps per cluster
#: when ``max_iter`` is not given, so that small data sets with many clusters get more
#: epochs (ORL, 400 faces of 40 people: 4 steps an epoch at batch size 128). Raised from 10
#: with the preset's epochs (25 -> 50): twice the training raised the mean ACC of every set
#: of the suite over 3 seeds (BENCHMARKS.md).
MIN_STEPS_PER_CLUSTER = 20

_PAPER = {
    "max_iter": 200, "batch_size": 32, "target_batch_size": 1000,
    "passes_per_target": 10, "draws_per_batch": 2, "optimizer": "rmsprop",
    "learning_rate": 1e-4, "lr_schedule": "constant", "weight_decay": 0.0,
    "alpha": 5.0, "beta": 0.1, "graph_threshold": 0.95, "confidence_threshold": 0.9,
    "pseudo_label_loss": "ce", "original_view_loss": True, "balance_weight": 0.0,
    "bn_batch_stats": True, "n_negatives": 2, "mi_hidden": 512, "n_neighbors": 0,
    "min_steps": 0, "pretrain_epochs": 0, "instance_weight": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's text where it speaks, the released code where it is silent.
    "paper": _PAPER,
    # The released code's own choices: augmented views only, per-class BCE, MI weight 0.05.
    "code": {**_PAPER, "pseudo_label_loss": "bce", "original_view_loss": False, "beta": 0.05},
    # Ours: fresher targets, larger minibatches, Adam with a cosine schedule, a balance term
    # and running BatchNorm statistics for prediction (see docs/method.rst for measurements).
    # Measured on all 1,797 digits (2 CPU cores, full method, ACC for seeds 0/1/2, seconds
    # per fit): lr 3e-3 / 15 epochs 0.718/0.875/0.817 in ~65 s; lr 3e-3 / 25 epochs
    # 0.939/0.795/0.913 in ~100 s; lr 1e-3 / 25 epochs 0.803/0.737; beta 0.05 (the code's MI
    # weight) 0.699/0.771/0.771; targets over all 1,797 images 0.687/0.603/0.794; without MI
    # (M3) / 25 epochs 0.905/0.759/0.702 in ~46 s. The MI discriminator's hidden x hidden
    # layer is most of the step on small images: 128 hidden units give 0.937/0.786/0.896 in
    # ~61 s, 64 give 0.919/0.789/0.918 in ~57 s; on MNIST 5k (small CNN), 128 give
    # 0.976/0.708/0.887 in ~455 s and 64 give 0.965/0.769/0.975 in ~220 s (seed 0).
    # Twice those epochs (50, with 20 steps per cluster at least), on the suite's five grey
    # sets, seeds 0-2, mean ACC: digits 0.860 -> 0.904, MNIST 5k 0.876 -> 0.900,
    # USPS 0.823 -> 0.878, COIL-20 0.794 -> 0.804, ORL 0.658 -> 0.693.
    "default": {**_PAPER, "max_iter": 50, "batch_size": 128, "target_batch_size": 1024,
                "passes_per_target": 1, "draws_per_batch": 1, "optimizer": "adam",
                "learning_rate": 3e-3, "lr_schedule": "cosine", "balance_weight": 1.0,
                "bn_batch_stats": False, "mi_hidden": 64, "n_neighbors": "auto",
                "min_steps": "auto", "pretrain_epochs": "auto"},
}


#: The default preset's epochs for colour images (50 for the rest). An epoch of them costs
#: about four times a grey one's, and the doubling from 25 to 50 was measured on grey images:
#: 25 keeps a fit of 5,000 CIFAR-10 images with its warm start near 6 minutes on 2 CPU cores.
COLOUR_MAX_ITER = 25

#: Trial i of ``n_init`` (i >= 1) is seeded with the fit's seed + i * INIT_SEED_STRIDE; trial 0
#: is the fit that ``n_init=1`` would make.
INIT_SEED_STRIDE = 7919

#: Images at least this many pixels a side get the small CNN under ``backbone="auto"`` in the
#: ``"default"`` preset. Chosen for the network, apart from ``data.PHOTO_MIN_SIDE`` (the rule
#: for grey photographs), which happens to share the value.
SMALL_CNN_MIN_SIDE = 16


def resolve_backbone(spec: Any, sample_shape: tuple[int, ...], preset: str) -> Any:
    """``"auto"``: the MLP for flat features, the small CNN for images of 16 pixels or more
    in the ``"default"`` preset, the paper's shallow AlexNet otherwise.

    Default preset, 2 CPU cores, seed 0: on MNIST 5k (28x28) the small CNN reached ACC 0.976
    in 451 s where the shallow AlexNet reached 0.810 in 1,269 s; on USPS (16x16) 0.905 in
    232 s against 0.757 in 989 s; on the 8x8 digits it did worse (BENCHMARKS.md), hence the
    size limit. On a 5,000-image CIFAR-10 subset its colour widths train an epoch four times
    faster than the shallow AlexNet (6 s against 23 s) and, with a warm start, reached ACC
    0.321 in 5 minutes against 0.290. The ``"paper"`` and ``"code"`` presets keep the
    released network.

    Parameters
    ----------
    spec : str, nn.Module class or instance
        The ``backbone`` parameter; anything but ``"auto"`` is returned unchanged.
    sample_shape : tuple of int
        ``(C, H, W)`` for images, ``(d,)`` for flat features.
    preset : str
        The ``preset`` parameter.

    Returns
    -------
    str, nn.Module class or instance
        ``"mlp"``, ``"small"`` or ``"conv"`` for ``"auto"``, else ``spec``.

    Examples
    --------
    >>> from skdccm.dccm import resolve_backbone
    >>> [resolve_backbone("auto", shape, "default") for shape in [(1, 28, 28), (1, 8, 8),
    ...                                                            (3, 32, 32), (64,)]]
    ['small', 'conv', 'small', 'mlp']
    >>> resolve_backbone("auto", (1, 28, 28), "paper")
    'conv'
    """
    if not (isinstance(spec, str) and spec == "auto"):
        return spec
    if len(sample_shape) != 3:
        return "mlp"
    _, height, width = sample_shape
    if preset == "default" and min(height, width) >= SMALL_CNN_MIN_SIDE:
        return "small"
    return "conv"


class DCCMObjective(nn.Module):
    """DCCM's loss (Eq. 15) and targets, with the mutual-information discriminator.

    Parameters
    ----------
    n_clusters : int
        K.
    shallow_channels : int
        Channels of the backbone's shallow map (input of the discriminator).
    components : dict
        Which loss families are on (``ABLATIONS``).
    alpha, beta : float
        Weights of the pseudo-label and mutual-information losses.
    graph_threshold, confidence_threshold : float
        thres1 (pseudo-graph) and thres2 (confident pseudo-labels).
    pseudo_label_form : {"ce", "bce"}
        See :func:`skdccm.losses.pseudo_label_loss`.
    original_view : bool
        Use the un-augmented images in the loss too (Eq. 15), not only augmented views.
    augmentation : AffineAugmentation or None
        Local-robustness perturbations; None disables augmented views.
    value_range : tuple of float
        The data's value range (channel shifts are relative to it).
    balance_weight : float
        Weight of ``log K - H(mean prediction)`` (0 in the paper).
    n_negatives : int
        Non-neighbours drawn per anchor for the MI loss.
    mi_hidden : int
        Width of the discriminator's two hidden 1x1-convolution layers.
    instance_weight : float
        Weight of NT-Xent between the embeddings of each image and of its augmented view
        (0 in the paper); needs both views (``two_views``).
    embedding_dim : int
        Width of the network's embedding (input of the instance term's projection head).
    """

    def __init__(self, *, n_clusters: int, shallow_channels: int, components: dict[str, bool],
                 alpha: float, beta: float, graph_threshold: float,
                 confidence_threshold: float, pseudo_label_form: str, original_view: bool,
                 augmentation: AffineAugmentation | None, value_range: tuple[float, float],
                 balance_weight: float, n_negatives: int, mi_hidden: int,
                 instance_weight: float, embedding_dim: int) -> None:
        super().__init__()
        self.n_clusters = n_clusters
        self.components = components
        self.alpha, self.beta = alpha, beta
        self.graph_threshold = graph_threshold
        self.confidence_threshold = confidence_threshold
        self.pseudo_label_form = pseudo_label_form
        self.augmentation = augmentation if components["robustness"] else None
        self.original_view = original_view or self.augmentation is None
        self.value_range = value_range
        self.balance_weight = balance_weight
        self.instance_weight = instance_weight
        self.n_negatives = n_negatives
        self.discriminator = (MIDiscriminator(shallow_channels, n_clusters, mi_hidden)
                              if components["mi"] else None)
        # A projection head of the objective's own, as SimCLR and the warm start have: the
        # loss compares projections, not the embedding the clustering layer reads.
        self.projection = (nn.Sequential(nn.Linear(embedding_dim, embedding_dim),
                                         nn.ReLU(inplace=True),
                                         nn.Linear(embedding_dim, PROJECTION_DIM))
                           if instance_weight > 0 else None)

    @property
    def two_views(self) -> bool:
        """Whether a step draws both the un-augmented images and an augmented view."""
        return self.original_view and self.augmentation is not None

    def prepare(self, module: nn.Module, images: Tensor,
                collective: Collective = SINGLE_PROCESS) -> ChunkTargets:
        """Targets of a target batch, from un-augmented images (no gradient).

        Data-parallel: ``images`` are this rank's part of the target batch, and the targets
        cover the whole batch, gathered from every rank.
        """
        probs = collective.gather(module(images).logits.float().softmax(dim=1))  # (N, K)
        graph = pseudo_graph(probs, self.graph_threshold)                # (N, N)
        labels, confident = pseudo_labels(probs, self.confidence_threshold)
        n = probs.shape[0]
        stats = {
            "confident": confident.float().mean(),
            "graph_positive": (graph.sum() - n) / max(n * (n - 1), 1),  # off-diagonal share
        }
        return ChunkTargets({"graph": graph, "labels": labels, "confident": confident},
                            collective.local_part(labels), stats)

    def step(self, module: nn.Module, images: Tensor, targets: ChunkTargets, index: Tensor,
             generator: torch.Generator, collective: Collective = SINGLE_PROCESS,
             partners: Tensor | None = None) -> StepResult:
        """DCCM's loss (Eq. 15) on one minibatch of n images.

        ``partners``: each image or one of its nearest neighbours (``n_neighbors``); the
        augmented view is then drawn from the partner and held to the image's own targets,
        which extends local robustness from perturbations of an image to its neighbourhood.

        Data-parallel: ``images`` and ``index`` are this rank's part of the minibatch; the
        pseudo-graph and pseudo-label losses are those of the whole minibatch (gathered),
        and the MI loss is this rank's share of the whole minibatch's.
        """
        batch = collective.global_index(index, targets.tensors["labels"].shape[0])  # (n,)
        graph = targets.tensors["graph"][batch][:, batch]                # (n, n)
        labels = targets.tensors["labels"][batch]                        # (n,)
        confident = targets.tensors["confident"][batch]                  # (n,)
        n = batch.shape[0]

        views = [images] if self.original_view else []
        if self.augmentation is not None:
            views.append(dccm_view(images if partners is None else partners,
                                   self.augmentation, self.value_range,
                                   collective.augmentation_generator(generator)))
        out = module(torch.cat(views))                                   # V*m local rows
        logits = collective.gather(out.logits.float(), groups=len(views))  # (V*n, K)
        probs = logits.softmax(dim=1)                                    # (V*n, K)

        parts: dict[str, Tensor] = {"graph": probs.new_zeros(())}
        if self.components["labels"]:
            parts["label"] = probs.new_zeros(())
        for v in range(len(views)):
            rows = slice(v * n, (v + 1) * n)
            parts["graph"] = parts["graph"] + pseudo_graph_loss(probs[rows], graph)
            if self.components["labels"]:
                parts["label"] = parts["label"] + pseudo_label_loss(
                    logits[rows], labels, confident, form=self.pseudo_label_form)
        loss = parts["graph"] + self.alpha * parts.get("label", 0.0)

        if self.discriminator is not None:
            # MI between deep and shallow features of the last (augmented, if any) view.
            m = images.shape[0]
            last = slice((len(views) - 1) * m, len(views) * m)
            parts["mi"] = self._mutual_information(out.shallow[last].float(),
                                                   out.deep[last].float(), graph, generator,
                                                   collective)
            loss = loss + self.beta * parts["mi"]
        if self.projection is not None:
            # The embedding of each image against its augmented view's (views are
            # [original, augmented]: the estimator refuses the term without two_views).
            z = F.normalize(self.projection(out.embedding.float()), dim=1)     # (2m, P)
            z1, z2 = collective.gather(z, groups=2).chunk(2)                   # (n, P)
            parts["instance"] = nt_xent_loss(z1, z2, WARM_START_TEMPERATURE)
            loss = loss + self.instance_weight * parts["instance"]
        if self.balance_weight > 0:
            parts["balance"] = balance_loss(probs)
            loss = loss + self.balance_weight * parts["balance"]
        return StepResult(loss, {k: v.detach() for k, v in parts.items()})

    def _mutual_information(self, shallow: Tensor, deep: Tensor, graph: Tensor,
                            generator: torch.Generator, collective: Collective) -> Tensor:
        """Triplet MI (Eq. 14): positives are the image's own map and a neighbour's map,
        negatives are maps of non-neighbours; Jensen-Shannon estimator.

        Data-parallel: ``shallow`` and ``deep`` are this rank's rows, ``graph`` covers the
        whole minibatch. Neighbours and negatives are drawn over the whole minibatch with
        the generator every rank shares, so the draws are those of one process; each rank
        scores its own anchors and returns its share of the whole minibatch's loss.
        """
        neighbour, has_neighbour, negatives, has_negative = sample_triplets(
            graph, self.n_negatives, generator)                           # over all n anchors
        maps_all = collective.gather(shallow)                              # (n, C, h, w)
        n, n_neg = maps_all.shape[0], negatives.shape[1]
        anchors = collective.local_part(torch.arange(n, device=shallow.device))   # (m,)
        m = anchors.shape[0]
        # Every (anchor, map) pair in one discriminator call: self, neighbour, negatives.
        maps = torch.cat([anchors, neighbour[anchors],
                          negatives[anchors].T.reshape(-1)])               # ((2+k)*m,)
        # index_select, not maps_all[maps]: the backward of advanced indexing accumulates
        # repeated indices in a thread-dependent order on CPU (not reproducible).
        scores = self.discriminator(maps_all.index_select(0, maps),        # (P, h*w)
                                    deep.repeat(2 + n_neg, 1))
        positive = torch.cat([scores[:m], scores[m:2 * m][has_neighbour[anchors]]])
        negative = scores[2 * m:][has_negative[anchors].T.reshape(-1)]
        if collective.world_size == 1:
            return jsd_mutual_information_loss(positive.flatten(), negative.flatten())
        positions = scores.shape[1]
        share = jsd_mutual_information_loss(
            positive.flatten(), negative.flatten(),
            n_positive=(n + has_neighbour.sum()) * positions,
            n_negative=has_negative.sum() * positions)
        return share * collective.world_size


class DCCMClustering(DeepClusteringBase):
    """Deep Comprehensive Correlation Mining image clustering (Wu et al., ICCV 2019).

    A CNN with a K-way softmax head, trained end to end from four correlations: a
    pseudo-graph between samples (Eq. 3), confident pseudo-labels (Eq. 9), consistency under
    small perturbations (local robustness, Eq. 12) and a triplet mutual-information loss
    between deep and shallow features (Eq. 14). Trains on the GPU when there is one.

    Every parameter left as None takes the value of ``preset``: ``"paper"`` is the method as
    published (the paper's text, and the released code where the paper is silent),
    ``"code"`` the released code's own choices, ``"default"`` our faster variant (see the
    method notes in the documentation for every difference and its measured effect).

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters K (width of the softmax head).
    preset : {"default", "paper", "code"}, default="default"
        Source of every parameter left as None.
    backbone : {"auto", "conv", "small", "mlp", "resnet18", "resnet34"}, nn.Module class \
or instance
        Feature extractor returning ``(shallow map, feature vector)``. ``"auto"``: an MLP
        for flat features; for images the paper's shallow AlexNet (``"conv"``) sized to the
        images, except images of 16 pixels or more under ``preset="default"``, which get
        the lighter ``"small"`` CNN (see :func:`resolve_backbone`). A class is
        instantiated with ``backbone_params``; an instance is deep-copied before training.
    backbone_params : dict, default=None
        Keyword arguments for a backbone class.
    image_shape : tuple of int, default=None
        ``(C, H, W)`` or ``(H, W)`` when 2-D ``X`` holds flattened images (e.g. ``(1, 28, 28)``
        for MNIST's 784 columns).
    channels : {"first", "last"}, default=None
        Channel axis of 4-D input (or of flattened images); None infers it: channels-last
        when the last axis is 1, 3 or 4.
    max_iter : int, default=None
        Epochs (passes of the target-batch loop over the data). Paper: 200; default: 50
        (25 for colour images and grey ones given their defaults, see ``COLOUR_MAX_ITER``
        and ``photo_defaults_``).
    n_init : int, default=1
        Initialisations tried, each with its own seed; the one with the lowest training
        loss after ``init_iter`` epochs is kept (and trained on to ``max_iter`` epochs when
        ``init_iter < max_iter``). No label is used: the choice is the objective's own, as
        KMeans keeps the run of lowest inertia. The fit costs about
        ``max_iter + (n_init - 1) * init_iter`` epochs. On the 8x8 digits (8 seeds), the
        final loss ranked the runs' ACC with Spearman correlation -0.86, the loss after 5
        epochs with -0.14; but ``n_init=3`` on seeds 0 to 2 averaged ACC 0.853 against
        0.876 for ``n_init=1`` (BENCHMARKS.md): an imperfect criterion. On MNIST 5k,
        ``n_init=3, init_iter=5`` raised the mean ACC of seeds 0 to 2 from 0.903 to 0.962
        (the same on the digits: 0.876 to 0.838; on USPS: 0.886 to 0.874).
    init_iter : int, default=None
        Epochs of each initialisation before the choice; None (or ``max_iter`` or more):
        whole runs.
    pretrain_epochs : int or "auto", default=None
        Epochs of a contrastive warm start before DCCM's own loss: the backbone and a
        projection head of its own (dropped afterwards) learn with NT-Xent which images are
        views of the same image (two views as CRLC draws them, :mod:`skdccm.pretraining`),
        so that the first pseudo-graph groups look-alikes. With ``n_init > 1`` every
        initialisation starts from the one warm-started backbone. ``"auto"``: 40% of the
        clustering stage's epochs (10 before 25) for colour images and grey ones given
        their defaults (``photo_defaults_``), none for other grey images and flat features
        (CIFAR-10 subset, 5 minutes, seed 0: ACC 0.227 without, 0.290 with; on the digit
        sets it helped the digits and cost MNIST, see ``skdccm.base.PRETRAIN_SHARE``).
        Paper: 0; default: ``"auto"``.
    batch_size : int, default=None
        Minibatch size of the gradient steps. Paper: 32; default: 128.
    target_batch_size : int, default=None
        Images whose pseudo-graph and pseudo-labels are computed together. Paper: 1000.
    passes_per_target : int, default=None
        Shuffled passes over each target batch before new targets are computed. Paper: 10.
    draws_per_batch : int, default=None
        Optimiser steps (fresh augmentations) per minibatch. Paper: 2.
    optimizer : {"rmsprop", "adam", "adamw", "sgd"}, default=None
        Paper: RMSprop (smoothing 0.9).
    learning_rate : float, default=None
        Paper: 1e-4; default: 3e-3.
    lr_schedule : {"constant", "cosine"}, default=None
        Per-step schedule. Paper: constant.
    weight_decay : float, default=None
        On weight matrices and kernels only. Paper: 0.
    alpha : float, default=None
        Weight of the pseudo-label loss (paper: 5).
    beta : float, default=None
        Weight of the mutual-information loss (paper: 0.1; released code: 0.05).
    graph_threshold : float, default=None
        thres1: cosine similarity from which two samples are linked (paper: 0.95).
    confidence_threshold : float, default=None
        thres2: probability from which a pseudo-label is used (paper: 0.9).
    pseudo_label_loss : {"ce", "bce"}, default=None
        Paper: cross-entropy; released code: per-class binary cross-entropy.
    original_view_loss : bool, default=None
        Use un-augmented images in the loss too (paper, Eq. 15); False trains on augmented
        views only (released code).
    balance_weight : float, default=None
        Weight of ``log K - H(mean prediction)``, which keeps clusters from collapsing
        (paper: 0; default: 1).
    instance_weight : float, default=None
        Weight of an instance-contrastive term (not in the paper): NT-Xent between the
        embeddings of each image and of its augmented view (the same views as the local
        robustness loss, no extra forward pass), through a projection head of the
        objective's own, so that the embedding keeps telling images apart while the
        clustering losses group them. Needs both views (``original_view_loss=True``, an
        augmentation, ablation M2 or later). Paper: 0; default: 0 (measured in
        BENCHMARKS.md, "DCCM on the digit sets").
    bn_batch_stats : bool, default=None
        Normalise with batch statistics in prediction too (released code; predictions then
        depend on the batch: keep ``predict_batch_size`` large). Default: False.
    n_negatives : int, default=None
        Non-neighbours drawn per anchor in the MI loss (released code: 2).
    mi_hidden : int, default=None
        Width of the MI discriminator's two hidden 1x1-convolution layers (paper and
        released code: 512; default: 64, which trains 1.8x faster than 512 on 8x8 digits
        and twice as fast as 128 on MNIST, at about the same accuracy).
    min_steps : int or "auto", default=None
        When ``max_iter`` is not given, train at least this many optimiser steps: the
        preset's epochs are stretched on small data sets (400 images at batch size 128 make
        4 steps an epoch). ``"auto"``: 20 steps per cluster. An explicit ``max_iter`` is
        used as given. Paper: 0 (epochs only); default: ``"auto"``.
    n_neighbors : int or "auto", default=None
        Pair each image with one of its ``n_neighbors`` nearest neighbours in pixel space
        (after PCA), mined once before training: the augmented view is drawn from the
        image or a neighbour and held to the image's targets. ``"auto"``: a quarter of the
        mean cluster size, at most 20, for grey images and flat features, 0 for colour
        images and grey ones given their defaults (``photo_defaults_``; see
        :mod:`skdccm.neighbours`). Paper: 0; default: ``"auto"``.
    neighbor_space : {"auto", "pixels", "features"}, default="auto"
        Where the ``n_neighbors`` are mined: ``"pixels"`` (after PCA, once before
        training) or ``"features"``: the backbone's features after the warm start
        (``pretrain_epochs``), for the clustering stage, as SCAN mines them. ``"auto"``:
        ``"features"`` for colour images and grey ones given their defaults
        (``photo_defaults_``) when the fit warm-starts, ``"pixels"`` otherwise
        (a grey image's nearest pixels show its class far more often). With
        ``"features"``, ``n_neighbors="auto"`` is a quarter of the mean cluster size (at
        most 20) for every kind of image.
    ablation : {"M1", "M2", "M3", "M4"}, default=None
        The paper's Table 3: M1 pseudo-graph only, M2 + local robustness, M3 + pseudo-labels,
        M4 + mutual information (the full method, also what None means).
    augmentation : str or AffineAugmentation, default="auto"
        ``"auto"`` (digit-safe for grey images, ``"mild"`` for colour images and grey ones
        given their defaults (``photo_defaults_``) of 64 pixels or more, ``"cifar"`` for
        the others of them, none for flat features), ``"cifar"``, ``"mild"``,
        ``"digits"``, ``"none"``, or an :class:`~skdccm.augment.AffineAugmentation`.
    photo_defaults : "auto" or bool, default="auto"
        Whether the ``"auto"`` settings take the choices made for colour photographs (warm
        start, its views, feature neighbours, augmentation, network widths, epochs) rather
        than those for digits. ``"auto"``: colour images, and in the ``"default"`` preset
        grey images shaded like photographs with at most 100 a cluster (see
        ``photo_defaults_``). True or False decides for any images, e.g. for grey
        photographs with more images a cluster, or scans that the rule takes for
        photographs. Parameters you set still win.
    refine : {"auto", "spectral"} or None, default="auto"
        How training ends. ``"spectral"``: spectral clustering of the training data on the
        10-nearest-neighbour graph of the clustering head's input, then a new last layer
        for the head, fitted to reproduce those clusters (:mod:`skdccm.refinement`), so
        that ``predict`` stays one forward pass and ``labels_`` is its argmax. It follows
        clusters that curve through the feature space (an object seen from turning angles,
        one person's faces), which the softmax head cuts with hyperplanes. For grey images
        whose graph does not fall into K clean clusters (they leak more than
        ``refinement.MAX_LEAK`` of their links), the pixels' 10-neighbour graph is added
        and the graph cut again (``refine_pixels_``). ``"auto"``:
        ``"spectral"`` for images given the defaults for photographs (``photo_defaults_``)
        in the ``"default"`` preset with at most 100 a cluster on average, None otherwise.
        None: the trained head as it is (the paper). A data-parallel or interrupted fit is
        not refined.
    device : str, default="auto"
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    precision : {"auto", "float32", "bf16", "fp16"}, default="auto"
        Autocast on CUDA (bf16 where supported) with ``"auto"``; float32 on CPU.
    compile : bool, default=False
        Train through ``torch.compile``.
    strategy : {"auto", "single", "ddp"}, default="auto"
        ``"auto"`` trains data-parallel (PyTorch DDP, one shard of the data per process)
        when the script runs under ``torchrun`` with several processes or in an initialised
        ``torch.distributed`` process group, in one process otherwise; ``"ddp"`` requires
        it; ``"single"`` never does. ``batch_size`` and ``target_batch_size`` are then the
        global sizes, summed over processes. See the documentation's distributed page.
    predict_batch_size : int, default=1024
        Batch size of ``predict``, ``predict_proba`` and ``transform``.
    tol : float, default=0.0
        Stop when the share of samples whose pseudo-label changed during an epoch is at most
        ``tol`` (0 disables).
    max_time : float, default=None
        Time budget of the whole ``fit`` in seconds (None: no limit). After each epoch the
        seconds per epoch are estimated and the run is planned to the epochs that fit in
        the rest of the budget, at most ``max_iter``: the learning-rate schedule spans the
        planned epochs, so a short budget trains a short schedule rather than a cut long
        one. Training ends at the end of the planned epoch, or of the epoch that reaches
        the budget. At least one epoch is trained. The final BatchNorm pass and the
        labelling of the training data follow training: once a pass over the data has been
        timed (the warm start's last one), later stages plan their epochs to leave time
        for those two passes, and for a third when the fit is refined (``refine_``; the
        spectral clustering itself is not planned for: about a second at 100 images a
        cluster, where ``"auto"`` refines). With ``n_init > 1`` the budget covers the
        trials and the kept run: each trial leaves the later ones their epochs, and trials
        for which no time is left are skipped. ``stopped_by_time_`` tells whether it
        shortened training.
    callbacks : callable or list, default=None
        Called as ``cb(estimator, record)`` (or ``cb.on_epoch_end(estimator, record)``) after
        each epoch; return True to stop.
    checkpoint_dir : str, default=None
        Directory for ``checkpoint.pt`` (model, optimiser, epoch, RNG state, history).
    checkpoint_every : int, default=1
        Epochs between checkpoints.
    resume : bool, default=False
        Continue from the checkpoint in ``checkpoint_dir`` when there is one.
    verbose : int, default=0
        0 silent, 1 one updating progress line, 2 one line per epoch. Lines also go to the
        ``"skdccm"`` logger.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling and augmentation through local generators. On CPU
        the same value gives the same labels.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample. Clusters are numbered by decreasing size.
    module_ : torch.nn.Module
        The trained network, on CPU.
    history_ : list of dict
        One record per epoch: ``loss``, ``loss_parts``, ``confident`` (share of confident
        samples), ``graph_positive`` (share of linked pairs), ``cluster_sizes``,
        ``cluster_min``/``cluster_max`` (shares), ``label_change``, ``lr``, ``seconds``,
        ``elapsed`` (seconds since ``fit`` started) and ``planned_epochs`` (the run's
        length as planned at the end of the epoch: ``max_iter``, or less under
        ``max_time``).
    n_iter_ : int
        Epochs run (by the kept initialisation).
    stopped_by_time_ : bool
        True when ``max_time`` ended training before ``max_iter`` epochs (or skipped
        trials of ``n_init``).
    init_losses_ : ndarray of shape (n_init,)
        Training loss of each initialisation in its epoch ``init_iter`` (after resuming
        from a checkpoint, that of the resumed run only; fewer than ``n_init`` values when
        ``max_time`` left no time for the last trials).
    best_init_ : int
        Index of the kept initialisation in ``init_losses_``.
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
        Whether the fit took the defaults chosen for colour photographs (warm start, its
        views, feature neighbours, augmentation, network widths, epochs): ``photo_defaults``
        when True or False; under ``"auto"`` for colour images, and in the ``"default"``
        preset for grey images of 16 pixels a side or more with at most 100 images a cluster
        on average whose foreground is mostly mid-tones
        (:func:`skdccm.data.grey_photographs`): faces and objects photographed in grey, not
        digits or other strokes of ink.
    refine_ : bool
        Whether the fit ended with graph refinement (``refine`` resolved).
    refine_agreement_ : float or None
        Share of training samples whose cluster the refinement kept (clusters matched one
        to one); None when the fit was not refined.
    refine_pixels_ : bool or None
        Whether the refinement added the pixels' graph to the embedding's (grey images
        whose embedding's clusters leak more than ``refinement.MAX_LEAK``); None when the
        fit was not refined.
    refine_check_ : tuple of float or None
        As in :class:`~skdccm.CRLCClustering`, whose ``refine="auto"`` checks its cut on
        grey images with more than 100 a cluster; DCCM's ``"auto"`` does not refine those,
        so this is None.

    See Also
    --------
    CRLCClustering : contrastive clustering under the same API.
    sklearn.cluster.KMeans : the baseline to compare with.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdccm import DCCMClustering
    >>> X = load_digits().images[:200]
    >>> est = DCCMClustering(n_clusters=10, max_iter=1, random_state=0).fit(X)
    >>> est.labels_.shape
    (200,)
    >>> est.predict_proba(X[:3]).shape
    (3, 10)
    """

    _presets = PRESETS
    _min_steps_per_cluster = MIN_STEPS_PER_CLUSTER
    _colour_max_iter = COLOUR_MAX_ITER

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        preset: str = "default",
        backbone: Any = "auto",
        backbone_params: dict | None = None,
        image_shape: tuple[int, ...] | None = None,
        channels: str | None = None,
        max_iter: int | None = None,
        n_init: int = 1,
        init_iter: int | None = None,
        pretrain_epochs: int | str | None = None,
        batch_size: int | None = None,
        target_batch_size: int | None = None,
        passes_per_target: int | None = None,
        draws_per_batch: int | None = None,
        optimizer: str | None = None,
        learning_rate: float | None = None,
        lr_schedule: str | None = None,
        weight_decay: float | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        graph_threshold: float | None = None,
        confidence_threshold: float | None = None,
        pseudo_label_loss: str | None = None,
        original_view_loss: bool | None = None,
        balance_weight: float | None = None,
        instance_weight: float | None = None,
        bn_batch_stats: bool | None = None,
        n_negatives: int | None = None,
        mi_hidden: int | None = None,
        n_neighbors: int | str | None = None,
        neighbor_space: str = "auto",
        min_steps: int | str | None = None,
        ablation: str | None = None,
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
        self.image_shape = image_shape
        self.channels = channels
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_iter = init_iter
        self.pretrain_epochs = pretrain_epochs
        self.batch_size = batch_size
        self.target_batch_size = target_batch_size
        self.passes_per_target = passes_per_target
        self.draws_per_batch = draws_per_batch
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.alpha = alpha
        self.beta = beta
        self.graph_threshold = graph_threshold
        self.confidence_threshold = confidence_threshold
        self.pseudo_label_loss = pseudo_label_loss
        self.original_view_loss = original_view_loss
        self.balance_weight = balance_weight
        self.instance_weight = instance_weight
        self.bn_batch_stats = bn_batch_stats
        self.n_negatives = n_negatives
        self.mi_hidden = mi_hidden
        self.n_neighbors = n_neighbors
        self.neighbor_space = neighbor_space
        self.min_steps = min_steps
        self.ablation = ablation
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
        if self.ablation not in (None, *ABLATIONS):
            raise ValueError(f"{name}: unknown ablation {self.ablation!r}; choose one of "
                             + ", ".join(repr(a) for a in ABLATIONS) + " or None")
        for key in ("graph_threshold", "confidence_threshold", "alpha", "beta",
                    "balance_weight", "instance_weight", "weight_decay"):
            if not isinstance(params[key], numbers.Real) or isinstance(params[key], bool):
                raise TypeError(f"{name}: {key}={params[key]!r} must be a number")
        for key in ("graph_threshold", "confidence_threshold"):
            if not 0.0 < params[key] <= 1.0:
                raise ValueError(f"{name}: {key}={params[key]!r} must be in (0, 1]")
        for key in ("alpha", "beta", "balance_weight", "instance_weight", "weight_decay"):
            if params[key] < 0:
                raise ValueError(f"{name}: {key}={params[key]!r} must be >= 0")
        sizes = {key: params[key] for key in ("target_batch_size", "passes_per_target",
                                              "draws_per_batch", "n_negatives", "mi_hidden")}
        check_pretrain_epochs(params["pretrain_epochs"], name)
        sizes["n_init"] = self.n_init
        if self.init_iter is not None:
            sizes["init_iter"] = self.init_iter
        for key, value in sizes.items():
            check_int(value, key, name)
        if params["pseudo_label_loss"] not in ("ce", "bce"):
            raise ValueError(f"{name}: pseudo_label_loss={params['pseudo_label_loss']!r}; "
                             "choose 'ce' or 'bce'")
        return params

    def _build(self, layout: InputLayout, params: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
        backbone = make_backbone(resolve_backbone(self.backbone, layout.sample_shape,
                                                  self.preset),
                                 self.backbone_params, layout.sample_shape,
                                 layout.photographic)
        shallow_channels, n_features = infer_output_shapes(backbone, layout.sample_shape)
        module = DCCMNetwork(backbone, n_features, self.n_clusters)
        if isinstance(self.backbone, str):
            init_kaiming_(module.backbone)
        if params["bn_batch_stats"]:
            use_batch_statistics(module)
        objective = DCCMObjective(
            n_clusters=self.n_clusters, shallow_channels=shallow_channels,
            components=ABLATIONS[self.ablation or "M4"], alpha=params["alpha"],
            beta=params["beta"], graph_threshold=params["graph_threshold"],
            confidence_threshold=params["confidence_threshold"],
            pseudo_label_form=params["pseudo_label_loss"],
            original_view=params["original_view_loss"],
            augmentation=resolve_affine(self.augmentation, layout.sample_shape,
                                        layout.photographic),
            value_range=layout.value_range, balance_weight=params["balance_weight"],
            n_negatives=params["n_negatives"], mi_hidden=params["mi_hidden"],
            instance_weight=params["instance_weight"],
            embedding_dim=module.cluster.in_features,
        )
        # The objective decides which views a step draws (ablation, augmentation, flag).
        if objective.projection is not None and not objective.two_views:
            raise ValueError(
                f"{type(self).__name__}: instance_weight={params['instance_weight']!r} "
                "compares each image with its augmented view; it needs both views: "
                "original_view_loss=True, an augmentation other than 'none' and ablation "
                "M2 or later (or set instance_weight=0)")
        return module, objective

    def _train_spec(self, params: dict[str, Any], n_samples: int,
                    layout: InputLayout) -> TrainSpec:
        batch_size = min(params["batch_size"], n_samples)
        return TrainSpec(
            max_epochs=self._preset_epochs(params, layout), batch_size=batch_size,
            chunk_size=max(min(params["target_batch_size"], n_samples), batch_size),
            passes_per_chunk=params["passes_per_target"],
            steps_per_batch=params["draws_per_batch"], optimizer=params["optimizer"],
            learning_rate=params["learning_rate"], weight_decay=params["weight_decay"],
            lr_schedule=params["lr_schedule"], precision=self.precision, compile=self.compile,
            tol=self.tol, checkpoint_dir=self.checkpoint_dir,
            checkpoint_every=self.checkpoint_every, resume=self.resume,
            verbose=int(self.verbose), fingerprint=self._fingerprint(layout, params),
        )

    def _run_training(self, module: nn.Module, objective: nn.Module, source: ArraySource,
                      spec: TrainSpec, params: dict[str, Any], generator: torch.Generator,
                      device_generator: torch.Generator,
                      collective: Collective = SINGLE_PROCESS,
                      budget: TimeBudget | None = None) -> TrainResult:
        """The optional contrastive warm start, then DCCM's loss (:meth:`_cluster`)."""
        budget = budget or TimeBudget()
        if params["pretrain_epochs"] == 0:
            return self._cluster(module, objective, source, spec, params, generator,
                                 device_generator, collective, budget)
        warm = self._warm_start(module, self._warm_start_objective(module, source, generator),
                                source, spec, params["pretrain_epochs"], generator,
                                device_generator, collective, budget)
        history = list(warm.history)
        if warm.interrupted:
            self.init_losses_, self.best_init_ = np.array([]), 0
            return replace(warm, objective=objective)
        self._mine_feature_neighbours(module, source)
        # Later initialisations (n_init) start from this backbone, not from random weights.
        backbone = ({key: value.clone() for key, value in module.backbone.state_dict().items()}
                    if self.n_init > 1 else None)
        result = self._cluster(module, objective, source, spec, params, generator,
                               device_generator, collective, budget, backbone)
        history += [{**record, "stage": "cluster"} for record in result.history]
        return replace(result, history=history, n_epochs=len(history))

    def _warm_start_objective(self, module: DCCMNetwork, source: ArraySource,
                              generator: torch.Generator) -> ContrastiveWarmStart:
        """NT-Xent on the backbone's features (:mod:`skdccm.pretraining`), on the device."""
        # The projection head's initialisation is seeded too (fit's seed, global RNG forked).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator.initial_seed())
            return ContrastiveWarmStart(
                module.embed[0].in_features,
                resolve_contrastive("auto", source.layout.sample_shape,
                                    source.layout.photographic),
                source.layout.value_range, WARM_START_TEMPERATURE,
            ).to(source.device)

    def _cluster(self, module: nn.Module, objective: nn.Module, source: ArraySource,
                 spec: TrainSpec, params: dict[str, Any], generator: torch.Generator,
                 device_generator: torch.Generator, collective: Collective,
                 budget: TimeBudget, backbone: dict[str, Tensor] | None = None) -> TrainResult:
        """Train ``n_init`` initialisations for ``init_iter`` epochs each, then go on with
        the one whose training loss was lowest (label-free, like KMeans' inertia).

        ``backbone``: the warm-started backbone's weights, which every later
        initialisation loads (the first one trains on from them already).
        """
        callbacks = _as_list(self.callbacks)
        n_init = int(self.n_init)
        init_iter = spec.max_epochs if self.init_iter is None else min(int(self.init_iter),
                                                                        spec.max_epochs)
        resuming = (spec.resume and spec.checkpoint_dir is not None
                    and (Path(spec.checkpoint_dir) / CHECKPOINT_NAME).exists())
        if n_init == 1 or resuming:  # a checkpoint is always of the chosen initialisation
            result = train(module, objective, source, spec, generator, device_generator,
                           callbacks=callbacks, owner=self, collective=collective,
                           budget=budget)
            self.init_losses_ = np.array([result.history[min(init_iter, result.n_epochs) - 1]
                                          ["loss"]]) if result.history else np.array([])
            self.best_init_ = 0
            return result

        # Trials keep no checkpoint and never stop on tol: only the chosen run does.
        trial_spec = replace(spec, checkpoint_dir=None, tol=0.0)
        seed = generator.initial_seed()
        losses: list[float] = []
        best: tuple[TrainResult, torch.Generator, torch.Generator] | None = None
        for i in range(n_init):
            if i > 0:
                if budget.limited and result.history[-1]["elapsed"] >= budget.seconds:
                    budget.cut_short = True  # no time for the other trials
                    break
                trial_seed = (seed + i * INIT_SEED_STRIDE) % (2**31 - 1)
                module, objective = self._seeded_build(source.layout, params, trial_seed,
                                                       source.device)
                if backbone is not None:
                    module.backbone.load_state_dict(backbone)
                generator = torch.Generator().manual_seed(trial_seed)
                device_generator = torch.Generator(device=source.device).manual_seed(
                    trial_seed + 1)
            result = train(module, objective, source, trial_spec, generator, device_generator,
                           owner=self, collective=collective, stop_after=init_iter,
                           budget=budget, plan=TrialShare(n_init - 1 - i, init_iter))
            if result.interrupted:  # Ctrl-C: keep the best complete trial, if any
                return self._end_trials_early(result, best, losses, source, spec.batch_size)
            losses.append(result.history[-1]["loss"])
            if self.verbose and collective.is_main:
                print(f"initialisation {i + 1}/{n_init}: loss {losses[-1]:.4f} after "
                      f"{len(result.history)} epochs", flush=True)
            if best is None or losses[-1] < min(losses[:-1]):
                best = (result, generator, device_generator)
        self.init_losses_ = np.array(losses)
        self.best_init_ = int(np.argmin(losses))
        chosen, generator, device_generator = best
        if chosen.state is None:  # init_iter == max_iter: the trials were whole runs
            return chosen
        return train(chosen.module, chosen.objective, source, spec, generator,
                     device_generator, callbacks=callbacks, owner=self, collective=collective,
                     state=chosen.state, budget=budget)

    def _end_trials_early(self, interrupted: TrainResult,
                          best: tuple[TrainResult, Any, Any] | None, losses: list[float],
                          source: ArraySource, batch_size: int) -> TrainResult:
        """The result of a fit interrupted during the trials of ``n_init``."""
        if best is None:
            self.init_losses_ = np.array([r["loss"] for r in interrupted.history[-1:]])
            self.best_init_ = 0
            return interrupted
        self.init_losses_ = np.array(losses)
        self.best_init_ = int(np.argmin(losses))
        kept = best[0]
        if kept.state is not None:  # paused after init_iter epochs: finish it as train() would
            finish_training(kept.module, kept.objective, source, batch_size)
        return replace(kept, interrupted=True, state=None)

    def _infer(self, module: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        out = module(batch)
        return out.logits.float().softmax(dim=1), out.embedding

    def _reorder_clusters(self, module: nn.Module, order: Tensor) -> None:
        with torch.no_grad():
            for layer in (module.cluster, module.cluster_norm):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensor = getattr(layer, name, None)
                    if tensor is not None:
                        tensor.copy_(tensor[order])

    def _infer_head_input(self, module: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        return self._infer(module, batch)  # the embedding is the head's input

    def _set_head(self, module: nn.Module, weight: Tensor, bias: Tensor) -> None:
        with torch.no_grad():
            module.cluster.weight.copy_(weight)
            module.cluster.bias.copy_(bias)
            # The logits' BatchNorm becomes the identity in eval mode: (x - 0) / sqrt(1).
            norm = module.cluster_norm
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
            if norm.affine:
                norm.weight.fill_(1.0)
                norm.bias.zero_()

