"""CRLCClustering: fitted shapes, determinism, label-free head choice, stages, pickling."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdccm import CRLCClustering
from skdccm.crlc import PRESETS, CRLCObjective, head_losses, resolve_backbone
from skdccm.data import ArraySource, infer_layout
from skdccm.networks import MLP, ShallowAlexNet
from skdccm.training import refresh_batchnorm_statistics

N_SAMPLES = 120
TINY = {"n_clusters": 10, "max_iter": 2, "n_heads": 3, "hidden_dim": 32, "batch_size": 40,
        "device": "cpu"}


def fitted_layout(X):
    """The layout ``fit`` gives X: its own value range (the digits' 0..16)."""
    layout = infer_layout(X.shape, X.dtype, image_shape=None, channels=None, owner="test")
    return replace(layout, value_range=(float(X.min()), float(X.max())))


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.images[:N_SAMPLES], data.target[:N_SAMPLES]


@pytest.fixture(scope="module")
def fitted(digits):
    X, _ = digits
    return CRLCClustering(**TINY, random_state=0).fit(X)


def test_fitted_shapes_and_types(fitted, digits):
    X, _ = digits
    n = len(X)
    assert fitted.labels_.shape == (n,)
    assert fitted.input_shape_ == (1, 8, 8)
    # The default preset warm-starts for 40% of the clustering epochs (round(0.8) = 1).
    assert fitted.pretrain_epochs_ == 1
    assert fitted.n_iter_ == 3 and len(fitted.history_) == 3
    proba = fitted.predict_proba(X)
    assert proba.shape == (n, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(fitted.predict(X), fitted.labels_)
    embedding = fitted.transform(X)
    assert embedding.shape == (n, 256) and embedding.dtype == np.float32
    assert fitted.head_losses_.shape == (3,)
    assert np.isfinite(fitted.head_losses_).all()


def test_history_records_the_crlc_loss_parts(fitted):
    record = fitted.history_[-1]
    assert set(record["loss_parts"]) == {"fc", "pc", "pc_min", "entropy", "logit_penalty"}
    assert record["stage"] == "cluster"
    assert sum(record["cluster_sizes"]) == N_SAMPLES
    assert np.isfinite(record["loss"])


def test_clusters_numbered_by_decreasing_size(fitted):
    sizes = np.bincount(fitted.labels_, minlength=10)
    assert (np.diff(sizes) <= 0).all()


def test_transform_is_the_backbone_feature(fitted, digits):
    X, _ = digits
    images = torch.tensor(X[:5, None], dtype=torch.float32)
    with torch.no_grad():
        features = fitted.module_.eval().backbone(images)[1].numpy()
    np.testing.assert_allclose(fitted.transform(X[:5]), features, rtol=1e-5, atol=1e-6)


def test_predict_proba_is_the_selected_heads_softmax(fitted, digits):
    X, _ = digits
    images = torch.tensor(X[:7, None], dtype=torch.float32)
    with torch.no_grad():
        logits = fitted.module_.eval()(images).logits.numpy()       # (H, 7, K)
    for head in range(3):
        e = np.exp(logits[head] - logits[head].max(axis=1, keepdims=True))
        matches = np.allclose(fitted.predict_proba(X[:7]), e / e.sum(1, keepdims=True),
                              rtol=1e-4, atol=1e-6)
        assert matches == (head == fitted.selected_head_)


def test_selected_head_has_the_lowest_pc_loss(fitted, digits):
    """Recompute every sub-head's PC loss on the seeded views and check the choice."""
    X, _ = digits
    assert fitted.selected_head_ == int(np.argmin(fitted.head_losses_))
    layout = fitted_layout(X)
    objective = fitted._objective(layout, fitted.preset_params_, clustering=True)
    source = ArraySource(X, layout, torch.device("cpu"))
    again = head_losses(fitted.module_, objective, source, TINY["batch_size"]).numpy()
    # The selected head's clusters were renumbered after the choice; the PC loss is
    # invariant to that permutation.
    np.testing.assert_allclose(again, fitted.head_losses_, rtol=1e-5)
    assert not np.allclose(again, again[0])   # the heads really differ


def test_head_losses_contrast_images_of_mixed_batches_on_data_in_class_order(fitted, digits,
                                                                            monkeypatch):
    """Each PC loss contrasts an image with its batch: over data sorted by class, batches in
    storage order would hold one class each (where sub-heads that split classes score best)."""
    X, y = digits
    order = np.argsort(y, kind="stable")
    X_sorted, y_sorted = X[order], y[order]
    layout = fitted_layout(X)
    objective = fitted._objective(layout, fitted.preset_params_, clustering=True)
    source = ArraySource(X_sorted, layout, torch.device("cpu"))
    seen = []
    gather = source.gather
    monkeypatch.setattr(source, "gather", lambda index: seen.append(index.clone()) or
                        gather(index))
    head_losses(fitted.module_, objective, source, TINY["batch_size"])
    assert sorted(torch.cat(seen).tolist()) == list(range(len(X)))
    # 120 digits of 10 classes in batches of 40: storage order gives 3 or 4 classes each.
    assert min(len(np.unique(y_sorted[index.numpy()])) for index in seen) >= 7


def test_batchnorm_statistics_come_from_the_training_views(digits):
    """CRLC trains on augmented views only; its BatchNorm statistics must describe them."""
    X, _ = digits
    est = CRLCClustering(**{**TINY, "backbone": "mlp"}, random_state=0).fit(X)
    layout = fitted_layout(X)
    objective = est._objective(layout, est.preset_params_, clustering=True)
    source = ArraySource(X, layout, torch.device("cpu"))
    first_norm = est.module_.backbone.first[1]
    fitted_mean = first_norm.running_mean.clone()
    for views, close in ((objective.batchnorm_input, True), (None, False)):
        refresh_batchnorm_statistics(est.module_, source, TINY["batch_size"], views)
        assert torch.allclose(first_norm.running_mean, fitted_mean, atol=1e-5) == close


def test_same_random_state_same_labels(fitted, digits):
    X, _ = digits
    again = CRLCClustering(**TINY, random_state=0).fit(X)
    np.testing.assert_array_equal(again.labels_, fitted.labels_)
    np.testing.assert_array_equal(again.head_losses_, fitted.head_losses_)
    other = CRLCClustering(**TINY, random_state=1).fit(X)
    assert not np.array_equal(other.head_losses_, fitted.head_losses_)


def test_head_choice_uses_no_labels(fitted, digits):
    # fit(X, y) with any y gives what fit(X) gave: y is never read.
    X, y = digits
    est = CRLCClustering(**TINY, random_state=0).fit(X, np.random.default_rng(0).permutation(y))
    np.testing.assert_array_equal(est.head_losses_, fitted.head_losses_)
    assert est.selected_head_ == fitted.selected_head_
    np.testing.assert_array_equal(est.labels_, fitted.labels_)


def test_pickle_round_trip(fitted, digits):
    X, _ = digits
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(restored.transform(X[:4]), fitted.transform(X[:4]))
    assert restored.selected_head_ == fitted.selected_head_


def test_clone_keeps_parameters():
    est = CRLCClustering(n_clusters=4, n_heads=2, entropy_weight=1.5, pretrain_epochs=3)
    params = clone(est).get_params()
    assert params["n_heads"] == 2 and params["entropy_weight"] == 1.5
    assert params["pretrain_epochs"] == 3 and params["backbone"] is None


def test_presets_follow_the_paper():
    paper = PRESETS["paper"]
    assert paper["backbone"] == "resnet34" and paper["n_heads"] == 10
    assert (paper["optimizer"], paper["learning_rate"], paper["lr_schedule"]) == (
        "sgd", 0.1, "constant")
    assert (paper["weight_decay"], paper["batch_size"], paper["max_iter"]) == (5e-4, 512, 2000)
    assert (paper["temperature"], paper["fc_weight"], paper["pc_weight"],
            paper["entropy_weight"], paper["logit_bound"], paper["logit_weight"],
            paper["smoothing"]) == (0.1, 10.0, 1.0, 2.0, 25.0, 0.01, 0.01)
    # The default changes only the budget and the optimiser, not the loss.
    for key in ("temperature", "fc_weight", "pc_weight", "entropy_weight", "logit_bound",
                "logit_weight", "smoothing", "n_heads"):
        assert PRESETS["default"][key] == paper[key]


def test_auto_backbone_is_an_mlp_for_tiny_images(fitted):
    assert isinstance(fitted.module_.backbone, MLP)
    assert resolve_backbone("auto", (1, 8, 8)) == "mlp"
    assert resolve_backbone("auto", (64,)) == "mlp"
    assert resolve_backbone("auto", (1, 16, 16)) == "mlp"     # USPS
    assert resolve_backbone("auto", (1, 28, 28)) == "mlp"     # MNIST
    assert resolve_backbone("auto", (1, 28, 40)) == "small"   # grey, but one side over 32
    assert resolve_backbone("auto", (3, 16, 16)) == "small"   # colour
    assert resolve_backbone("auto", (3, 12, 32)) == "mlp"     # one side under 16
    assert resolve_backbone("resnet18", (1, 8, 8)) == "resnet18"
    # grey photographs with few a cluster take the colour images' network
    assert resolve_backbone("auto", (1, 28, 28), photographic=True) == "small"
    assert resolve_backbone("auto", (1, 12, 32), photographic=True) == "mlp"
    assert resolve_backbone("auto", (3, 32, 32), photographic=False) == "mlp"


def test_conv_backbone_fits_and_embeds(digits):
    X, _ = digits
    est = CRLCClustering(**{**TINY, "max_iter": 1}, backbone="conv", random_state=0).fit(X)
    assert isinstance(est.module_.backbone, ShallowAlexNet)
    assert est.transform(X[:4]).shape == (4, 256)
    assert est.predict(X[:4]).shape == (4,)


def test_paper_preset_builds_resnet34_with_cifar_stem():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(8, 4, 4, 3), dtype=np.uint8)    # channels-last colour
    est = CRLCClustering(n_clusters=3, preset="paper", max_iter=1, batch_size=4, n_heads=2,
                         device="cpu", random_state=0).fit(X)
    backbone = est.module_.backbone
    assert [len(stage) for stage in (backbone.layer1, backbone.layer2, backbone.layer3,
                                     backbone.layer4)] == [3, 4, 6, 3]
    stem = backbone.stem[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))   # CIFAR stem, no max-pool
    assert est.transform(X).shape == (8, 512)
    assert est.preset_params_["optimizer"] == "sgd"
    assert est.module_.heads.n_heads == 2


