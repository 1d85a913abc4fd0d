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
    """Cosine similarity of every pair of rows, DCCM's ``S_ij``.

    ``S_ij = <z_i, z_j> / (|z_i| |z_j|)``.

    Parameters
    ----------
    probs : Tensor of shape (N, K)
        Rows z_i (softmax outputs in DCCM).
    eps : float, default=1e-8
        Smallest norm used in the division (all-zero rows get similarity 0).

    Returns
    -------
    Tensor of shape (N, N)
        Similarities; the diagonal is 1 for non-zero rows.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import cosine_similarity_matrix
    >>> z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [2.0, 0.0]])
    >>> cosine_similarity_matrix(z)
    tensor([[1.0000, 0.6000, 1.0000],
            [0.6000, 1.0000, 0.6000],
            [1.0000, 0.6000, 1.0000]])
    """
    # Autocast off: in bf16 or fp16 every similarity above 0.998 rounds to 1, which the
    # pseudo-graph's threshold (0.95) cannot resolve and whose BCE clamp (1 - 1e-7) rounds
    # back to 1, so log(1 - S) gave a NaN loss at every step.
    with torch.autocast(device_type=probs.device.type, enabled=False):
        probs = probs.to(torch.promote_types(probs.dtype, torch.float32))  # float64 stays
        unit = probs / probs.norm(dim=1, keepdim=True).clamp_min(eps)   # (N, K)
        return unit @ unit.T                                            # (N, N)


def pseudo_graph(probs: Tensor, threshold: float) -> Tensor:
    """DCCM Eq. 2: the pseudo-graph, ``W_ij = 1`` where ``S_ij >= thres1``.

    Parameters
    ----------
    probs : Tensor of shape (N, K)
        Softmax outputs z_i of a target batch.
    threshold : float
        thres1 (paper: 0.95).

    Returns
    -------
    Tensor of shape (N, N)
        Zeros and ones in ``probs``'s dtype; the diagonal is one.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import pseudo_graph
    >>> probs = torch.tensor([[0.98, 0.02], [0.95, 0.05], [0.10, 0.90]])
    >>> pseudo_graph(probs, threshold=0.95)
    tensor([[1., 1., 0.],
            [1., 1., 0.],
            [0., 0., 1.]])
    """
    return (cosine_similarity_matrix(probs) >= threshold).to(probs.dtype)


