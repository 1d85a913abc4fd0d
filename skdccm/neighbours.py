"""Nearest neighbours of the training images, mined once before training.

KMeans beats a deep clusterer that starts from random weights on sets with few images per
cluster (faces, objects) because one cluster's images already lie close together in pixel
space: on ORL (40 people, 10 faces each) an image's nearest pixel-space neighbour is the same
person in 95% of cases, on COIL-20 in 99.9%, on the digit sets in 94% to 99%. Pairing each
image with one of its nearest neighbours (as SCAN and NNCLR pair it with neighbours in a
learned feature space) hands that structure to the network from the first step. On colour
photographs pixel neighbours say little (CIFAR-10: 27%), so the estimators mine them for
grey images only unless told otherwise.

The functions are pure: they read a batch source and return index tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import ArraySource, is_photographic
from .validation import check_int

#: Dimensions kept by the PCA that precedes the neighbour search (pixel noise is spread over
#: the rest; 50 components raised the nearest-neighbour agreement on MNIST 5k from 0.944 to 0.956).
N_COMPONENTS = 64

#: Largest neighbour count chosen by ``"auto"``.
MAX_NEIGHBOURS = 20


def auto_neighbour_count(n_samples: int, n_clusters: int, sample_shape: tuple[int, ...],
                         max_cluster_size: int | None = None, learned: bool = False,
                         photographic: bool | None = None) -> int:
    """Neighbours per image for ``n_neighbors="auto"``: a quarter of the mean cluster size
    (at most 20, at least 1) for grey images and flat features, none for colour images.

    A quarter of the cluster size keeps most neighbours inside the cluster when clusters are
    small (ORL: 10 faces a person, 2 neighbours; nearest-neighbour agreement 0.95 for the
    first and 0.71 over 5), while large clusters cap at 20 (agreement 0.84 to 0.94 on the
    digit sets and COIL-20).

    ``max_cluster_size``: none either when the mean cluster size ``n_samples / n_clusters``
    is above it. An estimator whose loss takes a neighbour as a hard positive sets it: with
    enough images a cluster, the network's own augmented views carry the structure and the
    wrong neighbours only add noise (CRLC lost 0.03-0.04 of mean ACC on USPS and MNIST 5k
    with 20 neighbours, 3 seeds; BENCHMARKS.md).

    ``learned``: the neighbours come from a warm-started network's features
    (``neighbor_space="features"``), which know more than the pixels: a quarter of the mean
    cluster size (at most 20) for every kind of sample and cluster size, as SCAN mines 20.

    ``photographic``: whether the images take the defaults for photographs, which include
    no pixel neighbours (``InputLayout.photographic``); None: colour images do.

    Examples
    --------
    >>> from skdccm.neighbours import auto_neighbour_count
    >>> auto_neighbour_count(400, 40, (1, 32, 32)), auto_neighbour_count(5000, 10, (1, 28, 28))
    (2, 20)
    >>> auto_neighbour_count(5000, 10, (3, 32, 32))
    0
    >>> auto_neighbour_count(5000, 10, (1, 28, 28), max_cluster_size=300)
    0
    >>> auto_neighbour_count(5000, 10, (3, 32, 32), max_cluster_size=300, learned=True)
    20
    """
    count = int(min(MAX_NEIGHBOURS, max(1, n_samples // (4 * max(n_clusters, 1)))))
    if learned:
        return count
    if is_photographic(sample_shape, photographic):
        return 0
    if max_cluster_size is not None and n_samples > max_cluster_size * max(n_clusters, 1):
        return 0
    return count


def resolve_neighbour_count(spec: Any, n_samples: int, n_clusters: int,
                            sample_shape: tuple[int, ...], owner: str,
                            max_cluster_size: int | None = None, learned: bool = False,
                            photographic: bool | None = None) -> int:
    """The ``n_neighbors`` parameter as a count, validated (``"auto"`` resolved)."""
    check_int(spec, "n_neighbors", owner, minimum=0, auto=True)
    if isinstance(spec, str):  # "auto", the one string check_int lets through
        count = auto_neighbour_count(n_samples, n_clusters, sample_shape, max_cluster_size,
                                     learned, photographic)
    else:
        count = int(spec)
    return min(count, n_samples - 1)


def check_neighbour_space(spec: Any, warm_start: bool, owner: str) -> None:
    """``neighbor_space`` must be ``"auto"``, ``"pixels"`` or ``"features"``, and
    ``"features"`` needs a warm start. Checked twice in a fit: before the data is read
    (``pretrain_epochs`` not 0) and once ``"auto"`` is resolved for the images."""
    if spec not in ("auto", "pixels", "features"):
        raise ValueError(f"{owner}: neighbor_space={spec!r}; choose 'auto', 'pixels' or "
                         "'features'")
    if spec == "features" and not warm_start:
        raise ValueError(f"{owner}: neighbor_space='features' mines neighbours in the "
                         "warm-started network's features, and this fit has no warm start "
                         "(pretrain_epochs=0, or 'auto' for samples it does not warm-start: "
                         "DCCM warm-starts colour images, CRLC images); pass "
                         "pretrain_epochs as an int or use neighbor_space='pixels'")


def resolve_neighbour_space(spec: str, warm_start: bool, sample_shape: tuple[int, ...],
                            photographic: bool | None = None) -> str:
    """The (checked) ``neighbor_space`` parameter: ``"pixels"`` or ``"features"``.

    ``"auto"``: the warm-started network's features for colour images when the fit
    warm-starts, the pixels otherwise. On grey images the pixels' nearest neighbours show
    the same class in 86-94% of cases at k=20 (digit sets), more than a short warm start's
    features can; on CIFAR-10 they do in 23%, and the features of a 6-epoch warm start in
    28% (DCCM, seed 0). ``photographic``: whether the images take the defaults for
    photographs, features included (``InputLayout.photographic``); None: colour images do.

    Examples
    --------
    >>> from skdccm.neighbours import resolve_neighbour_space
    >>> [resolve_neighbour_space("auto", warm, (3, 32, 32)) for warm in (False, True)]
    ['pixels', 'features']
    >>> resolve_neighbour_space("auto", True, (1, 28, 28))
    'pixels'
    """
    if spec != "auto":
        return spec
    return "features" if warm_start and is_photographic(sample_shape, photographic) else "pixels"


def principal_components(features: Tensor, n_components: int) -> Tensor:
    """Project centred rows onto their top ``n_components`` principal axes.

    Deterministic (an eigendecomposition of the covariance, no random projection), so no
    random state is drawn; features with at most ``n_components`` columns are only centred.
    """
    centred = features - features.mean(dim=0)
    if centred.shape[1] <= n_components:
        return centred
    covariance = centred.T.double() @ centred.double()                  # (d, d)
    _, vectors = torch.linalg.eigh(covariance)                          # ascending order
    return centred @ vectors[:, -n_components:].to(centred.dtype)       # (n, n_components)


def nearest_neighbours(features: Tensor, k: int, batch_size: int = 2048) -> Tensor:
    """Each row's own index followed by its ``k`` nearest other rows (Euclidean).

    Parameters
    ----------
    features : Tensor of shape (n, d)
    k : int
        Neighbours per row, ``0 <= k < n``.
    batch_size : int, default=2048
        Rows whose distances to all rows are computed at once (memory ``batch_size * n``).

    Returns
    -------
    Tensor of shape (n, k + 1), int64
        Column 0 is the row itself; ties are broken by index.

    Examples
    --------
    >>> import torch
    >>> from skdccm.neighbours import nearest_neighbours
    >>> nearest_neighbours(torch.tensor([[0.0], [1.0], [5.0], [5.5]]), 1).tolist()
    [[0, 1], [1, 0], [2, 3], [3, 2]]
    """
    n = features.shape[0]
    if not 0 <= k < n:
        raise ValueError(f"k={k} must be in [0, {n})")
    squared = (features * features).sum(dim=1)                          # (n,)
    rows = []
    for start in range(0, n, batch_size):
        block = features[start:start + batch_size]                      # (b, d)
        distance = squared[start:start + block.shape[0], None] + squared[None] \
            - 2 * block @ features.T                                    # (b, n)
        own = torch.arange(start, start + block.shape[0], device=features.device)
        distance[torch.arange(block.shape[0], device=features.device), own] = float("inf")
        nearest = _k_smallest(distance, k)                               # (b, k)
        rows.append(torch.cat([own[:, None], nearest], dim=1))
    return torch.cat(rows)


def _k_smallest(distance: Tensor, k: int) -> Tensor:
    """Column indices of each row's ``k`` smallest entries, ascending, ties broken by index.

    A top-k selection instead of a full sort: 10 times faster on 12,000 rows (one CPU
    thread), which is what makes feature neighbours of 60,000 images cheap. A device's top-k
    kernel orders equal distances as it likes, so rows with a tie inside their ``k``
    smallest, or at the k-th place, take the stable sort's answer.
    """
    if k == 0:
        return distance.new_empty((distance.shape[0], 0), dtype=torch.long)
    values, nearest = distance.topk(k, dim=1, largest=False, sorted=True)   # (b, k)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1) \
        | ((distance <= values[:, -1:]).sum(dim=1) > k)
    if tied.any():
        nearest[tied] = distance[tied].argsort(dim=1, stable=True)[:, :k]
    return nearest


def pixel_neighbours(source: ArraySource, k: int, n_components: int = N_COMPONENTS,
                     batch_size: int = 4096) -> Tensor:
    """:func:`nearest_neighbours` of the training samples in pixel space, after PCA.

    Returns
    -------
    Tensor of shape (n, k + 1), int64, on ``source.device``
    """
    return nearest_neighbours(pixel_components(source, n_components, batch_size), k)


def pixel_components(source: ArraySource, n_components: int = N_COMPONENTS,
                     batch_size: int = 4096) -> Tensor:
    """The training samples' pixels as the network sees them, flattened and projected on
    their top ``n_components`` principal axes: shape (n, n_components), on
    ``source.device``."""
    flat = torch.cat([batch.flatten(1) for batch in source.batches(batch_size)])  # (n, d)
    return principal_components(flat, n_components)


def feature_neighbours(embed: Callable[[Tensor], Tensor], source: ArraySource, k: int,
                       batch_size: int = 1024) -> Tensor:
    """:func:`nearest_neighbours` of the training samples in a learned feature space.

    SCAN's mining step: after a contrastive warm start, an image's nearest neighbours in the
    network's features show its class far more often than its nearest pixels do on colour
    photographs. Features are L2-normalised first (the contrastive loss compares
    directions), so the Euclidean order is the cosine order.

    Parameters
    ----------
    embed : callable
        Maps a batch of samples to ``(b, d)`` features; called without gradient.
    source : ArraySource
        The training samples.
    k : int
        Neighbours per sample.
    batch_size : int, default=1024
        Samples embedded at once.

    Returns
    -------
    Tensor of shape (n, k + 1), int64, on ``source.device``
    """
    with torch.no_grad():
        features = torch.cat([F.normalize(embed(batch).float(), dim=1)
                              for batch in source.batches(batch_size)])   # (n, d)
    return nearest_neighbours(features, k)