def test_two_stage_training_concatenates_history(digits):
    X, _ = digits
    est = CRLCClustering(**{**TINY, "max_iter": 1}, pretrain_epochs=2, random_state=0).fit(X)
    assert [r["stage"] for r in est.history_] == ["pretrain", "pretrain", "cluster"]
    assert est.n_iter_ == 3
    assert set(est.history_[0]["loss_parts"]) == {"fc"}
    assert "cluster_sizes" not in est.history_[0]
    assert "pc" in est.history_[-1]["loss_parts"]


def test_two_stage_checkpoints_resume_without_retraining(digits, tmp_path: Path):
    X, _ = digits
    params = {**TINY, "max_iter": 1, "pretrain_epochs": 1, "checkpoint_dir": str(tmp_path),
              "random_state": 0}
    first = CRLCClustering(**params).fit(X)
    assert (tmp_path / "pretrain" / "checkpoint.pt").exists()
    assert (tmp_path / "checkpoint.pt").exists()
    # Both stages are complete on disk: resuming loads them and trains nothing more.
    calls = []
    resumed = CRLCClustering(**params, resume=True,
                             callbacks=lambda est, record: calls.append(record)).fit(X)
    assert calls == []
    assert [r["stage"] for r in resumed.history_] == ["pretrain", "cluster"]
    np.testing.assert_array_equal(resumed.labels_, first.labels_)
    np.testing.assert_array_equal(resumed.head_losses_, first.head_losses_)


