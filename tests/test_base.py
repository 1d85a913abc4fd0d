"""Tests of skdccm.base that no method-specific module covers: prediction's back-off when
the device runs out of memory, exercised on the CPU by simulating the error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from skdccm import DCCMClustering


@pytest.fixture(scope="module")
def fitted(digit_images, tiny_config):
    X = digit_images[:100]
    est = DCCMClustering(n_clusters=4, max_iter=1, ablation="M3", predict_batch_size=64,
                         **tiny_config).fit(X)
    return est, X


def out_of_memory_at(monkeypatch, est, fails) -> list[int]:
    """Make the per-batch inference raise CUDA's out-of-memory error on the calls for which
    ``fails(call_number, batch_size)`` is true; returns the batch sizes it was given."""
    sizes: list[int] = []
    infer = type(est)._infer

    def infer_or_fail(self, module, batch):
        sizes.append(len(batch))
        if fails(len(sizes), len(batch)):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return infer(self, module, batch)

    monkeypatch.setattr(type(est), "_infer", infer_or_fail)
    return sizes


def test_out_of_memory_in_predict_halves_the_batch_once_and_retries(fitted, monkeypatch):
    est, X = fitted
    expected = est.predict_proba(X)
    sizes = out_of_memory_at(monkeypatch, est, lambda call, size: call == 2)
    with pytest.warns(RuntimeWarning, match=r"CUDA out of memory while predicting; "
                                            r"retrying with predict_batch_size=32"):
        proba = est.predict_proba(X)
    # 100 rows in two batches of 50 (the second fails), then all again in four of 25.
    assert sizes == [50, 50, 25, 25, 25, 25]
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-6)
    assert est.predict_batch_size == 64                  # a parameter, never written over


def test_out_of_memory_at_every_size_gives_up_after_batches_of_one(fitted, monkeypatch):
    est, X = fitted
    out_of_memory_at(monkeypatch, est, lambda call, size: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(torch.cuda.OutOfMemoryError, match="simulated"):
            est.predict(X)
    retries = [str(w.message).rsplit("=", 1)[1] for w in caught
               if "out of memory" in str(w.message)]
    assert retries == ["32", "16", "8", "4", "2", "1"]


def test_the_midtone_share_is_averaged_over_ranks():
    """Data-parallel: each rank reads its shard; the rule must see the whole data's shares
    (else ranks could disagree on the defaults and their networks would differ)."""
    from skdccm.base import _foreground_midtones
    from skdccm.data import ArraySource, foreground_midtones, infer_layout, tone_shares
    from skdccm.distributed import SINGLE_PROCESS, Collective

    rng = np.random.default_rng(0)
    shard = rng.random((6, 16, 16), dtype=np.float32)
    layout = infer_layout(shard.shape, shard.dtype, image_shape=None, channels=None,
                          owner="test")
    source = ArraySource(shard, layout, torch.device("cpu"))
    local = tone_shares(source, (0.0, 1.0))
    assert _foreground_midtones(source, (0.0, 1.0), SINGLE_PROCESS) == pytest.approx(
        foreground_midtones(*local))

    class OtherRankAllDark(Collective):
        """Two ranks, the other one's shard all at the dark end."""

        def mean_(self, tensor):
            return tensor.add_(torch.tensor([1.0, 0.0], dtype=tensor.dtype)).div_(2)

    averaged = _foreground_midtones(source, (0.0, 1.0), OtherRankAllDark())
    assert averaged == pytest.approx(
        foreground_midtones((local[0] + 1.0) / 2, local[1] / 2))


# ---------------------------------------------------------------------------------------
# photo_defaults: the user's word over the rule (data.grey_photographs)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["dccm", "crlc"])
def test_photo_defaults_true_or_false_overrides_the_rule(estimator, strokes_and_shaded):
    from skdccm import CRLCClustering

    cls = DCCMClustering if estimator == "dccm" else CRLCClustering
    strokes, shaded = strokes_and_shaded
    common = {"n_clusters": 3, "max_iter": 1, "pretrain_epochs": 1, "batch_size": 32,
              "random_state": 0}
    assert not cls(**common).fit(strokes).photo_defaults_       # the rule: strokes
    forced = cls(photo_defaults=True, **common).fit(strokes)
    assert forced.photo_defaults_ and forced.neighbor_space_ == "features"
    assert cls(**common).fit(shaded).photo_defaults_             # the rule: photographs
    kept = cls(photo_defaults=False, **common).fit(shaded)
    assert not kept.photo_defaults_ and kept.neighbor_space_ == "pixels"
    # also in the paper's preset, where "auto" never gives grey images these defaults
    paper = cls(preset="paper", photo_defaults=True, **common).fit(strokes)
    assert paper.photo_defaults_


@pytest.mark.parametrize("estimator", ["dccm", "crlc"])
@pytest.mark.parametrize("value", ["yes", 1, None, "Auto"])
def test_photo_defaults_rejects_anything_but_auto_or_a_bool(estimator, value,
                                                             strokes_and_shaded):
    from skdccm import CRLCClustering

    cls = DCCMClustering if estimator == "dccm" else CRLCClustering
    strokes, _ = strokes_and_shaded
    with pytest.raises(ValueError, match="photo_defaults="):
        cls(n_clusters=3, max_iter=1, photo_defaults=value).fit(strokes)


def test_photo_defaults_true_needs_images():
    X = np.random.default_rng(0).random((30, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="needs images; X holds flat features"):
        DCCMClustering(n_clusters=3, max_iter=1, photo_defaults=True).fit(X)
    assert not DCCMClustering(n_clusters=3, max_iter=1, photo_defaults=False,
                              random_state=0).fit(X).photo_defaults_


def test_a_checkpoint_resumes_only_under_the_same_photo_defaults(tmp_path, strokes_and_shaded):
    strokes, _ = strokes_and_shaded
    common = {"n_clusters": 3, "max_iter": 1, "pretrain_epochs": 0, "batch_size": 32,
              "checkpoint_dir": tmp_path, "random_state": 0}
    DCCMClustering(**common).fit(strokes)
    with pytest.raises(ValueError, match="different configuration"):
        DCCMClustering(photo_defaults=True, resume=True, **common).fit(strokes)
