"""Tests of DCCMClustering: the estimator's outputs, reproducibility, presets, ablations and
the options that change the objective. Tiny CPU fits on scikit-learn's 8x8 digits."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import skdccm.data as data_module
import skdccm.dccm as dccm_module
from skdccm.dccm import PRESETS
from skdccm.networks import DCCMNetwork, ShallowAlexNet, SmallCNN

#: Sizes that keep the paper and code presets (10 passes, 2 draws, 1000 per target batch)
#: tiny; every other preset value is left to the preset.
TINY_LOOP = {"max_iter": 1, "batch_size": 16, "target_batch_size": 32,
             "passes_per_target": 1, "draws_per_batch": 1}


@pytest.fixture
def X(digit_images):
    return digit_images[:48]


def batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------------------------------
# outputs of a fitted estimator
# ---------------------------------------------------------------------------------------


def test_fitted_attributes(fitted_dccm, digit_images):
    est = fitted_dccm
    assert est.labels_.shape == (150,) and est.labels_.dtype.kind == "i"
    assert est.n_iter_ == len(est.history_) == 3
    assert est.input_shape_ == (1, 8, 8)
    assert est.n_features_in_ == 8
    assert est.device_ == torch.device("cpu")
    assert isinstance(est.module_, DCCMNetwork) and not est.module_.training
    assert all(p.device.type == "cpu" for p in est.module_.parameters())
    assert est.get_feature_names_out().shape == (64,)


def test_predict_proba_transform_shapes_and_dtypes(fitted_dccm, digit_images):
    new = digit_images[:37]
    proba = fitted_dccm.predict_proba(new)
    assert proba.shape == (37, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba >= 0).all()
    labels = fitted_dccm.predict(new)
    assert labels.shape == (37,) and labels.dtype.kind == "i"
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    embedding = fitted_dccm.transform(new)
    assert embedding.shape == (37, 64) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    assert fitted_dccm.transform(new.astype(np.float64) / 255).dtype == np.float32


def test_labels_are_consecutive_by_decreasing_size_and_match_predict(fitted_dccm,
                                                                      digit_images):
    labels = fitted_dccm.labels_
    used = np.unique(labels)
    assert len(used) >= 2
    np.testing.assert_array_equal(used, np.arange(len(used)))
    sizes = np.bincount(labels)
    assert (np.diff(sizes) <= 0).all()
    np.testing.assert_array_equal(fitted_dccm.predict(digit_images), labels)


def test_prediction_does_not_depend_on_batching_with_running_statistics(fitted_dccm,
                                                                        digit_images):
    whole = fitted_dccm.predict_proba(digit_images)
    part = fitted_dccm.predict_proba(digit_images[:20])
    np.testing.assert_allclose(part, whole[:20], atol=1e-6)
    small_batches = copy.deepcopy(fitted_dccm).set_params(predict_batch_size=7)
    np.testing.assert_allclose(small_batches.predict_proba(digit_images), whole, atol=1e-6)


def test_pickle_round_trip(fitted_dccm, digit_images):
    restored = pickle.loads(pickle.dumps(fitted_dccm))
    np.testing.assert_array_equal(restored.predict_proba(digit_images[:30]),
                                  fitted_dccm.predict_proba(digit_images[:30]))


def test_predict_on_another_image_size_raises(fitted_dccm):
    with pytest.raises(ValueError, match=r"fitted on samples of shape \(1, 8, 8\).*"
                                         r"\(1, 9, 9\)"):
        fitted_dccm.predict(np.zeros((3, 9, 9), dtype=np.uint8))


def test_fit_predict_equals_labels(make_dccm, X):
    labels = make_dccm().fit_predict(X)
    est = make_dccm().fit(X)
    np.testing.assert_array_equal(labels, est.labels_)


def test_fit_returns_self_and_keeps_the_parameters(make_dccm, X):
    est = make_dccm(preset="paper", **TINY_LOOP)
    before = est.get_params()
    assert est.fit(X) is est
    after = est.get_params()
    assert before.keys() == after.keys()
    assert all(after[k] is before[k] or after[k] == before[k] for k in before)
    assert est.device == "cpu" and est.alpha is None   # resolved values live elsewhere


# ---------------------------------------------------------------------------------------
# randomness
# ---------------------------------------------------------------------------------------


def test_same_seed_same_result_other_seed_other_result(make_dccm, X):
    a = make_dccm(random_state=3).fit(X)
    b = make_dccm(random_state=3).fit(X)
    c = make_dccm(random_state=4).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.allclose(a.predict_proba(X), c.predict_proba(X), atol=1e-3)


def test_full_objective_is_reproducible_with_several_threads(make_dccm, X):
    # CI runs with two threads: every backward (the MI loss gathers shallow maps with
    # repeated indices) must accumulate in a fixed order.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fits = [make_dccm(max_iter=1, batch_size=16, target_batch_size=32, ablation="M4")
                .fit(X[:32]) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    first, second = (f.module_.state_dict() for f in fits)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_random_state_instance_is_accepted(make_dccm, X):
    a = make_dccm(random_state=np.random.RandomState(5)).fit(X)
    b = make_dccm(random_state=np.random.RandomState(5)).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_global_random_states_are_untouched(make_dccm, X):
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the legacy global state is what users share
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    make_dccm(random_state=0).fit(X).predict_proba(X)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == numpy_state[0]
    np.testing.assert_array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]


# ---------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------


PAPER_VALUES = {
    "optimizer": "rmsprop", "learning_rate": 1e-4, "lr_schedule": "constant",
    "weight_decay": 0.0, "alpha": 5.0, "beta": 0.1, "graph_threshold": 0.95,
    "confidence_threshold": 0.9, "pseudo_label_loss": "ce", "original_view_loss": True,
    "balance_weight": 0.0, "bn_batch_stats": True, "n_negatives": 2, "mi_hidden": 512,
    "n_neighbors": 0, "min_steps": 0, "pretrain_epochs": 0, "instance_weight": 0.0,
}


def test_paper_preset_resolves_to_the_papers_settings(make_dccm, X):
    est = make_dccm(preset="paper", **TINY_LOOP).fit(X)
    assert est.preset_params_ == {**PAPER_VALUES, **TINY_LOOP}
    assert PRESETS["paper"]["max_iter"] == 200
    assert (PRESETS["paper"]["batch_size"], PRESETS["paper"]["target_batch_size"],
            PRESETS["paper"]["passes_per_target"], PRESETS["paper"]["draws_per_batch"]) == (
        32, 1000, 10, 2)
    assert set(est.history_[0]["loss_parts"]) == {"graph", "label", "mi"}
    assert all(m.running_mean is None for m in batchnorms(est.module_))   # batch statistics


def test_code_preset_resolves_to_the_released_codes_settings(make_dccm, X):
    est = make_dccm(preset="code", **TINY_LOOP).fit(X)
    expected = {**PAPER_VALUES, "pseudo_label_loss": "bce", "original_view_loss": False,
                "beta": 0.05, **TINY_LOOP}
    assert est.preset_params_ == expected


def test_default_preset_and_explicit_values(make_dccm, X):
    est = make_dccm(alpha=2.0, **TINY_LOOP).fit(X)
    assert est.preset_params_ == {**PRESETS["default"], **TINY_LOOP, "alpha": 2.0}
    assert PRESETS["default"].keys() == PRESETS["paper"].keys() == PRESETS["code"].keys()


# ---------------------------------------------------------------------------------------
# the objective: ablations, weights, views
# ---------------------------------------------------------------------------------------


@pytest.fixture
def count_views(monkeypatch):
    """Count augmented views drawn during a fit."""
    calls = []
    original = dccm_module.dccm_view

    def counting(images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(images, *args, **kwargs)

    monkeypatch.setattr(dccm_module, "dccm_view", counting)
    return calls


@pytest.mark.parametrize(("ablation", "parts", "augmented"), [
    ("M1", {"graph"}, False),
    ("M2", {"graph"}, True),
    ("M3", {"graph", "label"}, True),
    ("M4", {"graph", "label", "mi"}, True),
    (None, {"graph", "label", "mi"}, True),
])
def test_ablations_use_exactly_their_loss_parts(make_dccm, X, count_views, ablation, parts,
                                                augmented):
    alpha, beta = 3.0, 0.5
    est = make_dccm(ablation=ablation, balance_weight=0.0, alpha=alpha, beta=beta,
                    max_iter=2).fit(X)
    for record in est.history_:
        assert set(record["loss_parts"]) == parts
        p = record["loss_parts"]
        total = p["graph"] + alpha * p.get("label", 0.0) + beta * p.get("mi", 0.0)
        assert record["loss"] == pytest.approx(total, rel=1e-5)
    assert (len(count_views) > 0) is augmented


@pytest.mark.parametrize(("params", "width"), [
    ({"mi_hidden": 24}, 24), ({"preset": "paper"}, 512), ({}, 64),
])
def test_mi_hidden_sets_the_discriminator_width(make_dccm, X, monkeypatch, params, width):
    built = []
    original = dccm_module.MIDiscriminator

    def spy(*args):
        built.append(original(*args))
        return built[-1]

    monkeypatch.setattr(dccm_module, "MIDiscriminator", spy)
    make_dccm(**{**TINY_LOOP, **params}).fit(X)
    hidden = [layer.out_features for layer in built[0].net if isinstance(layer, torch.nn.Linear)]
    assert hidden == [width, width, 1]


def test_balance_term_enters_the_loss_with_its_weight(make_dccm, X):
    est = make_dccm(ablation="M3", balance_weight=0.7, alpha=1.0).fit(X)
    p = est.history_[0]["loss_parts"]
    assert set(p) == {"graph", "label", "balance"}
    assert est.history_[0]["loss"] == pytest.approx(p["graph"] + p["label"]
                                                    + 0.7 * p["balance"], rel=1e-5)


def test_instance_term_enters_the_loss_with_its_weight(make_dccm, X):
    est = make_dccm(ablation="M2", balance_weight=0.0, instance_weight=0.6).fit(X)
    p = est.history_[0]["loss_parts"]
    assert set(p) == {"graph", "instance"}
    assert est.history_[0]["loss"] == pytest.approx(p["graph"] + 0.6 * p["instance"],
                                                    rel=1e-5)
    assert "instance" not in make_dccm().fit(X).history_[0]["loss_parts"]   # default: off


def test_instance_term_is_nt_xent_of_the_two_views_projected_embeddings(digit_images,
                                                                         monkeypatch):
    torch.manual_seed(0)
    images = torch.from_numpy(digit_images[:12]).float().div(16.0).unsqueeze(1)  # (12,1,8,8)
    augmented = images.flip(-1)                       # a stand-in view, known to the test
    monkeypatch.setattr(dccm_module, "dccm_view", lambda *args: augmented)
    backbone = ShallowAlexNet(1, (8, 8))
    shallow_channels, n_features = dccm_module.infer_output_shapes(backbone, (1, 8, 8))
    module = DCCMNetwork(backbone, n_features, 3).eval()         # rows independent of batch
    objective = dccm_module.DCCMObjective(
        n_clusters=3, shallow_channels=shallow_channels,
        components=dccm_module.ABLATIONS["M2"],
        alpha=0.0, beta=0.0, graph_threshold=0.95, confidence_threshold=0.9,
        pseudo_label_form="ce", original_view=True,
        augmentation=dccm_module.resolve_affine("digits", (1, 8, 8)), value_range=(0.0, 1.0),
        balance_weight=0.0, n_negatives=2, mi_hidden=8, instance_weight=0.3,
        embedding_dim=module.cluster.in_features)
    targets = objective.prepare(module, images)
    result = objective.step(module, images, targets, torch.arange(12), torch.Generator())

    def projected(x):
        with torch.no_grad():
            z = objective.projection.double()(module(x).embedding.double())
            return torch.nn.functional.normalize(z, dim=1)

    want = dccm_module.nt_xent_loss(projected(images), projected(augmented),
                                    dccm_module.WARM_START_TEMPERATURE)
    assert float(result.parts["instance"]) == pytest.approx(float(want), rel=1e-5)
    assert float(result.loss) == pytest.approx(
        float(result.parts["graph"]) + 0.3 * float(want), rel=1e-5)


@pytest.mark.parametrize("params", [
    {"ablation": "M1"}, {"augmentation": "none"}, {"original_view_loss": False},
    {"preset": "code"},
])
def test_instance_term_needs_both_views(make_dccm, X, params):
    with pytest.raises(ValueError, match=r"instance_weight=0\.5 compares each image"):
        make_dccm(instance_weight=0.5, **params).fit(X)


@pytest.mark.parametrize(("original_view_loss", "rows"), [(True, 32), (False, 16)])
def test_original_view_loss_adds_the_unaugmented_images(make_dccm, digit_images, monkeypatch,
                                                        original_view_loss, rows):
    # 48 images in one target batch of 48, minibatches of 16: the network sees 48 rows
    # for the targets, then 16 rows per view per step.
    seen = []
    original = DCCMNetwork.forward
    monkeypatch.setattr(DCCMNetwork, "forward",
                        lambda self, x: seen.append(x.shape[0]) or original(self, x))
    make_dccm(ablation="M2", batch_size=16, target_batch_size=48,
              original_view_loss=original_view_loss).fit(digit_images[:48])
    training_rows = seen[:4]           # targets, then three steps; prediction comes after
    assert training_rows == [48, rows, rows, rows]


def test_bn_batch_stats(make_dccm, X):
    est = make_dccm(bn_batch_stats=True).fit(X)
    assert batchnorms(est.module_) and all(
        m.running_mean is None and not m.track_running_stats for m in batchnorms(est.module_))
    whole = est.predict_proba(X)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    # batch statistics: an image's probabilities depend on the batch it comes in
    assert not np.allclose(est.predict_proba(X[:10]), whole[:10], atol=1e-4)
    with pytest.raises(ValueError, match=r"bn_batch_stats=True.*single sample"):
        est.predict(X[:1])
    running = make_dccm(bn_batch_stats=False).fit(X)
    assert all(m.running_mean is not None for m in batchnorms(running.module_))


def test_every_input_form_gives_the_same_fit(make_dccm, digit_images):
    # Probabilities, not labels: a one-epoch fit may still put most images in one cluster.
    images = digit_images[:40]                                         # (40, 8, 8) uint8
    reference = make_dccm(ablation="M3").fit(images)
    expected = reference.predict_proba(images)
    forms = [
        (images.reshape(40, 64), {"image_shape": (8, 8)}),
        (images.reshape(40, 64), {"image_shape": (1, 8, 8)}),
        (images[..., None], {}),                                       # (n, H, W, 1)
        (images[:, None], {}),                                         # (n, 1, H, W)
    ]
    for array, params in forms:
        est = make_dccm(ablation="M3", **params).fit(array)
        assert est.input_shape_ == (1, 8, 8)
        np.testing.assert_array_equal(est.labels_, reference.labels_)
        np.testing.assert_array_equal(est.predict_proba(array), expected)
    # uint8 is scaled by 1/255; floats are used as given, so the scaled values given as
    # float32, float64 or nested lists are the same fit
    scaled = images.astype(np.float32) * np.float32(1 / 255)
    for array in (scaled, scaled.astype(np.float64), scaled.tolist()):
        est = make_dccm(ablation="M3").fit(array)
        np.testing.assert_array_equal(est.predict_proba(array), expected)


def test_flat_features_use_the_mlp_without_augmentation(make_dccm, X, count_views):
    flat = X.reshape(len(X), -1).astype(np.float32) / 255
    est = make_dccm().fit(flat)
    assert est.input_shape_ == (64,)
    assert count_views == []                      # "auto": no image augmentation
    assert est.transform(flat).shape == (48, 64)


@pytest.mark.parametrize(("preset", "shape", "expected"), [
    ("default", (28, 28), SmallCNN),          # grey, 16 pixels or more: the small CNN
    ("default", (1, 16, 16), SmallCNN),
    ("default", (15, 15), ShallowAlexNet),    # smaller grey images keep the paper's network
    ("default", (24, 24, 3), SmallCNN),       # colour images get the small CNN too
    ("paper", (28, 28), ShallowAlexNet),      # the paper and code presets keep their network
    ("code", (28, 28), ShallowAlexNet),
])
def test_auto_backbone_depends_on_preset_and_image(make_dccm, preset, shape, expected):
    images = np.random.default_rng(0).integers(0, 256, size=(40, *shape), dtype=np.uint8)
    est = make_dccm(preset=preset, **TINY_LOOP).fit(images)
    assert type(est.module_.backbone) is expected
    assert est.transform(images[:3]).shape == (3, 64)



def test_default_preset_trains_colour_images_for_fewer_epochs():
    # An epoch of colour images costs about four times a grey one's: the default preset's
    # 50 epochs become COLOUR_MAX_ITER for them, unless max_iter is given.
    from skdccm import DCCMClustering
    from skdccm.data import infer_layout

    colour = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    common = {"n_clusters": 2, "batch_size": 20, "target_batch_size": 40, "min_steps": 0,
              "pretrain_epochs": 0, "random_state": 0}
    assert PRESETS["default"]["max_iter"] > dccm_module.COLOUR_MAX_ITER
    assert DCCMClustering(**common).fit(colour).n_iter_ == dccm_module.COLOUR_MAX_ITER
    assert DCCMClustering(**common, max_iter=2).fit(colour).n_iter_ == 2   # as given
    grey = colour[..., 0]
    layout = infer_layout(grey.shape, grey.dtype, image_shape=None, channels=None,
                          owner="test")
    spec = DCCMClustering(**common)._train_spec(PRESETS["default"], len(grey), layout)
    assert spec.max_epochs == PRESETS["default"]["max_iter"]


# ---------------------------------------------------------------------------------------
# the defaults for photographs on grey images with few a cluster (data.grey_photographs)
# ---------------------------------------------------------------------------------------


def test_grey_images_with_few_a_cluster_take_the_defaults_for_photographs():
    from skdccm import DCCMClustering
    from skdccm.networks import SMALL_CNN_COLOUR_WIDTHS, SMALL_CNN_WIDTHS

    side = data_module.PHOTO_MIN_SIDE
    rng = np.random.default_rng(0)
    few = rng.random((3 * 20, side, side), dtype=np.float32)      # 20 images a cluster
    many = rng.random((3 * (data_module.PHOTO_MAX_CLUSTER_SIZE + 1), side, side),
                      dtype=np.float32)
    common = {"n_clusters": 3, "max_iter": 1, "batch_size": 32, "target_batch_size": 64,
              "random_state": 0}
    photo = DCCMClustering(**common).fit(few)
    strokes = DCCMClustering(**common).fit(many)
    assert photo.photo_defaults_ and not strokes.photo_defaults_
    # every colour default follows: warm start, neighbours in its features, wide network
    assert photo.pretrain_epochs_ == 1 and strokes.pretrain_epochs_ == 0
    assert (photo.neighbor_space_, strokes.neighbor_space_) == ("features", "pixels")
    first_conv = next(m for m in photo.module_.backbone.modules()
                      if isinstance(m, torch.nn.Conv2d))
    assert first_conv.out_channels == SMALL_CNN_COLOUR_WIDTHS[0]
    first_conv = next(m for m in strokes.module_.backbone.modules()
                      if isinstance(m, torch.nn.Conv2d))
    assert first_conv.out_channels == SMALL_CNN_WIDTHS[0]


def test_strokes_with_few_a_cluster_keep_the_grey_defaults():
    """The same number of images a cluster as the shaded images above, but drawn: ink at
    one end of the range on a background at the other, anti-aliased edges between."""
    from skdccm import DCCMClustering

    side = data_module.PHOTO_MIN_SIDE
    rng = np.random.default_rng(0)
    strokes = np.zeros((3 * 20, side, side), dtype=np.float32)
    strokes[:, 4:12, 6:9] = 1.0                    # a bar of ink
    strokes[:, 4:12, 5] = strokes[:, 4:12, 9] = 0.5  # its anti-aliased edges
    strokes += rng.normal(0, 0.01, strokes.shape).astype(np.float32)
    shaded = np.clip(strokes + rng.uniform(0.2, 0.8, (len(strokes), 1, 1)), 0, 1)
    common = {"n_clusters": 3, "max_iter": 1, "batch_size": 32, "target_batch_size": 64,
              "random_state": 0}
    assert not DCCMClustering(**common).fit(strokes).photo_defaults_
    assert DCCMClustering(**common).fit(shaded.astype(np.float32)).photo_defaults_


@pytest.mark.parametrize("shape, n, preset, midtones, expected", [
    ((1, 32, 32), 400, "default", 0.99, True),      # ORL-like: 10 shaded faces a cluster
    ((1, 32, 32), 400, "default", 0.50, False),     # strokes (MNIST-like foreground)
    ((1, 32, 32), 4001, "default", 0.99, False),    # over PHOTO_MAX_CLUSTER_SIZE a cluster
    ((1, 8, 8), 400, "default", 0.99, False),       # under PHOTO_MIN_SIDE: digit-sized
    ((1, 32, 32), 400, "paper", 0.99, False),       # the paper's settings stay as published
    ((3, 32, 32), 100_000, "paper", 0.0, True),     # colour images, whatever they show
    ((64,), 400, "default", 0.99, False),           # flat features
])
@pytest.mark.parametrize("family", ["DCCMClustering", "CRLCClustering"])
def test_which_images_take_the_defaults_for_photographs(shape, n, preset, midtones,
                                                        expected, family):
    import skdccm

    estimator = getattr(skdccm, family)(n_clusters=40, preset=preset)
    assert estimator._photo_defaults(shape, n, lambda: midtones) is expected


@pytest.mark.parametrize("family", ["DCCMClustering", "CRLCClustering"])
def test_the_midtone_threshold_is_inclusive_and_read_only_when_needed(family):
    import skdccm

    estimator = getattr(skdccm, family)(n_clusters=40)
    assert estimator._photo_defaults((1, 32, 32), 400, lambda: data_module.PHOTO_MIN_MIDTONES)
    assert not estimator._photo_defaults(
        (1, 32, 32), 400, lambda: np.nextafter(data_module.PHOTO_MIN_MIDTONES, 0))

    def unread():
        raise AssertionError("the data were read for a decision the shape already made")

    assert not estimator._photo_defaults((1, 32, 32), 4001, unread)
    assert estimator._photo_defaults((3, 32, 32), 400, unread)

