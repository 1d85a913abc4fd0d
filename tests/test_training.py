"""Tests of skdccm.training through DCCMClustering: history, progress, callbacks, stopping,
checkpoints, resuming, interrupts and divergence (issue 6), plus the loop's pure helpers.

Every fit is tiny: 32 digit images, 4 clusters, minibatches of 16, one target batch of 32,
so an epoch is two optimiser steps on CPU. Tests of the loop's mechanics drop the costly
mutual-information loss (ablation M3); those about reproducibility keep the full objective,
whose triplet sampling draws from the device generator that a checkpoint must restore.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

import skdccm.dccm as dccm_module
import skdccm.training as training
from skdccm import CRLCClustering
from skdccm.data import ArraySource, infer_layout
from skdccm.dccm import DCCMObjective
from skdccm.networks import ClusteringHeads
from skdccm.training import (
    CHECKPOINT_NAME,
    EarlyStop,
    TrainSpec,
    learning_rate_at,
    make_optimizer,
    refresh_batchnorm_statistics,
    resolve_device,
    steps_per_epoch,
)

RECORD_KEYS = {"epoch", "loss", "loss_parts", "confident", "graph_positive", "cluster_sizes",
               "cluster_min", "cluster_max", "lr", "seconds", "elapsed", "planned_epochs"}


@pytest.fixture
def X(digit_images):
    return digit_images[:32]


@pytest.fixture
def make_full(make_dccm):
    """Tiny estimators with the full DCCM objective."""
    return lambda **params: make_dccm(**{"batch_size": 16, "target_batch_size": 32, **params})


@pytest.fixture
def make(make_full):
    """Tiny estimators without the mutual-information loss: the loop is what is tested."""
    return lambda **params: make_full(**{"ablation": "M3", **params})


def state(est):
    return {k: v.clone() for k, v in est.module_.state_dict().items()}


def assert_same_fit(a, b):
    np.testing.assert_array_equal(a.labels_, b.labels_)
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [r["loss"] for r in a.history_] == [r["loss"] for r in b.history_]


# ---------------------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------------------


def test_history_records_have_the_documented_keys(make_full, X):
    est = make_full(max_iter=3).fit(X)
    assert est.n_iter_ == len(est.history_) == 3
    for i, record in enumerate(est.history_, start=1):
        assert RECORD_KEYS <= record.keys()
        assert ("label_change" in record) is (i > 1)  # needs a previous epoch
        assert record["epoch"] == i
        assert math.isfinite(record["loss"]) and record["seconds"] > 0
        assert record["loss_parts"] and all(math.isfinite(v) for v in
                                            record["loss_parts"].values())
        assert 0 <= record["confident"] <= 1 and 0 <= record["graph_positive"] <= 1
        assert len(record["cluster_sizes"]) == 4 and sum(record["cluster_sizes"]) == 32
        assert record["cluster_min"] == min(record["cluster_sizes"]) / 32
        assert record["cluster_max"] == max(record["cluster_sizes"]) / 32
    assert 0 <= est.history_[-1]["label_change"] <= 1


def test_history_learning_rate_follows_the_schedule(make, X):
    constant = make(max_iter=2, lr_schedule="constant", learning_rate=1e-3).fit(X)
    assert [r["lr"] for r in constant.history_] == [1e-3, 1e-3]
    cosine = make(max_iter=3, lr_schedule="cosine", learning_rate=1e-3).fit(X)
    lrs = [r["lr"] for r in cosine.history_]
    assert 1e-3 > lrs[0] > lrs[1] > lrs[2] >= 0


# ---------------------------------------------------------------------------------------
# progress output
# ---------------------------------------------------------------------------------------


def test_verbose_0_prints_nothing(make, X, capsys):
    make(max_iter=2, verbose=0).fit(X)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_2_prints_one_line_per_epoch(make, X, capsys):
    make(max_iter=3, verbose=2).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines, start=1):
        assert re.match(rf"epoch {i}/3 loss=\d+\.\d{{4}} \(graph=", line), line


def test_verbose_1_updates_one_line(make, X, capsys):
    make(max_iter=3, verbose=1).fit(X)
    out = capsys.readouterr().out
    assert out.count("\r") == 3            # each epoch rewrites the line
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "epoch 3/3" in out.split("\r")[-1]


def test_progress_goes_to_the_skdccm_logger(make, X, caplog):
    with caplog.at_level(logging.INFO, logger="skdccm"):
        make(max_iter=2).fit(X)
    epochs = [r for r in caplog.records if r.name == "skdccm" and "epoch" in r.getMessage()]
    assert len(epochs) == 2
    assert epochs[1].getMessage().startswith("epoch 2/2")


# ---------------------------------------------------------------------------------------
# callbacks and stopping
# ---------------------------------------------------------------------------------------


def test_callable_callback_receives_each_record_and_the_estimator(make, X):
    seen = []
    est = make(max_iter=3, callbacks=lambda owner, record: seen.append((owner, record)))
    est.fit(X)
    assert [owner for owner, _ in seen] == [est] * 3
    assert [record for _, record in seen] == est.history_


def test_callback_returning_true_stops(make, X):
    est = make(max_iter=5, callbacks=lambda owner, record: record["epoch"] == 2).fit(X)
    assert est.n_iter_ == 2 and len(est.history_) == 2
    assert est.labels_.shape == (32,)


class StopAt:
    """A callback object: collects epochs and raises EarlyStop at ``epoch``."""

    def __init__(self, epoch):
        self.epoch, self.epochs = epoch, []

    def on_epoch_end(self, owner, record):
        self.epochs.append(record["epoch"])
        if record["epoch"] == self.epoch:
            raise EarlyStop


def test_callback_object_with_on_epoch_end_raising_early_stop(make, X):
    stopper, seen = StopAt(1), []
    est = make(max_iter=4, callbacks=[stopper, lambda o, r: seen.append(r["epoch"])])
    est.fit(X)
    assert est.n_iter_ == 1 and stopper.epochs == [1]
    assert seen == [1]   # every callback still sees the last epoch


def test_tol_stops_when_labels_stop_changing(make, X):
    never = make(max_iter=3, tol=0.0).fit(X)
    assert never.n_iter_ == 3
    assert never.history_[1]["label_change"] > 0
    # tol=1 is reached as soon as a label change is measured, after the second epoch
    est = make(max_iter=3, tol=1.0).fit(X)
    assert est.n_iter_ == 2 == len(est.history_)
    assert [r["loss"] for r in est.history_] == [r["loss"] for r in never.history_[:2]]
    # the same run with a tol just below its second-epoch change does not stop there
    tol = never.history_[1]["label_change"] * 0.999
    assert make(max_iter=3, tol=tol).fit(X).n_iter_ == 3


# ---------------------------------------------------------------------------------------
# checkpoints and resuming
# ---------------------------------------------------------------------------------------


def test_checkpoints_every_n_epochs_and_at_the_end(make, X, tmp_path, monkeypatch):
    saved = []
    original = training.save_checkpoint

    def spy(path, state):
        saved.append(state["epoch"])
        original(path, state)

    monkeypatch.setattr(training, "save_checkpoint", spy)
    est = make(max_iter=5, checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(X)
    assert saved == [2, 4, 5]
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME]      # no temporary file left
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["format"] == training.CHECKPOINT_FORMAT
    assert checkpoint["epoch"] == 5
    assert checkpoint["history"] == est.history_
    assert checkpoint["module"].keys() == est.module_.state_dict().keys()


def test_checkpoint_write_is_atomic(make, X, tmp_path, monkeypatch):
    make(checkpoint_dir=str(tmp_path)).fit(X)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def crash(obj, path, *args, **kwargs):
        with open(path, "wb") as f:                 # a half-written file, then a crash
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        make(checkpoint_dir=str(tmp_path)).fit(X)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_resume_after_a_shorter_run_matches_an_uninterrupted_run(make_full, X, tmp_path):
    # A constant rate: a cosine schedule depends on max_iter, so a max_iter=2 run is not
    # the first half of a max_iter=4 run.
    params = {"lr_schedule": "constant", "checkpoint_dir": str(tmp_path)}
    make_full(max_iter=2, **params).fit(X)
    resumed = make_full(max_iter=4, resume=True, **params).fit(X)
    full = make_full(max_iter=4, lr_schedule="constant").fit(X)
    assert resumed.n_iter_ == 4
    assert_same_fit(resumed, full)


def test_resume_after_an_interrupt_matches_an_uninterrupted_run(make_full, X, tmp_path):
    def interrupt(owner, record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted during epoch 3"):
        make_full(max_iter=4, checkpoint_dir=str(tmp_path), callbacks=interrupt).fit(X)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    resumed = make_full(max_iter=4, checkpoint_dir=str(tmp_path), resume=True).fit(X)
    assert_same_fit(resumed, make_full(max_iter=4).fit(X))


def test_resume_without_a_checkpoint_trains_from_scratch(make, X, tmp_path):
    resumed = make(max_iter=2, checkpoint_dir=str(tmp_path / "new"), resume=True).fit(X)
    assert_same_fit(resumed, make(max_iter=2).fit(X))


def test_resume_a_finished_run_trains_no_further(make, X, tmp_path):
    first = make(max_iter=2, checkpoint_dir=str(tmp_path)).fit(X)
    again = make(max_iter=2, checkpoint_dir=str(tmp_path), resume=True).fit(X)
    assert again.n_iter_ == 2
    assert_same_fit(again, first)


class RunsCode:
    """Unpickling this runs ``touch <path>``: a checkpoint must never do so."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("content", ["random bytes", "pickle with code", "foreign dict",
                                     "list", "other fingerprint"])
