"""CRLC losses against float64 NumPy references written from the formulas, and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skdccm.losses import (
    logit_bound_penalty,
    nt_xent_loss,
    probability_contrastive_loss,
    smooth_probabilities,
    two_view_marginal_entropy,
)

RTOL32 = 1e-5


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _reference_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """Loop over rows: l_a = -s(a, a+) + log sum_{k != a} exp s(a, k)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n = len(z)
    total = 0.0
    for a in range(n):
        positive = (a + n // 2) % n
        s = [z[a] @ z[k] / tau for k in range(n)]
        total += -s[positive] + math.log(sum(math.exp(s[k]) for k in range(n) if k != a))
    return total / n


def _reference_pc(p1: np.ndarray, p2: np.ndarray, smoothing: float) -> float:
    """Loop over rows: l_a = -log(p~_a . p~_a+ / sum_{k != a} p~_a . p~_k)."""
    p = np.concatenate([p1, p2]).astype(np.float64)
    p = (1 - smoothing) * p + smoothing / p.shape[1]
    n = len(p)
    total = 0.0
    for a in range(n):
        positive = (a + n // 2) % n
        denominator = sum(p[a] @ p[k] for k in range(n) if k != a)
        total += -math.log(p[a] @ p[positive] / denominator)
    return total / n


def _entropy(q: np.ndarray) -> float:
    q = q[q > 0]
    return float(-(q * np.log(q)).sum())


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- NT-Xent (FC) ----------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_reference(rng, tau):
    z1, z2 = rng.normal(size=(2, 6, 5))
    z1 /= np.linalg.norm(z1, axis=1, keepdims=True)
    z2 /= np.linalg.norm(z2, axis=1, keepdims=True)
    got = nt_xent_loss(torch.tensor(z1, dtype=torch.float32),
                       torch.tensor(z2, dtype=torch.float32), tau)
    assert got.shape == ()
    np.testing.assert_allclose(got.item(), _reference_nt_xent(z1, z2, tau), rtol=RTOL32)


def test_nt_xent_is_float32_under_bf16_autocast(rng):
    z1, z2 = rng.normal(size=(2, 8, 16))
    z1 /= np.linalg.norm(z1, axis=1, keepdims=True)
    z2 /= np.linalg.norm(z2, axis=1, keepdims=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = nt_xent_loss(torch.tensor(z1, dtype=torch.float32),
                           torch.tensor(z2, dtype=torch.float32), 0.1)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), _reference_nt_xent(z1, z2, 0.1), rtol=RTOL32)


def test_nt_xent_symmetric_in_views_and_low_for_aligned_views(rng):
    z1, z2 = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(2, 8, 4)),
                                                        dtype=torch.float32), dim=-1)
    np.testing.assert_allclose(nt_xent_loss(z1, z2).item(), nt_xent_loss(z2, z1).item(),
                               rtol=RTOL32)
    # Views equal to each other score far better than unrelated views.
    assert nt_xent_loss(z1, z1).item() < nt_xent_loss(z1, z2).item()


# -- PC loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.01, 0.3])
def test_pc_loss_matches_reference(rng, smoothing):
    p1 = _softmax(rng.normal(size=(7, 4)) * 2)
    p2 = _softmax(rng.normal(size=(7, 4)) * 2)
    got = probability_contrastive_loss(torch.tensor(p1, dtype=torch.float32),
                                       torch.tensor(p2, dtype=torch.float32), smoothing)
    assert got.shape == ()
    np.testing.assert_allclose(got.item(), _reference_pc(p1, p2, smoothing), rtol=RTOL32)


def test_pc_loss_per_head_matches_reference(rng):
    p1 = _softmax(rng.normal(size=(3, 5, 4)) * 3)   # (H, B, K)
    p2 = _softmax(rng.normal(size=(3, 5, 4)) * 3)
    got = probability_contrastive_loss(torch.tensor(p1, dtype=torch.float32),
                                       torch.tensor(p2, dtype=torch.float32), 0.01)
    assert got.shape == (3,)
    expected = [_reference_pc(p1[h], p2[h], 0.01) for h in range(3)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL32)


def _one_hot_batch(counts: list[int], n_clusters: int) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.eye(n_clusters)[labels]


def test_pc_loss_identical_one_hot_views_closed_form():
    """Identical one-hot views, B rows per view, cluster c holding a share pi_c.

    Without smoothing, row a in cluster c has p_a . p_a+ = 1 and sum_{k != a} p_a . p_k =
    2 B pi_c - 1 (the other rows of its cluster), so
        L_PC = sum_c pi_c log(2 B pi_c - 1)  ~  log(2B) - H(pi)
    (the gap is sum_c pi_c log(1 - 1 / (2 B pi_c)), about -K / (2B)).
    With smoothing e: same-cluster dot s = (1-e)^2 + e(2-e)/K, other-cluster dot
    d = e(2-e)/K, so L_PC = sum_c pi_c [log((2 B pi_c - 1) s + 2 B (1 - pi_c) d) - log s].
    """
    counts, k = [60, 25, 10, 5], 6
    b = sum(counts)
    pi = np.array(counts) / b
    p = torch.tensor(_one_hot_batch(counts, k), dtype=torch.float32)

    exact = float(np.sum(pi * np.log(2 * b * pi - 1)))
    got = probability_contrastive_loss(p, p, smoothing=0.0).item()
    np.testing.assert_allclose(got, exact, rtol=RTOL32)
    approx = math.log(2 * b) - _entropy(pi)
    assert abs(got - approx) < 1.2 * len(counts) / (2 * b)

    e = 0.01
    same = (1 - e) ** 2 + e * (2 - e) / k
    other = e * (2 - e) / k
    exact_smoothed = float(np.sum(pi * (np.log((2 * b * pi - 1) * same
                                               + 2 * b * (1 - pi) * other) - np.log(same))))
    got_smoothed = probability_contrastive_loss(p, p, smoothing=e).item()
    np.testing.assert_allclose(got_smoothed, exact_smoothed, rtol=RTOL32)


