"""Loss functions and targets of the clustering objectives, as pure functions.

Nothing here holds state or knows the estimators: each function takes tensors and returns
tensors, so each can be tested alone against a float64 reference. Symbols follow the papers.

DCCM: Wu et al., "Deep Comprehensive Correlation Mining for Image Clustering", ICCV 2019.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------------------
# DCCM targets (paper section 3.1, Eqs. 2, 7, 8), computed without gradient
# ----------------------------------------------------------------------------------------


def cosine_similarity_matrix(probs: Tensor, eps: float = 1e-8) -> Tensor:
    """S_ij = <z_i, z_j> / (|z_i| |z_j|) for rows of ``probs`` (N, K); returns (N, N)."""
    unit = probs / probs.norm(dim=1, keepdim=True).clamp_min(eps)   # (N, K)
    return unit @ unit.T                                            # (N, N)


def pseudo_graph(probs: Tensor, threshold: float) -> Tensor:
    """DCCM Eq. 2: W_ij = 1 where the cosine similarity is at least ``thres1``.

    Returns a float (N, N) matrix of zeros and ones; the diagonal is one.
    """
    return (cosine_similarity_matrix(probs) >= threshold).to(probs.dtype)


def pseudo_labels(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """DCCM Eqs. 7 and 8: y_i = argmax_k z_ik and V_i = [max_k z_ik >= thres2].

    Returns ``labels`` (N,) int64 and ``confident`` (N,) bool.
    """
    confidence, labels = probs.max(dim=1)                            # (N,), (N,)
    return labels, confidence >= threshold


# ----------------------------------------------------------------------------------------
# DCCM losses (Eqs. 3, 9, 12, 13-15)
# ----------------------------------------------------------------------------------------


def pseudo_graph_loss(
    probs: Tensor, graph: Tensor, *, scale_by_max: bool = False, eps: float = 1e-7
) -> Tensor:
    """DCCM Eq. 3: binary cross-entropy between prediction similarities and the pseudo-graph.

    Parameters
    ----------
    probs : Tensor of shape (n, K)
        Softmax outputs of the minibatch.
    graph : Tensor of shape (n, n)
        Pseudo-graph W restricted to the minibatch (0/1).
    scale_by_max : bool, default=False
        Divide the similarity matrix by its largest entry first, as the released code does.
    eps : float
        Clamp for the logarithms.

    Returns
    -------
    Tensor of shape ()
        Mean over all n^2 pairs.
    """
    sim = cosine_similarity_matrix(probs)                           # (n, n)
    if scale_by_max:
        sim = sim / sim.max().clamp_min(eps)
    sim = sim.clamp(eps, 1.0 - eps)
    return F.binary_cross_entropy(sim, graph.to(sim.dtype))


def pseudo_label_loss(
    logits: Tensor, labels: Tensor, confident: Tensor, *, form: str = "ce"
) -> Tensor:
    """DCCM Eq. 9: loss between predictions and confident pseudo-labels.

    Parameters
    ----------
    logits : Tensor of shape (n, K)
        Pre-softmax outputs.
    labels : Tensor of shape (n,)
        Pseudo-labels y_i.
    confident : Tensor of shape (n,)
        Mask V_i.
    form : {"ce", "bce"}
        ``"ce"``: cross-entropy, as the paper says. ``"bce"``: the released code's per-class
        binary cross-entropy between softmax and the one-hot label, averaged over K.

    Returns
    -------
    Tensor of shape ()
        Sum over confident samples divided by n (Eq. 9 sums V_i terms; dividing by the
        minibatch size keeps alpha independent of it, and gives a small loss while few
        samples are confident). Zero when none is confident.
    """
    n = logits.shape[0]
    if form == "ce":
        per_sample = F.cross_entropy(logits, labels, reduction="none")            # (n,)
    elif form == "bce":
        probs = logits.softmax(dim=1).clamp(1e-7, 1 - 1e-7)                       # (n, K)
        onehot = F.one_hot(labels, logits.shape[1]).to(probs.dtype)               # (n, K)
        per_sample = F.binary_cross_entropy(probs, onehot, reduction="none").mean(1)
    else:
        raise ValueError(f"pseudo_label_loss form must be 'ce' or 'bce', got {form!r}")
    return (per_sample * confident.to(per_sample.dtype)).sum() / n


def sample_triplets(
    graph: Tensor, n_negatives: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw, for each anchor, one pseudo-graph neighbour and ``n_negatives`` non-neighbours.

    Each is drawn uniformly at random (negatives without replacement) from the right set:
    neighbours are ``W_ij = 1, j != i``; negatives are ``W_ij = 0``.

    Parameters
    ----------
    graph : Tensor of shape (n, n)
        Pseudo-graph of the minibatch.
    n_negatives : int
        Non-neighbours per anchor.
    generator : torch.Generator, optional
        Source of randomness, on ``graph``'s device.

    Returns
    -------
    neighbour : Tensor of shape (n,)
        Index of a neighbour; the anchor itself where it has none.
    has_neighbour : Tensor of shape (n,) bool
    negatives : Tensor of shape (n, n_negatives)
        Indices of non-neighbours (arbitrary where ``has_negative`` is False).
    has_negative : Tensor of shape (n, n_negatives) bool
    """
    n = graph.shape[0]
    linked = graph > 0.5                                                           # (n, n)
    eye = torch.eye(n, dtype=torch.bool, device=graph.device)
    neighbours = linked & ~eye
    # Uniform draws from a set: the largest of i.i.d. uniform scores restricted to the set.
    scores = torch.rand(n, n, generator=generator, device=graph.device)           # (n, n)
    has_neighbour = neighbours.any(dim=1)                                         # (n,)
    neighbour = torch.where(neighbours, scores, -1.0).argmax(dim=1)               # (n,)
    neighbour = torch.where(has_neighbour, neighbour, torch.arange(n, device=graph.device))
    scores = torch.rand(n, n, generator=generator, device=graph.device)
    k = min(n_negatives, n)
    top = torch.where(~linked, scores, -1.0).topk(k, dim=1)                       # (n, k)
    return neighbour, has_neighbour, top.indices, top.values >= 0


def jsd_mutual_information_loss(positive: Tensor, negative: Tensor) -> Tensor:
    """Deep InfoMax's Jensen-Shannon MI estimator, as a loss to minimise.

    ``mean softplus(-T(positive)) + mean softplus(T(negative))``; both inputs are
    discriminator scores of any shape (empty allowed: that term is then zero).
    """
    pos = F.softplus(-positive).mean() if positive.numel() else positive.new_zeros(())
    neg = F.softplus(negative).mean() if negative.numel() else negative.new_zeros(())
    return pos + neg


def marginal_entropy(probs: Tensor, eps: float = 1e-8) -> Tensor:
    """Entropy H(p_bar) of the batch-marginal cluster distribution p_bar = mean_i p_i.

    Not the mean of per-sample entropies: maximising this spreads samples over clusters,
    maximising the other would make every prediction uniform.
    """
    marginal = probs.mean(dim=0)                                                   # (K,)
    return -(marginal * (marginal + eps).log()).sum()


def balance_loss(probs: Tensor) -> Tensor:
    """log K - H(p_bar): zero when clusters are used equally, log K when one takes all."""
    return math.log(probs.shape[1]) - marginal_entropy(probs)