def test_unusable_checkpoint_gives_a_clear_error(make, X, tmp_path, content):
    path = tmp_path / CHECKPOINT_NAME
    marker = tmp_path / "code-was-run"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
        match = "not a readable skdccm checkpoint"
    elif content == "pickle with code":
        path.write_bytes(pickle.dumps({"format": "skdccm-checkpoint", "x": RunsCode(marker)}))
        match = "not a readable skdccm checkpoint"
    elif content == "foreign dict":
        torch.save({"format": "someone-else", "weights": torch.zeros(3)}, path)
        match = "is not an skdccm checkpoint"
    elif content == "list":
        torch.save([torch.zeros(2)], path)
        match = "is not an skdccm checkpoint"
    else:
        make(n_clusters=3, checkpoint_dir=str(tmp_path)).fit(X)
        match = "different configuration"
    before = path.read_bytes()
    with warnings.catch_warnings(), pytest.raises(ValueError, match=match) as excinfo:
        warnings.simplefilter("ignore")  # torch may warn about the pickle protocol
        make(checkpoint_dir=str(tmp_path), resume=True).fit(X)
    assert str(tmp_path) in str(excinfo.value)
    assert "weights_only=False" not in str(excinfo.value)  # never advise running the file
    assert not marker.exists()
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------
# interrupts
# ---------------------------------------------------------------------------------------