@pytest.mark.parametrize("b,k", [(4, 3), (50, 10)])
def test_pc_loss_uniform_outputs_give_log_2b_minus_1(b, k):
    p = torch.full((b, k), 1.0 / k)
    got = probability_contrastive_loss(p, p, smoothing=0.01).item()
    np.testing.assert_allclose(got, math.log(2 * b - 1), rtol=RTOL32)


def test_pc_loss_invariant_to_cluster_permutation_and_view_swap(rng):
    p1 = torch.tensor(_softmax(rng.normal(size=(6, 5)) * 2), dtype=torch.float32)
    p2 = torch.tensor(_softmax(rng.normal(size=(6, 5)) * 2), dtype=torch.float32)
    base = probability_contrastive_loss(p1, p2).item()
    perm = torch.tensor([3, 0, 4, 1, 2])
    np.testing.assert_allclose(probability_contrastive_loss(p1[:, perm], p2[:, perm]).item(),
                               base, rtol=RTOL32)
    np.testing.assert_allclose(probability_contrastive_loss(p2, p1).item(), base, rtol=RTOL32)


def test_pc_loss_is_float32_under_bf16_autocast(rng):
    logits = torch.tensor(rng.normal(size=(2, 8, 4)) * 4, dtype=torch.float32)
    p1, p2 = logits.softmax(-1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = probability_contrastive_loss(p1, p2)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), _reference_pc(p1.numpy(), p2.numpy(), 0.01),
                               rtol=RTOL32)


def test_pc_loss_gradient_finite_for_one_hot_predictions():
    logits = torch.tensor([[30.0, -30.0, 0.0], [-30.0, 30.0, 0.0]] * 2, requires_grad=True)
    p = logits.softmax(-1)
    probability_contrastive_loss(p[:2], p[2:]).backward()
    assert torch.isfinite(logits.grad).all()


def test_smoothing_formula():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(smooth_probabilities(p, 0.01).numpy(),
                               [[0.99 + 0.0025, 0.0025, 0.0025, 0.0025]], rtol=RTOL32)


# -- marginal entropy ------------------------------------------------------------------------


def test_two_view_marginal_entropy_matches_reference(rng):
    p1 = _softmax(rng.normal(size=(9, 5)))
    p2 = _softmax(rng.normal(size=(9, 5)))
    expected = 0.5 * (_entropy(p1.mean(0)) + _entropy(p2.mean(0)))
    got = two_view_marginal_entropy(torch.tensor(p1), torch.tensor(p2))
    np.testing.assert_allclose(got.item(), expected, rtol=1e-6)


def test_entropy_is_of_the_marginal_not_of_each_sample():
    """Confident, balanced predictions: marginal entropy log K, per-sample entropy 0."""
    k = 4
    balanced = torch.tensor(_one_hot_batch([3, 3, 3, 3], k), dtype=torch.float32)
    np.testing.assert_allclose(two_view_marginal_entropy(balanced, balanced).item(),
                               math.log(k), rtol=1e-5)
    collapsed = torch.tensor(_one_hot_batch([12], k), dtype=torch.float32)
    assert abs(two_view_marginal_entropy(collapsed, collapsed).item()) < 1e-5
    # Mixed views: the mean of the two views' marginal entropies.
    np.testing.assert_allclose(two_view_marginal_entropy(balanced, collapsed).item(),
                               0.5 * math.log(k), rtol=1e-5)


def test_marginal_entropy_per_head(rng):
    p1 = _softmax(rng.normal(size=(3, 6, 4)) * 2)
    p2 = _softmax(rng.normal(size=(3, 6, 4)) * 2)
    got = two_view_marginal_entropy(torch.tensor(p1), torch.tensor(p2))
    expected = [0.5 * (_entropy(p1[h].mean(0)) + _entropy(p2[h].mean(0))) for h in range(3)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


# -- logit bound -----------------------------------------------------------------------------


def test_logit_bound_penalty_values():
    logits = np.array([[[-30.0, 0.0, 27.0], [26.0, -25.0, 24.0]]])   # (1, 2, 3)
    lower, upper = logit_bound_penalty(torch.tensor(logits), bound=25.0)
    np.testing.assert_allclose(lower.numpy(), [np.sum(np.maximum(-25 - logits, 0) ** 2) / 6])
    np.testing.assert_allclose(upper.numpy(), [np.sum(np.maximum(logits - 25, 0) ** 2) / 6])
    assert lower.item() == pytest.approx(25 / 6)
    assert upper.item() == pytest.approx((4 + 1) / 6)


def test_logit_bound_gradient_zero_inside_and_pushing_back_outside():
    logits = torch.tensor([[-24.9, 0.0, 24.9, -26.0, 26.0]], requires_grad=True)
    lower, upper = logit_bound_penalty(logits, bound=25.0)
    (lower + upper).backward()
    grad = logits.grad[0].numpy()
    np.testing.assert_array_equal(grad[:3], 0.0)
    # d/dx relu(-25 - x)^2 / 5 at -26 is -2/5; d/dx relu(x - 25)^2 / 5 at 26 is 2/5.
    np.testing.assert_allclose(grad[3:], [-0.4, 0.4], rtol=1e-6)