def pseudo_labels(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """DCCM Eqs. 7 and 8: pseudo-labels and which of them are confident.

    ``y_i = argmax_k z_ik`` and ``V_i = [max_k z_ik >= thres2]``.

    Parameters
    ----------
    probs : Tensor of shape (N, K)
        Softmax outputs z_i of a target batch.
    threshold : float
        thres2 (paper: 0.9).

    Returns
    -------
    labels : Tensor of shape (N,)
        Pseudo-labels y_i (int64).
    confident : Tensor of shape (N,)
        V_i (bool).

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import pseudo_labels
    >>> labels, confident = pseudo_labels(torch.tensor([[0.95, 0.05], [0.4, 0.6]]), 0.9)
    >>> labels, confident
    (tensor([0, 1]), tensor([ True, False]))
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

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import pseudo_graph, pseudo_graph_loss
    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    >>> graph = pseudo_graph(probs, threshold=0.95)       # links samples 0 and 1
    >>> pseudo_graph_loss(probs, graph)
    tensor(0.1522)
    >>> one_hot = torch.eye(2)[[0, 0, 1]]                 # predictions that fit the graph
    >>> pseudo_graph_loss(one_hot, graph) < 1e-6
    tensor(True)
    """
    sim = cosine_similarity_matrix(probs)                           # (n, n)
    if scale_by_max:
        sim = sim / sim.max().clamp_min(eps)
    sim = sim.clamp(eps, 1.0 - eps)
    return _binary_cross_entropy(sim, graph.to(sim.dtype)).mean()


def _binary_cross_entropy(probs: Tensor, target: Tensor) -> Tensor:
    """Element-wise BCE of probabilities already clamped away from 0 and 1.

    Written out rather than ``F.binary_cross_entropy``, which raises a RuntimeError on NaN
    input: a diverged network must reach the training loop's FloatingPointError instead.
    """
    return -(target * probs.log() + (1.0 - target) * (1.0 - probs).log())


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

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import pseudo_label_loss
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    >>> labels = torch.tensor([0, 1, 0])
    >>> confident = torch.tensor([True, True, False])      # the third sample is ignored
    >>> pseudo_label_loss(logits, labels, confident)
    tensor(0.1115)
    >>> pseudo_label_loss(logits, labels, confident, form="bce")
    tensor(0.0725)
    """
    n = logits.shape[0]
    if form == "ce":
        per_sample = F.cross_entropy(logits, labels, reduction="none")            # (n,)
    elif form == "bce":
        probs = logits.softmax(dim=1).clamp(1e-7, 1 - 1e-7)                       # (n, K)
        onehot = F.one_hot(labels, logits.shape[1]).to(probs.dtype)               # (n, K)
        per_sample = _binary_cross_entropy(probs, onehot).mean(1)                  # (n,)
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
    has_neighbour : Tensor of shape (n,)
        Whether the anchor has a neighbour (bool).
    negatives : Tensor of shape (n, min(n_negatives, n))
        Indices of non-neighbours (arbitrary where ``has_negative`` is False).
    has_negative : Tensor of shape (n, min(n_negatives, n))
        Whether each negative slot holds a real non-neighbour (bool).

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import sample_triplets
    >>> graph = torch.tensor([[1., 1., 0.], [1., 1., 0.], [0., 0., 1.]])
    >>> gen = torch.Generator().manual_seed(0)
    >>> neighbour, has_neighbour, negatives, has_negative = sample_triplets(graph, 1, gen)
    >>> neighbour, has_neighbour
    (tensor([1, 0, 2]), tensor([ True,  True, False]))
    >>> negatives[:2, 0]
    tensor([2, 2])
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


def jsd_mutual_information_loss(
    positive: Tensor, negative: Tensor, *, n_positive: Tensor | int | None = None,
    n_negative: Tensor | int | None = None,
) -> Tensor:
    """Deep InfoMax's Jensen-Shannon MI estimator, as a loss to minimise (DCCM Eq. 14).

    ``mean softplus(-T(positive)) + mean softplus(T(negative))``.

    Parameters
    ----------
    positive : Tensor of any shape
        Discriminator scores of positive pairs (an image's deep feature with its own or a
        neighbour's shallow map, at every position). Empty: that term is zero.
    negative : Tensor of any shape
        Scores of negative pairs. Empty: that term is zero.
    n_positive, n_negative : int or Tensor, optional
        Divide the sums by these counts instead of the scores' own: the scores are then a
        part of a larger set (data-parallel training), and the parts' losses add up to the
        whole set's.

    Returns
    -------
    Tensor of shape ()
        The loss; ``2 log 2`` when every score is 0.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import jsd_mutual_information_loss
    >>> jsd_mutual_information_loss(torch.zeros(4), torch.zeros(6))
    tensor(1.3863)
    >>> jsd_mutual_information_loss(torch.full((4,), 20.0), torch.full((6,), -20.0))
    tensor(4.1223e-09)
    """
    if n_positive is None and n_negative is None:
        pos = F.softplus(-positive).mean() if positive.numel() else positive.new_zeros(())
        neg = F.softplus(negative).mean() if negative.numel() else negative.new_zeros(())
        return pos + neg
    pos = F.softplus(-positive).sum() / torch.as_tensor(n_positive).clamp_min(1)
    neg = F.softplus(negative).sum() / torch.as_tensor(n_negative).clamp_min(1)
    return pos + neg


def marginal_entropy(probs: Tensor, eps: float = 1e-8) -> Tensor:
    """Entropy ``H(p_bar)`` of the batch-marginal cluster distribution ``p_bar = mean_i p_i``.

    Not the mean of per-sample entropies: maximising this spreads samples over clusters,
    maximising the other would make every prediction uniform.

    Parameters
    ----------
    probs : Tensor of shape (N, K)
        Cluster probabilities of a batch.
    eps : float, default=1e-8
        Added inside the logarithm.

    Returns
    -------
    Tensor of shape ()
        In ``[0, log K]``; ``log K`` when the batch uses all clusters equally.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import marginal_entropy
    >>> one_hot = torch.eye(4)                      # four samples, one per cluster
    >>> marginal_entropy(one_hot)                   # log 4
    tensor(1.3863)
    >>> marginal_entropy(one_hot[[0, 0, 0, 0]]).abs() < 1e-6   # all in one cluster
    tensor(True)
    """
    marginal = probs.mean(dim=0)                                                   # (K,)
    return -(marginal * (marginal + eps).log()).sum()


def balance_loss(probs: Tensor) -> Tensor:
    """Balance term ``log K - H(p_bar)``, an addition of skdccm to DCCM's loss.

    Parameters
    ----------
    probs : Tensor of shape (N, K)
        Cluster probabilities of a batch.

    Returns
    -------
    Tensor of shape ()
        Zero when the batch uses all clusters equally, ``log K`` when one takes all.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import balance_loss
    >>> balance_loss(torch.eye(4)).abs() < 1e-6
    tensor(True)
    >>> balance_loss(torch.eye(4)[[2, 2, 2, 2]])
    tensor(1.3863)
    """
    return math.log(probs.shape[1]) - marginal_entropy(probs)


# ----------------------------------------------------------------------------------------
# CRLC losses (Do et al., ICCV 2021)
# ----------------------------------------------------------------------------------------
#
# Do, Tran, Venkatesh, "Clustering by Maximizing Mutual Information Across Views",
# ICCV 2021. Two views of each of B images give 2B rows; row a's positive is row
# (a + B) mod 2B, its other view, and every other row is a negative.


def _positive_index(n_pairs: int, device: torch.device) -> Tensor:
    """Index of each row's other view among ``2 * n_pairs`` rows stacked view by view."""
    rows = torch.arange(2 * n_pairs, device=device)                               # (2B,)
    return (rows + n_pairs) % (2 * n_pairs)


def _contrastive_from_scores(scores: Tensor) -> Tensor:
    """InfoNCE per row from log-scores ``(..., 2B, 2B)``, the diagonal excluded.

    ``l_a = -score(a, a+) + log sum_{k != a} exp score(a, k)``; returns ``(..., 2B)``.
    """
    n_rows = scores.shape[-1]
    eye = torch.eye(n_rows, dtype=torch.bool, device=scores.device)
    scores = scores.masked_fill(eye, float("-inf"))                               # (..., 2B, 2B)
    positive = _positive_index(n_rows // 2, scores.device)                        # (2B,)
    pos = scores.gather(-1, positive.expand(*scores.shape[:-1])[..., None])[..., 0]   # (..., 2B)
    return scores.logsumexp(dim=-1) - pos


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """CRLC's feature-contrastive loss L_FC: NT-Xent (SimCLR) between two views.

    Parameters
    ----------
    z1, z2 : Tensor of shape (B, D)
        Representation-head outputs of the two views, L2-normalised (the critic is then the
        cosine similarity divided by ``temperature``).
    temperature : float, default=0.1
        tau in ``s(a, k) = z_a . z_k / tau`` (CRLC's setting).

    Returns
    -------
    Tensor of shape ()
        ``mean_a [-s(a, a+) + log sum_{k != a} exp s(a, k)]`` over the 2B rows.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import nt_xent_loss
    >>> z = torch.eye(3)             # three orthogonal unit vectors, the same in both views
    >>> round(float(nt_xent_loss(z, z)), 4)          # log(1 + 4 exp(-1 / 0.1))
    0.0002
    """
    # Autocast off: at temperature 0.1 a bf16 similarity matrix would err by about 0.04.
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = torch.cat([z1, z2]).float()                                           # (2B, D)
        return _contrastive_from_scores(z @ z.T / temperature).mean()


def smooth_probabilities(probs: Tensor, smoothing: float = 0.01) -> Tensor:
    """Mix each prediction with the uniform distribution, as CRLC's critic needs.

    ``p~ = (1 - smoothing) p + smoothing / K`` keeps every log-of-dot-product finite.

    Parameters
    ----------
    probs : Tensor of shape (..., K)
        Probabilities over K clusters.
    smoothing : float, default=0.01
        Weight of the uniform distribution.

    Returns
    -------
    Tensor of shape (..., K)
        Smoothed probabilities (rows still sum to one).

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import smooth_probabilities
    >>> smooth_probabilities(torch.tensor([[1.0, 0.0]]), smoothing=0.1)
    tensor([[0.9500, 0.0500]])
    """
    return (1.0 - smoothing) * probs + smoothing / probs.shape[-1]


def probability_contrastive_loss(p1: Tensor, p2: Tensor, smoothing: float = 0.01) -> Tensor:
    """CRLC's probability-contrastive loss L_PC with the log-of-dot-product critic.

    ``f(a, k) = log(p~_a . p~_k)`` with no temperature, so
    ``l_a = -log(p~_a . p~_a+ / sum_{k != a} p~_a . p~_k)``. Computed in float32 with autocast
    off: bf16 dot products of near one-hot vectors lose the small negatives that matter.

    Parameters
    ----------
    p1, p2 : Tensor of shape (..., B, K)
        Softmax outputs of the two views; leading dimensions (e.g. the sub-heads) are kept.
    smoothing : float, default=0.01
        Weight of the uniform distribution mixed into each prediction.

    Returns
    -------
    Tensor of shape (...)
        Mean over the 2B rows, one value per leading index (a scalar for 2-D inputs).
        Identical one-hot views with batch cluster proportions pi and no smoothing give
        ``sum_c pi_c log(2B pi_c - 1)``, about ``log(2B) - H(pi)``; uniform outputs give
        ``log(2B - 1)``.

    Examples
    --------
    >>> import math, torch
    >>> from skdccm.losses import probability_contrastive_loss
    >>> uniform = torch.full((4, 3), 1 / 3)                 # B = 4
    >>> probability_contrastive_loss(uniform, uniform), round(math.log(2 * 4 - 1), 4)
    (tensor(1.9459), 1.9459)
    >>> one_hot = torch.eye(2)[[0, 0, 1, 1]]                # two clusters, pi = (1/2, 1/2)
    >>> probability_contrastive_loss(one_hot, one_hot, smoothing=0.0)   # log(2B/2 - 1)
    tensor(1.0986)
    """
    with torch.autocast(device_type=p1.device.type, enabled=False):
        p = smooth_probabilities(torch.cat([p1, p2], dim=-2).float(), smoothing)  # (..., 2B, K)
        log_dot = (p @ p.transpose(-1, -2)).log()                                 # (..., 2B, 2B)
        return _contrastive_from_scores(log_dot).mean(dim=-1)                     # (...)


def two_view_marginal_entropy(p1: Tensor, p2: Tensor) -> Tensor:
    """CRLC's entropy bonus: ``(H(p_bar1) + H(p_bar2)) / 2`` of the batch marginals.

    Parameters
    ----------
    p1, p2 : Tensor of shape (..., B, K)
        Softmax outputs of the two views; leading dimensions are kept.

    Returns
    -------
    Tensor of shape (...)
        The entropy of each view's batch-marginal distribution (see
        :func:`marginal_entropy`), averaged over the two views.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import two_view_marginal_entropy
    >>> view1 = torch.eye(4)                 # four clusters used: log 4
    >>> view2 = torch.eye(4)[[0, 0, 1, 1]]   # two clusters used: log 2
    >>> two_view_marginal_entropy(view1, view2)
    tensor(1.0397)
    """
    def entropy(probs: Tensor) -> Tensor:
        flat = probs.reshape(-1, *probs.shape[-2:])                               # (L, B, K)
        values = torch.stack([marginal_entropy(p) for p in flat])                 # (L,)
        return values.reshape(probs.shape[:-2])                                   # (...)

    return 0.5 * (entropy(p1.float()) + entropy(p2.float()))


def logit_bound_penalty(logits: Tensor, bound: float = 25.0) -> tuple[Tensor, Tensor]:
    """Quadratic hinges keeping logits within ``[-bound, bound]`` (CRLC's P_lo and P_hi).

    Parameters
    ----------
    logits : Tensor of shape (..., B, K)
        Clustering-head logits.
    bound : float, default=25
        Half-width of the allowed interval; the penalty and its gradient are zero inside.

    Returns
    -------
    lower, upper : Tensor of shape (...)
        ``mean relu(-bound - logit)^2`` and ``mean relu(logit - bound)^2`` over the batch
        and the K logits.

    Examples
    --------
    >>> import torch
    >>> from skdccm.losses import logit_bound_penalty
    >>> logit_bound_penalty(torch.tensor([[30.0, 0.0], [-27.0, 5.0]]), bound=25.0)
    (tensor(1.), tensor(6.2500))
    """
    logits = logits.float()
    lower = F.relu(-bound - logits).square().mean(dim=(-2, -1))                   # (...)
    upper = F.relu(logits - bound).square().mean(dim=(-2, -1))                    # (...)
    return lower, upper