def interrupting_step(monkeypatch, after_records: int) -> list:
    """Raise KeyboardInterrupt at the first step after ``after_records`` epoch records (both
    stages count); returns the list of records, to pass as the fit's callback."""
    records = []
    original = CRLCObjective.step

    def step(self, *args, **kwargs):
        if len(records) == after_records:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CRLCObjective, "step", step)
    return records


def assert_same_crlc_fit(actual, expected):
    """Labels, sub-head losses and choice, every weight and every epoch's loss."""
    np.testing.assert_array_equal(actual.labels_, expected.labels_)
    np.testing.assert_array_equal(actual.head_losses_, expected.head_losses_)
    assert actual.selected_head_ == expected.selected_head_
    weights, reference = actual.module_.state_dict(), expected.module_.state_dict()
    assert weights.keys() == reference.keys()
    for key in weights:
        assert torch.equal(weights[key], reference[key]), key
    assert ([(r["stage"], r["loss"]) for r in actual.history_]
            == [(r["stage"], r["loss"]) for r in expected.history_])


@pytest.mark.parametrize("freeze_encoder", [False, True])
def test_interrupted_clustering_resumes_to_the_uninterrupted_run(digits, tmp_path: Path,
                                                                 monkeypatch, freeze_encoder):
    X, _ = digits
    params = {**TINY, "max_iter": 3, "pretrain_epochs": 1, "random_state": 0,
              "freeze_encoder": freeze_encoder}
    # Pre-training epoch 1 and clustering epoch 1 end; clustering epoch 2 of 3 is cut short.
    records = interrupting_step(monkeypatch, after_records=2)
    with pytest.warns(RuntimeWarning, match="interrupted during epoch 2"):
        interrupted = CRLCClustering(**params, checkpoint_dir=str(tmp_path),
                                     callbacks=lambda est, record: records.append(record)
                                     ).fit(X)
    monkeypatch.undo()
    assert [r["stage"] for r in interrupted.history_] == ["pretrain", "cluster"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1

    resumed = CRLCClustering(**params, checkpoint_dir=str(tmp_path), resume=True).fit(X)
    full = CRLCClustering(**params).fit(X)
    assert full.n_iter_ == resumed.n_iter_ == 4
    assert_same_crlc_fit(resumed, full)
    if freeze_encoder:  # the clustering stage left the pre-trained backbone as it was
        pretrained = CRLCClustering(**{**params, "max_iter": 1}).fit(X)
        for key, value in pretrained.module_.backbone.state_dict().items():
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(full.module_.backbone.state_dict()[key], value), key


def test_interrupted_pretraining_keeps_a_model_and_resumes(digits, tmp_path: Path,
                                                           monkeypatch):
    X, _ = digits
    params = {**TINY, "max_iter": 1, "pretrain_epochs": 2, "random_state": 0}
    records = interrupting_step(monkeypatch, after_records=1)   # in pre-training epoch 2
    with pytest.warns(RuntimeWarning, match="interrupted during epoch 2"):
        interrupted = CRLCClustering(**params, checkpoint_dir=str(tmp_path),
                                     callbacks=lambda est, record: records.append(record)
                                     ).fit(X)
    monkeypatch.undo()
    # A usable model of one pre-training epoch, with a sub-head chosen; no clustering yet.
    assert [r["stage"] for r in interrupted.history_] == ["pretrain"]
    assert interrupted.head_losses_.shape == (TINY["n_heads"],)
    np.testing.assert_array_equal(interrupted.predict(X), interrupted.labels_)
    assert not (tmp_path / "checkpoint.pt").exists()

    resumed = CRLCClustering(**params, checkpoint_dir=str(tmp_path), resume=True).fit(X)
    full = CRLCClustering(**params).fit(X)
    assert [r["stage"] for r in resumed.history_] == ["pretrain", "pretrain", "cluster"]
    assert resumed.history_[0] == interrupted.history_[0]   # read back, not trained again
    assert_same_crlc_fit(resumed, full)


def test_frozen_encoder_keeps_given_backbone_weights(fitted, digits, tmp_path: Path):
    X, _ = digits
    weights = {f"backbone.{k}": v.clone() for k, v in
               fitted.module_.backbone.state_dict().items()}
    path = tmp_path / "weights.pt"
    torch.save(weights, path)
    est = CRLCClustering(**TINY, backbone_weights=str(path), freeze_encoder=True,
                         random_state=0).fit(X)
    assert est.pretrain_epochs_ == 0        # "auto": the given weights are the warm start
    trained = est.module_.backbone.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(trained[key.removeprefix("backbone.")], value,
                                   rtol=0, atol=0)
    # The heads did train.
    assert est.history_[0]["loss"] != est.history_[-1]["loss"]


def test_unfrozen_encoder_trains_the_given_weights(fitted, digits):
    X, _ = digits
    weights = {k: v.clone() for k, v in fitted.module_.backbone.state_dict().items()}
    est = CRLCClustering(**TINY, backbone_weights=weights, random_state=0).fit(X)
    first = next(k for k in weights if k.endswith("weight") and weights[k].dim() >= 2)
    assert not torch.equal(est.module_.backbone.state_dict()[first], weights[first])


def test_flat_features_cluster_blobs():
    X, y = make_blobs(n_samples=150, centers=3, n_features=4, random_state=0)
    est = CRLCClustering(n_clusters=3, max_iter=15, n_heads=2, hidden_dim=32, batch_size=50,
                         device="cpu", random_state=0).fit(X)
    assert est.transform(X).shape == (150, 256)
    assert adjusted_rand_score(y, est.labels_) > 0.4


@pytest.mark.parametrize("param,value,match", [
    ("n_heads", 0, "n_heads=0 must be a positive int"),
    ("temperature", 0.0, "temperature=0.0 must be > 0"),
    ("entropy_weight", -1.0, "entropy_weight=-1.0 must be >= 0"),
    ("smoothing", 1.0, r"smoothing=1.0 must be in \[0, 1\)"),
    ("pretrain_epochs", -1, "pretrain_epochs=-1 must be .auto. or an int >= 0"),
    ("preset", "fast", "unknown preset 'fast'"),
])
def test_invalid_parameters_name_the_class_and_value(digits, param, value, match):
    X, _ = digits
    with pytest.raises(ValueError, match=f"CRLCClustering: {match}"):
        CRLCClustering(**{**TINY, param: value}).fit(X)


def test_unreadable_backbone_weights(digits, tmp_path: Path):
    X, _ = digits
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="CRLCClustering: backbone_weights="):
        CRLCClustering(**TINY, backbone_weights=str(bad)).fit(X)