def test_interrupt_inside_epoch_2_keeps_epoch_1_weights(make_full, X, monkeypatch):
    epoch_done = []
    original = DCCMObjective.step

    def step(self, *args, **kwargs):
        if epoch_done:                      # first step of epoch 2
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DCCMObjective, "step", step)
    est = make_full(max_iter=3, lr_schedule="constant",
                    callbacks=lambda owner, record: epoch_done.append(record["epoch"]))
    with pytest.warns(RuntimeWarning, match=r"interrupted during epoch 2.*last complete "
                                            r"epoch \(1\)"):
        est.fit(X)
    monkeypatch.setattr(DCCMObjective, "step", original)
    assert est.n_iter_ == 1 and len(est.history_) == 1
    assert_same_fit(est, make_full(max_iter=1, lr_schedule="constant").fit(X))
    assert est.predict(X).shape == (32,)                   # usable
    np.testing.assert_array_equal(est.predict(X), est.labels_)


def test_interrupt_from_a_callback_keeps_the_finished_epoch(make, X):
    def interrupt(owner, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        est = make(max_iter=3, lr_schedule="constant", callbacks=interrupt).fit(X)
    assert est.n_iter_ == 2
    assert_same_fit(est, make(max_iter=2, lr_schedule="constant").fit(X))


def test_interrupt_in_the_first_epoch_leaves_nothing_fitted(make, X, monkeypatch):
    def step(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DCCMObjective, "step", step)
    est = make()
    with pytest.warns(RuntimeWarning, match="interrupted"), \
            pytest.raises(RuntimeError, match="before its first epoch"):
        est.fit(X)
    assert not hasattr(est, "module_")


# ---------------------------------------------------------------------------------------
# several initialisations (n_init)
# ---------------------------------------------------------------------------------------


def test_n_init_goes_on_with_the_initialisation_of_lowest_loss(make_full, X):
    est = make_full(n_init=3, init_iter=1, max_iter=3).fit(X)
    assert est.init_losses_.shape == (3,)
    assert len(set(est.init_losses_.tolist())) == 3          # three different trials
    assert est.best_init_ == int(np.argmin(est.init_losses_))
    # The kept run is the chosen trial, continued: its first epoch is that trial's.
    assert est.history_[0]["loss"] == est.init_losses_[est.best_init_]
    assert est.n_iter_ == 3 and [r["epoch"] for r in est.history_] == [1, 2, 3]
    assert_same_fit(est, make_full(n_init=3, init_iter=1, max_iter=3).fit(X))


def test_a_paused_and_continued_trial_matches_an_uninterrupted_run(make_full, X,
                                                                   monkeypatch):
    # Stride 0: every trial has the first one's seed, so the first (kept on ties) is paused
    # after one epoch and continued; a cosine schedule, optimiser state and generators must
    # carry over exactly.
    monkeypatch.setattr(dccm_module, "INIT_SEED_STRIDE", 0)
    continued = make_full(n_init=2, init_iter=1, max_iter=3).fit(X)
    assert continued.init_losses_[0] == continued.init_losses_[1]
    assert continued.best_init_ == 0
    assert_same_fit(continued, make_full(max_iter=3).fit(X))


def test_init_iter_of_max_iter_or_more_keeps_the_best_whole_run(make_full, X):
    est = make_full(n_init=2, init_iter=5, max_iter=2).fit(X)
    assert est.n_iter_ == 2
    assert est.history_[-1]["loss"] == est.init_losses_[est.best_init_] == \
        est.init_losses_.min()


def test_n_init_checkpoints_the_kept_run_only(make_full, X, tmp_path):
    est = make_full(n_init=2, init_iter=1, max_iter=2, checkpoint_dir=str(tmp_path)).fit(X)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 2
    assert [r["loss"] for r in saved["history"]] == [r["loss"] for r in est.history_]
    # Resuming a finished run neither retries the initialisations nor trains further.
    resumed = make_full(n_init=2, init_iter=1, max_iter=2, checkpoint_dir=str(tmp_path),
                        resume=True).fit(X)
    assert_same_fit(resumed, est)


def test_one_initialisation_reports_its_loss_at_init_iter(make_full, X):
    est = make_full(max_iter=3, init_iter=2).fit(X)
    assert est.best_init_ == 0
    np.testing.assert_array_equal(est.init_losses_, [est.history_[1]["loss"]])
    whole = make_full(max_iter=3).fit(X)          # init_iter=None: whole runs
    np.testing.assert_array_equal(whole.init_losses_, [whole.history_[-1]["loss"]])


def test_n_init_defaults_to_whole_runs(make_full, X):
    est = make_full(n_init=2, max_iter=2).fit(X)
    assert est.n_iter_ == 2
    assert est.history_[-1]["loss"] == est.init_losses_.min()


def test_interrupt_during_a_later_trial_keeps_the_best_complete_one(make_full, X,
                                                                     monkeypatch):
    calls = []
    original = DCCMObjective.step

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:                 # 32 images in minibatches of 16: trial 2 begins
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DCCMObjective, "step", step)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        est = make_full(n_init=2, init_iter=1, max_iter=3).fit(X)
    monkeypatch.setattr(DCCMObjective, "step", original)
    assert est.best_init_ == 0 and est.init_losses_.shape == (1,)
    assert est.n_iter_ == 1 and est.history_[0]["loss"] == est.init_losses_[0]
    assert not est.module_.training
    np.testing.assert_array_equal(est.predict(X), est.labels_)


