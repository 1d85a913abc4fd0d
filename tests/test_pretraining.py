"""The contrastive warm start (skdccm/pretraining.py) and DCCM's ``pretrain_epochs``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from skdccm import CRLCClustering, DCCMClustering, base, dccm
from skdccm.pretraining import PROJECTION_DIM, ContrastiveWarmStart

TINY = {"n_clusters": 10, "max_iter": 1, "batch_size": 50, "target_batch_size": 100,
        "device": "cpu", "random_state": 0}


@pytest.fixture(scope="module")
def X():
    return load_digits().images[:200]


class LinearBackbone(nn.Module):
    """``(shallow, features)`` from one linear layer: easy to follow in NumPy."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x):
        return x, self.linear(x)


class Net(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.backbone = LinearBackbone(d_in, d_out)
        self.cluster = nn.Linear(d_out, 3)   # not read by the warm start


def numpy_nt_xent(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    scores = z @ z.T / temperature
    n = len(z1)
    losses = []
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        others = [k for k in range(2 * n) if k != a]
        losses.append(-scores[a, positive] + np.log(np.exp(scores[a, others]).sum()))
    return float(np.mean(losses))


def test_step_is_nt_xent_of_the_projected_backbone_features():
    torch.manual_seed(0)
    net = Net(6, 5)
    objective = ContrastiveWarmStart(5, None, (0.0, 1.0), temperature=0.5)
    images = torch.randn(8, 6)
    partners = torch.randn(8, 6)
    result = objective.step(net, images, None, torch.arange(8), torch.Generator(),
                            partners=partners)

    def project(x):
        w, b = (t.detach().double().numpy() for t in (net.backbone.linear.weight,
                                                      net.backbone.linear.bias))
        h = x.double().numpy() @ w.T + b
        first, last = objective.projection[0], objective.projection[2]
        h = np.maximum(h @ first.weight.detach().double().numpy().T
                       + first.bias.detach().double().numpy(), 0)
        return h @ last.weight.detach().double().numpy().T + last.bias.detach().double().numpy()

    # Views without augmentation are the images; the second view is the partner's.
    want = numpy_nt_xent(project(images), project(partners), 0.5)
    assert float(result.loss.detach()) == pytest.approx(want, rel=1e-5)
    assert result.parts.keys() == {"nt_xent"}
    assert objective.projection[2].out_features == PROJECTION_DIM


def test_step_trains_the_backbone_and_projection_only():
    torch.manual_seed(0)
    net = Net(6, 5)
    objective = ContrastiveWarmStart(5, None, (0.0, 1.0), temperature=0.1)
    objective.step(net, torch.randn(8, 6), None, torch.arange(8), torch.Generator(),
                   partners=torch.randn(8, 6)).loss.backward()
    assert net.backbone.linear.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in objective.projection.parameters())
    assert net.cluster.weight.grad is None


def test_dccm_warm_start_runs_before_the_clustering_stage(X):
    est = DCCMClustering(**TINY, pretrain_epochs=3).fit(X)
    assert [r["stage"] for r in est.history_] == ["pretrain"] * 3 + ["cluster"]
    assert est.n_iter_ == 4
    warm = [r["loss_parts"]["nt_xent"] for r in est.history_[:3]]
    assert warm[-1] < warm[0] - 0.05         # it learns (measured: 4.63 -> 4.48)
    # The projection head is dropped: the fitted network is the one without a warm start.
    plain = DCCMClustering(**TINY).fit(X)
    assert est.module_.state_dict().keys() == plain.module_.state_dict().keys()
    assert "stage" not in plain.history_[0]
    # ... and its weights are not those of the fit without one.
    assert not torch.equal(next(iter(est.module_.backbone.parameters())),
                           next(iter(plain.module_.backbone.parameters())))


def test_warm_start_is_reproducible(X):
    a = DCCMClustering(**TINY, pretrain_epochs=1).fit(X)
    b = DCCMClustering(**TINY, pretrain_epochs=1).fit(X)
    assert [r["loss"] for r in a.history_] == [r["loss"] for r in b.history_]
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_later_initialisations_start_from_the_warm_backbone(X, monkeypatch):
    starts, ends = [], []
    real_train = dccm.train

    def first_weight(module):
        return next(iter(module.backbone.parameters())).detach().clone()

    def spy(module, *args, **kwargs):
        starts.append(first_weight(module))
        result = real_train(module, *args, **kwargs)
        ends.append(first_weight(result.module))
        return result

    monkeypatch.setattr(dccm, "train", spy)
    monkeypatch.setattr(base, "train", spy)        # the warm-start stage runs from the base
    DCCMClustering(**{**TINY, "max_iter": 2}, pretrain_epochs=1, n_init=2, init_iter=1).fit(X)
    # warm start, trial 0, trial 1, the kept trial going on
    assert len(starts) == 4
    assert torch.equal(starts[1], ends[0])          # trial 0 goes on from the warm start
    assert torch.equal(starts[2], ends[0])          # so does trial 1, with its own seed
    assert not torch.equal(starts[0], ends[0])      # (the warm start did move the weights)


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_auto_warm_start_is_a_share_of_the_clustering_epochs(X, cls):
    colour = np.random.default_rng(0).integers(0, 256, size=(100, 8, 8, 3), dtype=np.uint8)
    est = cls(n_clusters=4, max_iter=5, batch_size=50, pretrain_epochs="auto",
              random_state=0).fit(colour)
    assert est.pretrain_epochs_ == 2                       # 40% of 5
    assert [r["stage"] for r in est.history_] == ["pretrain"] * 2 + ["cluster"] * 5
    # Grey images: CRLC warm-starts them too (it gained on every grey set of the suite);
    # DCCM does not (it cost MNIST 5k more than it gave the digits).
    grey = cls(n_clusters=10, max_iter=5, batch_size=100, pretrain_epochs="auto",
               random_state=0).fit(X)
    expected = 2 if cls is CRLCClustering else 0
    assert grey.pretrain_epochs_ == expected
    assert sum(r.get("stage") == "pretrain" for r in grey.history_) == expected
    # Flat features: neither does.
    flat = cls(n_clusters=10, max_iter=2, batch_size=100, pretrain_epochs="auto",
               random_state=0).fit(X.reshape(len(X), -1))
    assert flat.pretrain_epochs_ == 0


def test_neighbour_space_features_needs_a_warm_start_that_happens(X):
    with pytest.raises(ValueError, match="has no warm start"):
        DCCMClustering(**TINY, pretrain_epochs="auto", neighbor_space="features").fit(X)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_pretrain_epochs_must_be_a_count(X, bad):
    with pytest.raises(ValueError, match="pretrain_epochs"):
        DCCMClustering(**TINY, pretrain_epochs=bad).fit(X)


def test_presets_warm_start_in_the_default_preset_only():
    for preset in ("paper", "code"):
        assert DCCMClustering(n_clusters=3, preset=preset)._resolved_params()[
            "pretrain_epochs"] == 0
    assert DCCMClustering(n_clusters=3)._resolved_params()["pretrain_epochs"] == "auto"
    assert CRLCClustering(n_clusters=3, preset="paper")._resolved_params()[
        "pretrain_epochs"] == 0
    assert CRLCClustering(n_clusters=3)._resolved_params()["pretrain_epochs"] == "auto"


def test_interrupted_warm_start_keeps_a_usable_model(X, monkeypatch):
    records = []
    original = ContrastiveWarmStart.step

    def step(self, *args, **kwargs):
        if len(records) == 1:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveWarmStart, "step", step)
    with pytest.warns(RuntimeWarning, match="interrupted during epoch 2"):
        est = DCCMClustering(**TINY, pretrain_epochs=3,
                             callbacks=lambda e, record: records.append(record)).fit(X)
    assert [r["stage"] for r in est.history_] == ["pretrain"]
    np.testing.assert_array_equal(est.predict(X), est.labels_)