@pytest.mark.slow
def test_quality_on_full_digits():
    """Default preset on all 1,797 digits, beside KMeans on the same pixels.

    Measured with seed 0: ACC 0.961 with one thread, 0.953 with two (seeds 1 and 2, two
    threads: 0.956, 0.974); KMeans 0.792. The bounds leave a margin for other platforms'
    floating-point differences, which change the training trajectory.
    """
    from sklearn.cluster import KMeans

    from skdccm.metrics import clustering_accuracy

    data = load_digits()
    X, y = data.images, data.target
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit(X.reshape(len(X), -1))
    labels = CRLCClustering(n_clusters=10, random_state=0).fit_predict(X)
    acc = clustering_accuracy(y, labels)
    assert acc > clustering_accuracy(y, kmeans.labels_) + 0.1
    assert acc >= 0.93
    assert normalized_mutual_info_score(y, labels) >= 0.88


def test_default_preset_trains_colour_images_for_fewer_epochs():
    # The preset's 60 epochs were measured on grey images; colour images keep 40
    # (COLOUR_MAX_ITER) unless max_iter is given.
    from skdccm import crlc as crlc_module

    colour = np.zeros((40, 8, 8, 3), dtype=np.uint8)
    grey = colour[..., 0]

    def planned(images, **params):
        layout = infer_layout(images.shape, images.dtype, image_shape=None, channels=None,
                              owner="test")
        est = CRLCClustering(n_clusters=2, **params)
        return est._train_spec({**PRESETS["default"], **params}, len(images), layout).max_epochs

    assert PRESETS["default"]["max_iter"] > crlc_module.COLOUR_MAX_ITER
    assert planned(colour) == crlc_module.COLOUR_MAX_ITER
    assert planned(colour, max_iter=2) == 2
    assert planned(colour, preset="paper") == PRESETS["default"]["max_iter"]
    assert planned(grey) == PRESETS["default"]["max_iter"]


def test_shaded_grey_images_with_few_a_cluster_take_the_defaults_for_photographs(
        strokes_and_shaded):
    """CRLC follows the same rule as DCCM (skdccm.data.grey_photographs): the small CNN
    with its colour widths and neighbours in the warm-started features."""
    from skdccm.networks import SMALL_CNN_COLOUR_WIDTHS

    strokes, shaded = strokes_and_shaded
    common = {"n_clusters": 3, "max_iter": 1, "pretrain_epochs": 1, "batch_size": 32,
              "random_state": 0}
    photo = CRLCClustering(**common).fit(shaded)
    drawn = CRLCClustering(**common).fit(strokes)
    assert photo.photo_defaults_ and not drawn.photo_defaults_
    assert isinstance(drawn.module_.backbone, MLP)
    first_conv = next(m for m in photo.module_.backbone.modules()
                      if isinstance(m, torch.nn.Conv2d))
    assert first_conv.out_channels == SMALL_CNN_COLOUR_WIDTHS[0]
    assert (photo.neighbor_space_, drawn.neighbor_space_) == ("features", "pixels")