def test_n_init_announces_each_trial_when_verbose(make_full, X, capsys):
    make_full(n_init=2, init_iter=1, max_iter=2, verbose=2).fit(X)
    out = capsys.readouterr().out
    assert re.search(r"initialisation 1/2: loss \d+\.\d+ after 1 epochs", out)
    assert "initialisation 2/2" in out


# ---------------------------------------------------------------------------------------
# divergence
# ---------------------------------------------------------------------------------------


def test_divergence_raises_and_leaves_the_checkpoint_untouched(make, X, tmp_path):
    make(checkpoint_dir=str(tmp_path)).fit(X)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(.*graph.*\)"):
        make(max_iter=2, learning_rate=1e30, checkpoint_dir=str(tmp_path)).fit(X)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_divergence_names_the_loss_part(make, X, tmp_path, monkeypatch):
    make(checkpoint_dir=str(tmp_path)).fit(X)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def nan_label_loss(logits, *args, **kwargs):
        return logits.sum() * float("nan")

    monkeypatch.setattr(dccm_module, "pseudo_label_loss", nan_label_loss)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(label\)"):
        make(checkpoint_dir=str(tmp_path)).fit(X)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


# ---------------------------------------------------------------------------------------
# precision and compilation: branches written for GPUs, run on the CPU
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "bf16_supported", "expected"), [
    ("auto", True, torch.bfloat16), ("auto", False, torch.float16),
    ("bf16", False, torch.bfloat16), ("fp16", True, torch.float16),
    ("float32", True, None),
])
def test_precision_on_cuda_follows_the_bf16_capability(monkeypatch, precision,
                                                       bf16_supported, expected):
    # autocast_dtype only reads the device's type: no GPU is needed to run its CUDA branch.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs:
                        bf16_supported)
    assert training.autocast_dtype(precision, torch.device("cuda")) is expected


