"""Tests of the DCCM part of skdccm.losses (the CRLC part is in test_losses_crlc.py).

Each loss is compared with a loop-based float64 NumPy version written here from the paper's
formula (Wu et al., ICCV 2019, Eqs. 2, 3, 7-9, 13-14), then checked on closed-form cases and
invariances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skdccm.losses import (
    balance_loss,
    cosine_similarity_matrix,
    jsd_mutual_information_loss,
    marginal_entropy,
    pseudo_graph,
    pseudo_graph_loss,
    pseudo_label_loss,
    pseudo_labels,
    sample_triplets,
)

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def softmax_rows(rng: np.random.Generator, n: int, k: int, scale: float = 3.0) -> np.ndarray:
    logits = rng.normal(scale=scale, size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_graph(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """A symmetric 0/1 graph with ones on the diagonal, like a pseudo-graph."""
    upper = np.triu(rng.random((n, n)) < p, 1)
    graph = (upper | upper.T).astype(np.float64)
    np.fill_diagonal(graph, 1.0)
    return graph


# ---------------------------------------------------------------------------------------
# float64 references, written from the paper with plain loops
# ---------------------------------------------------------------------------------------


def ref_cosine(z: np.ndarray) -> np.ndarray:
    n, k = z.shape
    s = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dot = sum(z[i, t] * z[j, t] for t in range(k))
            norms = math.sqrt(sum(v * v for v in z[i])) * math.sqrt(sum(v * v for v in z[j]))
            s[i, j] = dot / norms
    return s


def ref_graph_loss(z: np.ndarray, w: np.ndarray, scale_by_max: bool = False,
                   eps: float = 1e-7) -> float:
    """Eq. 3 with binary cross-entropy, averaged over the n^2 pairs."""
    s = ref_cosine(z)
    if scale_by_max:
        s = s / s.max()
    n = len(z)
    total = 0.0
    for i in range(n):
        for j in range(n):
            sij = min(max(s[i, j], eps), 1 - eps)
            total -= w[i, j] * math.log(sij) + (1 - w[i, j]) * math.log(1 - sij)
    return total / n**2


def ref_label_loss(logits: np.ndarray, labels: np.ndarray, confident: np.ndarray,
                   form: str) -> float:
    """Eq. 9: sum over confident samples of the loss against y_i, divided by n."""
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        if not confident[i]:
            continue
        m = max(logits[i])
        denom = sum(math.exp(v - m) for v in logits[i])
        p = [math.exp(v - m) / denom for v in logits[i]]
        if form == "ce":
            total += -math.log(p[labels[i]])
        else:  # released code: per-class BCE against the one-hot label, mean over K
            bce = 0.0
            for t in range(k):
                pt = min(max(p[t], 1e-7), 1 - 1e-7)
                target = 1.0 if t == labels[i] else 0.0
                bce -= target * math.log(pt) + (1 - target) * math.log(1 - pt)
            total += bce / k
    return total / n


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def ref_jsd(positive: np.ndarray, negative: np.ndarray) -> float:
    """Eq. 14: -MI_JSD = E_J[sp(-T)] + E_M[sp(T)]."""
    pos = [softplus(-v) for v in positive.ravel()]
    neg = [softplus(v) for v in negative.ravel()]
    return (sum(pos) / len(pos) if pos else 0.0) + (sum(neg) / len(neg) if neg else 0.0)


def ref_marginal_entropy(p: np.ndarray) -> float:
    n, k = p.shape
    marginal = [sum(p[i, t] for i in range(n)) / n for t in range(k)]
    return -sum(m * math.log(m) for m in marginal if m > 0)


# ---------------------------------------------------------------------------------------
# targets: cosine similarity, pseudo-graph, pseudo-labels
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cosine_similarity_matches_reference(dtype):
    z = softmax_rows(np.random.default_rng(0), 12, 5)
    got = cosine_similarity_matrix(torch.tensor(z, dtype=dtype))
    assert got.shape == (12, 12) and got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), ref_cosine(z), rtol=RTOL[dtype],
                               atol=ATOL[dtype])


def test_cosine_similarity_is_scale_invariant_and_safe_for_zero_rows():
    z = torch.tensor(softmax_rows(np.random.default_rng(1), 6, 4))
    scaled = z * torch.tensor([[1.0], [2.0], [0.5], [10.0], [3.0], [7.0]], dtype=z.dtype)
    torch.testing.assert_close(cosine_similarity_matrix(scaled), cosine_similarity_matrix(z))
    with_zero = torch.cat([z, torch.zeros(1, 4, dtype=z.dtype)])
    sim = cosine_similarity_matrix(with_zero)
    assert torch.isfinite(sim).all()
    assert torch.equal(sim[-1], torch.zeros(7, dtype=z.dtype))


def test_pseudo_graph_matches_threshold_of_reference():
    rng = np.random.default_rng(2)
    z = softmax_rows(rng, 30, 3, scale=4.0)
    s = ref_cosine(z)
    threshold = 0.9
    # keep the check away from ties that float rounding could flip
    assert np.abs(s - threshold).min() > 1e-9
    graph = pseudo_graph(torch.tensor(z), threshold)
    expected = (s >= threshold).astype(np.float64)
    np.testing.assert_array_equal(graph.numpy(), expected)
    assert 0 < expected.sum() - 30 < 30 * 29  # some but not all pairs are linked
    assert graph.dtype == torch.float64
    assert torch.equal(graph, graph.T)
    assert torch.equal(graph.diagonal(), torch.ones(30, dtype=graph.dtype))


def test_pseudo_graph_of_one_hot_rows_links_same_cluster():
    labels = torch.tensor([0, 2, 1, 2, 0, 0])
    probs = torch.nn.functional.one_hot(labels, 3).double()
    expected = (labels[:, None] == labels[None, :]).double()
    assert torch.equal(pseudo_graph(probs, 0.95), expected)


def test_pseudo_graph_is_equivariant_to_sample_order():
    z = torch.tensor(softmax_rows(np.random.default_rng(3), 20, 4, scale=5.0))
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pseudo_graph(z[perm], 0.8), pseudo_graph(z, 0.8)[perm][:, perm])


def test_pseudo_labels_argmax_and_confidence():
    probs = torch.tensor([[0.05, 0.95, 0.0], [0.5, 0.3, 0.2], [0.0, 0.1, 0.9],
                          [0.2, 0.2, 0.6]])
    labels, confident = pseudo_labels(probs, 0.9)
    assert labels.dtype == torch.int64 and confident.dtype == torch.bool
    assert labels.tolist() == [1, 0, 2, 2]
    assert confident.tolist() == [True, False, True, False]  # 0.9 itself counts (>=)


def test_pseudo_labels_random_against_numpy():
    z = softmax_rows(np.random.default_rng(4), 50, 6)
    labels, confident = pseudo_labels(torch.tensor(z), 0.7)
    np.testing.assert_array_equal(labels.numpy(), z.argmax(axis=1))
    np.testing.assert_array_equal(confident.numpy(), z.max(axis=1) >= 0.7)
    assert 0 < confident.sum() < 50


# ---------------------------------------------------------------------------------------
# pseudo-graph loss (Eq. 3)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_by_max", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pseudo_graph_loss_matches_reference(dtype, scale_by_max):
    rng = np.random.default_rng(5)
    z = softmax_rows(rng, 10, 4)
    w = random_graph(rng, 10, 0.3)
    got = pseudo_graph_loss(torch.tensor(z, dtype=dtype), torch.tensor(w, dtype=dtype),
                            scale_by_max=scale_by_max)
    assert got.shape == () and got.dtype == dtype
    np.testing.assert_allclose(float(got), ref_graph_loss(z, w, scale_by_max),
                               rtol=RTOL[dtype] * 10)


def test_pseudo_graph_loss_scale_by_max_is_a_no_op_on_cosine_similarities():
    # Cosine similarities peak at exactly 1 on the diagonal, so the released code's division
    # by the maximum changes nothing for non-zero predictions (it would for raw dot products).
    rng = np.random.default_rng(6)
    z = torch.tensor(softmax_rows(rng, 8, 3))
    w = torch.tensor(random_graph(rng, 8, 0.4))
    torch.testing.assert_close(pseudo_graph_loss(z, w, scale_by_max=True),
                               pseudo_graph_loss(z, w), rtol=1e-12, atol=0)


def test_pseudo_graph_loss_closed_forms():
    eps = 1e-7
    labels = torch.tensor([0, 1, 1, 2, 0])
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    agree = (labels[:, None] == labels[None, :]).double()
    # Predictions that reproduce the graph exactly: only the clamp remains, -log(1 - eps).
    np.testing.assert_allclose(float(pseudo_graph_loss(onehot, agree)), -math.log(1 - eps),
                               rtol=1e-6)
    # Everything linked but every prediction orthogonal to the others: off-diagonal pairs
    # cost -log(eps), the diagonal -log(1 - eps).
    everything = torch.ones(5, 5, dtype=torch.float64)
    distinct = torch.eye(5, dtype=torch.float64)
    expected = (20 * -math.log(eps) + 5 * -math.log(1 - eps)) / 25
    np.testing.assert_allclose(float(pseudo_graph_loss(distinct, everything)), expected,
                               rtol=1e-9)


def test_pseudo_graph_loss_is_invariant_to_cluster_permutation_and_sample_order():
    rng = np.random.default_rng(7)
    z = torch.tensor(softmax_rows(rng, 9, 5))
    w = torch.tensor(random_graph(rng, 9, 0.3))
    base = pseudo_graph_loss(z, w)
    columns = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(pseudo_graph_loss(z[:, columns], w), base)
    rows = torch.tensor([8, 2, 5, 0, 1, 7, 3, 6, 4])
    torch.testing.assert_close(pseudo_graph_loss(z[rows], w[rows][:, rows]), base)


def test_pseudo_graph_loss_gradient_is_finite_and_correct():
    rng = np.random.default_rng(8)
    z = torch.tensor(softmax_rows(rng, 6, 3), requires_grad=True)
    w = torch.tensor(random_graph(rng, 6, 0.4))
    assert torch.autograd.gradcheck(lambda p: pseudo_graph_loss(p, w), (z,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pseudo_graph_and_its_loss_are_float32_under_autocast(dtype):
    # In bf16, similarities above 0.998 round to 1 and the clamp's 1 - 1e-7 rounds back to
    # 1: log(1 - S) made the loss NaN at every step of a bf16 fit.
    rng = np.random.default_rng(9)
    z = torch.tensor(softmax_rows(rng, 12, 2), dtype=torch.float32)
    z[:2] = torch.tensor([[0.7, 0.3], [0.68, 0.32]])    # S = 0.99937: 1.0 in bf16 and fp16
    graph, loss = pseudo_graph(z, 0.9999), pseudo_graph_loss(z, torch.eye(12))
    assert graph[0, 1] == 0
    with torch.autocast(device_type="cpu", dtype=dtype):
        autocast_graph = pseudo_graph(z, 0.9999)
        autocast_loss = pseudo_graph_loss(z, torch.eye(12))
    assert autocast_loss.dtype == torch.float32 and torch.isfinite(autocast_loss)
    torch.testing.assert_close(autocast_loss, loss)
    assert torch.equal(autocast_graph, graph)


def test_pseudo_graph_loss_propagates_nan_instead_of_raising():
    # A diverged network must reach the training loop's FloatingPointError.
    z = torch.full((4, 3), float("nan"))
    assert torch.isnan(pseudo_graph_loss(z, torch.eye(4)))


# ---------------------------------------------------------------------------------------
# pseudo-label loss (Eq. 9)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["ce", "bce"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pseudo_label_loss_matches_reference(form, dtype):
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=2.0, size=(16, 5))
    labels = rng.integers(0, 5, size=16)
    confident = rng.random(16) < 0.5
    got = pseudo_label_loss(torch.tensor(logits, dtype=dtype), torch.tensor(labels),
                            torch.tensor(confident), form=form)
    assert got.shape == () and got.dtype == dtype
    np.testing.assert_allclose(float(got), ref_label_loss(logits, labels, confident, form),
                               rtol=RTOL[dtype] * 10)


@pytest.mark.parametrize("form", ["ce", "bce"])
def test_pseudo_label_loss_is_zero_without_confident_samples(form):
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = pseudo_label_loss(logits, torch.zeros(8, dtype=torch.long),
                             torch.zeros(8, dtype=torch.bool), form=form)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("form", ["ce", "bce"])
def test_pseudo_label_loss_divides_by_minibatch_size(form):
    # Adding unconfident samples changes n but not the sum: the loss scales by n / (n + m).
    rng = np.random.default_rng(10)
    logits = torch.tensor(rng.normal(size=(6, 3)))
    labels = torch.tensor(rng.integers(0, 3, size=6))
    confident = torch.ones(6, dtype=torch.bool)
    small = pseudo_label_loss(logits, labels, confident, form=form)
    padded = pseudo_label_loss(torch.cat([logits, logits[:3]]), torch.cat([labels, labels[:3]]),
                               torch.cat([confident, torch.zeros(3, dtype=torch.bool)]),
                               form=form)
    np.testing.assert_allclose(float(padded), float(small) * 6 / 9, rtol=1e-12)


def test_pseudo_label_loss_gradient_only_from_confident_rows():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    confident = torch.tensor([True, False, True, False, False])
    pseudo_label_loss(logits, torch.tensor([0, 1, 2, 0, 1]), confident).backward()
    assert (logits.grad[~confident] == 0).all()
    assert (logits.grad[confident].abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("form", ["ce", "bce"])
def test_pseudo_label_loss_is_invariant_to_consistent_cluster_permutation(form):
    rng = np.random.default_rng(11)
    logits = torch.tensor(rng.normal(size=(10, 4)))
    labels = torch.tensor(rng.integers(0, 4, size=10))
    confident = torch.tensor(rng.random(10) < 0.7)
    order = torch.tensor([2, 0, 3, 1])               # new column j is old column order[j]
    new_label = torch.argsort(order)[labels]          # where each old label moved
    torch.testing.assert_close(
        pseudo_label_loss(logits[:, order], new_label, confident, form=form),
        pseudo_label_loss(logits, labels, confident, form=form))


def test_pseudo_label_loss_closed_form_for_uniform_logits():
    # Uniform predictions: CE is log K per confident sample; divided by n.
    n, k = 6, 4
    confident = torch.tensor([True, True, False, True, False, False])
    loss = pseudo_label_loss(torch.zeros(n, k, dtype=torch.float64),
                             torch.zeros(n, dtype=torch.long), confident, form="ce")
    np.testing.assert_allclose(float(loss), 3 * math.log(k) / n, rtol=1e-12)


def test_pseudo_label_loss_rejects_unknown_form():
    with pytest.raises(ValueError, match=r"'ce' or 'bce'.*'mse'"):
        pseudo_label_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long),
                          torch.ones(2, dtype=torch.bool), form="mse")


# ---------------------------------------------------------------------------------------
# triplet sampling for the mutual-information loss
# ---------------------------------------------------------------------------------------


def test_sample_triplets_neighbours_and_negatives_come_from_the_right_sets():
    rng = np.random.default_rng(12)
    w = random_graph(rng, 40, 0.2)
    w[5, :] = w[:, 5] = 0.0   # an anchor without neighbours
    w[5, 5] = 1.0
    graph = torch.tensor(w)
    neighbour, has_neighbour, negatives, has_negative = sample_triplets(
        graph, 3, torch.Generator().manual_seed(0))
    assert neighbour.shape == (40,) and negatives.shape == (40, 3)
    off_diagonal = w - np.eye(40)
    np.testing.assert_array_equal(has_neighbour.numpy(), off_diagonal.sum(axis=1) > 0)
    for i in range(40):
        if has_neighbour[i]:
            j = int(neighbour[i])
            assert j != i and w[i, j] == 1.0
        else:
            assert int(neighbour[i]) == i  # fallback: the anchor itself
        valid = negatives[i][has_negative[i]].tolist()
        assert all(w[i, j] == 0.0 for j in valid)
        assert len(set(valid)) == len(valid)             # without replacement
        assert len(valid) == min(3, int((w[i] == 0).sum()))
    assert not has_neighbour[5]
    assert has_negative.any(dim=1).all()


def test_sample_triplets_without_negatives():
    graph = torch.ones(4, 4)  # everything linked: no non-neighbour anywhere
    neighbour, has_neighbour, _, has_negative = sample_triplets(graph, 2)
    assert not has_negative.any()
    assert has_neighbour.all() and (neighbour != torch.arange(4)).all()


def test_sample_triplets_handles_more_negatives_than_samples():
    graph = torch.eye(3)
    neighbour, has_neighbour, negatives, has_negative = sample_triplets(graph, 5)
    assert negatives.shape == (3, 3)
    assert has_negative.sum(dim=1).tolist() == [2, 2, 2]   # the two other samples
    assert not has_neighbour.any()
    assert neighbour.tolist() == [0, 1, 2]


def test_sample_triplets_draws_uniformly():
    # Anchor 0 has neighbours {1, 2, 3, 4} and non-neighbours {5, ..., 9}.
    w = torch.zeros(10, 10)
    w[:5, :5] = 1.0
    w[5:, 5:] = 1.0
    generator = torch.Generator().manual_seed(1)
    draws = 4000
    neighbour_counts = np.zeros(10)
    negative_counts = np.zeros(10)
    for _ in range(draws):
        neighbour, _, negatives, _ = sample_triplets(w, 2, generator)
        neighbour_counts[int(neighbour[0])] += 1
        negative_counts[negatives[0].numpy()] += 1
    assert neighbour_counts[[0, *range(5, 10)]].sum() == 0
    assert negative_counts[:5].sum() == 0
    # Each of 4 neighbours: p = 1/4; each of 5 non-neighbours drawn 2 at a time: p = 2/5.
    # Tolerance 5 standard deviations of a binomial proportion.
    p_neighbour = neighbour_counts[1:5] / draws
    assert np.abs(p_neighbour - 0.25).max() < 5 * math.sqrt(0.25 * 0.75 / draws)
    p_negative = negative_counts[5:] / draws
    assert np.abs(p_negative - 0.4).max() < 5 * math.sqrt(0.4 * 0.6 / draws)


def test_sample_triplets_is_deterministic_with_a_generator():
    w = torch.tensor(random_graph(np.random.default_rng(13), 30, 0.3))
    first = sample_triplets(w, 2, torch.Generator().manual_seed(7))
    again = sample_triplets(w, 2, torch.Generator().manual_seed(7))
    other = sample_triplets(w, 2, torch.Generator().manual_seed(8))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[2], other[2]))


# ---------------------------------------------------------------------------------------
# Jensen-Shannon mutual information (Eqs. 13-14)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jsd_loss_matches_reference(dtype):
    rng = np.random.default_rng(14)
    positive = rng.normal(scale=3.0, size=(7, 16))
    negative = rng.normal(scale=3.0, size=(13, 16))
    got = jsd_mutual_information_loss(torch.tensor(positive, dtype=dtype),
                                      torch.tensor(negative, dtype=dtype))
    assert got.shape == () and got.dtype == dtype
    np.testing.assert_allclose(float(got), ref_jsd(positive, negative), rtol=RTOL[dtype] * 10)


def test_jsd_loss_closed_forms():
    zero = torch.zeros(5, dtype=torch.float64)
    np.testing.assert_allclose(float(jsd_mutual_information_loss(zero, zero)),
                               2 * math.log(2), rtol=1e-12)
    # A perfect discriminator drives the loss to zero; a reversed one makes it large.
    big = torch.full((4,), 30.0, dtype=torch.float64)
    assert float(jsd_mutual_information_loss(big, -big)) < 1e-12
    assert float(jsd_mutual_information_loss(-big, big)) > 59.0


def test_jsd_loss_with_an_empty_side():
    scores = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.float64)
    np.testing.assert_allclose(float(jsd_mutual_information_loss(scores, empty)),
                               ref_jsd(scores.numpy(), np.zeros(0)), rtol=1e-12)
    np.testing.assert_allclose(float(jsd_mutual_information_loss(empty, scores)),
                               ref_jsd(np.zeros(0), scores.numpy()), rtol=1e-12)
    assert float(jsd_mutual_information_loss(empty, empty)) == 0.0


def test_jsd_loss_does_not_overflow_for_large_scores():
    large = torch.tensor([1e4, -1e4])
    assert torch.isfinite(jsd_mutual_information_loss(large, large))


# ---------------------------------------------------------------------------------------
# marginal entropy and balance
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_marginal_entropy_matches_reference(dtype):
    p = softmax_rows(np.random.default_rng(15), 20, 6)
    got = marginal_entropy(torch.tensor(p, dtype=dtype))
    np.testing.assert_allclose(float(got), ref_marginal_entropy(p), rtol=1e-6)


def test_marginal_entropy_is_not_the_mean_sample_entropy():
    # Confident predictions spread evenly: every sample has entropy ~0, the marginal log K.
    probs = torch.eye(4, dtype=torch.float64).repeat(3, 1)
    np.testing.assert_allclose(float(marginal_entropy(probs)), math.log(4), rtol=1e-6)
    np.testing.assert_allclose(float(balance_loss(probs)), 0.0, atol=1e-6)


def test_balance_loss_closed_forms_and_reference():
    k = 5
    collapsed = torch.zeros(8, k, dtype=torch.float64)
    collapsed[:, 2] = 1.0
    np.testing.assert_allclose(float(balance_loss(collapsed)), math.log(k), atol=1e-6)
    uniform = torch.full((8, k), 1.0 / k, dtype=torch.float64)
    np.testing.assert_allclose(float(balance_loss(uniform)), 0.0, atol=1e-6)
    p = softmax_rows(np.random.default_rng(16), 12, k)
    np.testing.assert_allclose(float(balance_loss(torch.tensor(p))),
                               math.log(k) - ref_marginal_entropy(p), rtol=1e-6)


def test_marginal_entropy_and_balance_are_invariant_to_permutations():
    p = torch.tensor(softmax_rows(np.random.default_rng(17), 10, 4))
    columns = torch.tensor([1, 3, 0, 2])
    rows = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    for fn in (marginal_entropy, balance_loss):
        torch.testing.assert_close(fn(p[:, columns]), fn(p))
        torch.testing.assert_close(fn(p[rows]), fn(p))
