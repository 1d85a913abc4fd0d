"""Instance-contrastive warm start of a backbone: NT-Xent on two augmented views (SimCLR).

DCCM builds its first pseudo-graph from the network it starts with: from random weights,
the first confident groups are whatever the random features group together, and training
then confirms them. A warm start teaches the backbone first which images are views of the
same image, so that the first graph groups look-alikes. CRLC trains its own representation
head with the same loss in its pre-training stage (``CRLCObjective(clustering=False)``);
this objective serves networks without such a head: it brings a projection head of its own,
which is dropped after the stage (as SimCLR and SCAN drop theirs).

The loss itself is :func:`skdccm.losses.nt_xent_loss`; the views are
:func:`skdccm.augment.contrastive_view`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import ContrastiveAugmentation, contrastive_view
from .distributed import SINGLE_PROCESS, Collective
from .losses import nt_xent_loss
from .training import StepResult

#: Width of the projection the NT-Xent loss compares (SimCLR and CRLC: 128).
PROJECTION_DIM = 128


class TwoViewObjective(nn.Module):
    """What the objectives trained on contrastive views share (this warm start and
    :class:`skdccm.crlc.CRLCObjective`): no per-chunk targets, and views drawn by
    :func:`~skdccm.augment.contrastive_view` from ``augmentation`` within ``value_range``
    (attributes the subclass sets)."""

    augmentation: ContrastiveAugmentation | None
    value_range: tuple[float, float]

    def prepare(self, module: nn.Module, images: Tensor,
                collective: Collective = SINGLE_PROCESS) -> None:
        """No per-chunk targets: every step is self-contained."""
        return None

    def view(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """One augmented view (the images themselves without augmentation)."""
        if self.augmentation is None:
            return images
        return contrastive_view(images, self.augmentation, self.value_range, generator)


class ContrastiveWarmStart(TwoViewObjective):
    """NT-Xent between two augmented views of each image, on the backbone's features.

    The objective of a warm-start stage for :func:`skdccm.training.train`: it reads
    ``module.backbone(x)[1]`` (the feature vector every backbone returns) through a
    projection head (Linear F->F, ReLU, Linear F->128, L2-normalised) and trains both.

    Parameters
    ----------
    n_features : int
        Width F of the backbone's feature vector.
    augmentation : ContrastiveAugmentation or None
        The views; None gives identical views (nothing to learn: for tests only).
    value_range : tuple of float
        The images' value range, which the colour transforms keep.
    temperature : float
        NT-Xent temperature.
    """

    #: Read by train(): this stage trains no clustering layer (they stay unused).
    clustering = False
    n_clusters = 0

    def __init__(self, n_features: int, augmentation: ContrastiveAugmentation | None,
                 value_range: tuple[float, float], temperature: float) -> None:
        super().__init__()
        self.augmentation = augmentation
        self.value_range = value_range
        self.temperature = temperature
        self.projection = nn.Sequential(nn.Linear(n_features, n_features), nn.ReLU(inplace=True),
                                        nn.Linear(n_features, PROJECTION_DIM))

    def step(self, module: nn.Module, images: Tensor, targets: None, index: Tensor,
             generator: torch.Generator, collective: Collective = SINGLE_PROCESS,
             partners: Tensor | None = None) -> StepResult:
        """NT-Xent on one minibatch of n images (2n rows through the backbone).

        ``partners``: each image or one of its nearest neighbours; the second view is drawn
        from the partner, a positive pair (as NNCLR pairs neighbours). Data-parallel: the
        projections of both views are gathered, so the negatives are the whole minibatch's.
        """
        view_generator = collective.augmentation_generator(generator)
        second = images if partners is None else partners
        _, features = module.backbone(torch.cat([self.view(images, view_generator),
                                                 self.view(second, view_generator)]))
        projection = F.normalize(self.projection(features.float()), dim=1)        # (2m, P)
        z1, z2 = collective.gather(projection, groups=2).chunk(2)                # (n, P)
        loss = nt_xent_loss(z1, z2, self.temperature)
        return StepResult(loss, {"nt_xent": loss.detach()})