@pytest.mark.parametrize(("precision", "device", "expected"), [
    ("auto", "cpu", None), ("float32", "cpu", None), ("bf16", "cpu", torch.bfloat16),
    ("fp16", "cpu", None), ("auto", "mps", None),
])
def test_precision_off_cuda(monkeypatch, precision, device, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert training.autocast_dtype(precision, torch.device(device)) is expected


def test_bf16_trains_under_autocast_and_fp16_is_float32_on_the_cpu(make_full, X):
    # The full objective: every loss part (graph, label, MI, balance) under autocast.
    reference = make_full(precision="float32").fit(X)
    bf16 = make_full(precision="bf16").fit(X)      # a NaN loss would raise FloatingPointError
    fp16 = make_full(precision="fp16").fit(X)
    assert_same_fit(fp16, reference)
    # bfloat16 keeps about three digits: the network's outputs, not the losses, round.
    assert bf16.history_[0]["loss"] != reference.history_[0]["loss"]
    assert bf16.history_[0]["loss"] == pytest.approx(reference.history_[0]["loss"], rel=0.1)
    assert bf16.module_.cluster.weight.dtype == torch.float32   # autocast, not a cast


@pytest.fixture
def compile_backend(monkeypatch):
    """Make ``torch.compile`` use ``backend`` and record what it compiled; dynamo's caches
    are reset afterwards so that no compiled graph outlives the test."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) does not support this Python version")
    compiled = []
    original = torch.compile

    def use(backend):
        def compile_(module, **kwargs):
            compiled.append(module)
            return original(module, backend=backend, **kwargs)

        monkeypatch.setattr(torch, "compile", compile_)
        return compiled

    yield use
    torch._dynamo.reset()


def test_compile_traces_and_trains_the_same_network(make, X, compile_backend):
    # aot_eager: dynamo's graph capture and AOT autograd, without code generation (fast,
    # and no C++ compiler needed); inductor's own kernels are in the slow test below.
    compiled = compile_backend("aot_eager")
    est = make(compile=True).fit(X)
    assert len(compiled) == 1
    reference = make().fit(X)
    np.testing.assert_array_equal(est.labels_, reference.labels_)
    assert est.history_[0]["loss"] == pytest.approx(reference.history_[0]["loss"], rel=1e-5)
    np.testing.assert_allclose(est.predict_proba(X), reference.predict_proba(X), atol=1e-5)


@pytest.mark.slow
def test_compile_with_inductor_trains_the_same_network(make, X, compile_backend):
    """The default backend generates C++ on the CPU (about a minute on two cores)."""
    if not any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "c++",
                                               "clang++")):
        pytest.skip("torch.compile's inductor backend needs a C++ compiler; none found")
    compile_backend("inductor")
    # Fused kernels round differently. SGD, not Adam: Adam's first steps move every weight
    # by about the learning rate whatever its gradient's size, so rounding noise in a
    # near-zero gradient would move weights as much as a real one.
    est = make(compile=True, optimizer="sgd").fit(X)
    reference = make(optimizer="sgd").fit(X)
    # Measured: losses within 1.2e-4 (relative), probabilities within 0.005; an untrained
    # network's probabilities differ from the reference's by 0.9.
    assert est.history_[0]["loss"] == pytest.approx(reference.history_[0]["loss"], rel=1e-3)
    np.testing.assert_allclose(est.predict_proba(X), reference.predict_proba(X), atol=0.02)


# ---------------------------------------------------------------------------------------
# pure helpers of the loop
# ---------------------------------------------------------------------------------------


def spec(**kwargs):
    return TrainSpec(**{"max_epochs": 4, "batch_size": 32, "chunk_size": 64, **kwargs})


def test_steps_per_epoch_counts_chunks_batches_passes_and_draws():
    # 150 samples: chunks of 50 (3), each in batches of 25 (2), 10 passes, 2 draws.
    assert steps_per_epoch(150, spec(batch_size=32, chunk_size=64, passes_per_chunk=10,
                                     steps_per_batch=2)) == 3 * 2 * 10 * 2
    assert steps_per_epoch(64, spec()) == 2


def test_learning_rate_schedules():
    cosine = spec(learning_rate=0.1, lr_schedule="cosine")
    assert learning_rate_at(0, 100, cosine) == pytest.approx(0.1)
    assert learning_rate_at(50, 100, cosine) == pytest.approx(0.05)
    assert learning_rate_at(100, 100, cosine) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_at(73, 100, spec(learning_rate=0.1)) == 0.1
    with pytest.raises(ValueError, match=r"unknown lr_schedule 'step'.*'cosine'"):
        learning_rate_at(0, 10, spec(lr_schedule="step"))


def test_optimizer_choices_and_weight_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    rmsprop = make_optimizer((model, frozen), spec(optimizer="rmsprop", learning_rate=1e-4,
                                                   weight_decay=0.1))
    assert isinstance(rmsprop, torch.optim.RMSprop)
    assert rmsprop.defaults["alpha"] == 0.9                 # DCCM's smoothing
    decayed, plain = rmsprop.param_groups
    assert decayed["params"] == [model[0].weight] and decayed["weight_decay"] == 0.1
    assert plain["params"] == [model[0].bias, model[1].weight, model[1].bias]
    assert plain["weight_decay"] == 0.0
    assert isinstance(make_optimizer((model,), spec(optimizer="sgd")), torch.optim.SGD)
    assert isinstance(make_optimizer((model,), spec(optimizer="adamw")), torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'.*'rmsprop'"):
        make_optimizer((model,), spec(optimizer="lbfgs"))


def test_batched_sub_head_biases_are_not_weight_decayed():
    # CRLC's sub-head biases are (H, 1, D): a bias by name and role, a matrix by shape.
    heads = ClusteringHeads(8, n_clusters=3, n_heads=2, hidden=5)
    norm = torch.nn.LayerNorm(8)                        # a 1-D weight: not decayed either
    decayed, plain = make_optimizer((heads, norm), spec(weight_decay=5e-4)).param_groups
    assert decayed["params"] == [heads.hidden_weight, heads.out_weight]
    assert plain["params"] == [heads.hidden_bias, heads.out_bias, norm.weight, norm.bias]
    assert heads.hidden_bias.shape == (2, 1, 5)


def test_weight_decay_leaves_biases_of_a_trained_model_alone(X):
    """SGD without gradient moves only what weight decay pulls on: zero the loss, and the
    biases of the paper preset's sub-heads stay where they started."""
    params = {"n_clusters": 3, "max_iter": 1, "n_heads": 2, "hidden_dim": 8,
              "batch_size": 16, "device": "cpu", "random_state": 0, "optimizer": "sgd",
              "weight_decay": 0.5, "fc_weight": 0.0, "pc_weight": 0.0, "entropy_weight": 0.0,
              "logit_weight": 0.0, "learning_rate": 0.1}
    start = CRLCClustering(**{**params, "weight_decay": 0.0}).fit(X).module_.heads
    heads = CRLCClustering(**params).fit(X).module_.heads
    assert torch.equal(heads.hidden_bias, start.hidden_bias)
    # Clusters are renumbered by size after fitting: compare each head's biases as sets.
    assert torch.equal(heads.out_bias.sort(dim=-1).values, start.out_bias.sort(dim=-1).values)
    assert not torch.equal(heads.out_weight, start.out_weight)           # decay did act


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_refreshed_batchnorm_statistics_are_those_of_the_whole_data_in_class_order():
    """Data stored in class order: the refreshed variance must include the spread between
    classes, as in training's shuffled batches. Batches taken in storage order would each
    hold one class and give the within-class variance (1) instead of about 1 + 25."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-5.0, 1.0, (512, 3)), rng.normal(5.0, 1.0, (512, 3))])
    X = X.astype(np.float32)
    layout = infer_layout(X.shape, X.dtype, image_shape=None, channels=None, owner="test")
    norm = torch.nn.BatchNorm1d(3).eval()
    refresh_batchnorm_statistics(norm, ArraySource(X, layout, torch.device("cpu")), 64)
    np.testing.assert_allclose(norm.running_mean.numpy(), X.mean(axis=0), atol=1e-5)
    # Mean of per-batch unbiased variances: close to the whole data's, not the classes'.
    np.testing.assert_allclose(norm.running_var.numpy(), X.var(axis=0, ddof=1), rtol=0.05)
    assert norm.momentum == 0.1 and not norm.training   # left as they were
