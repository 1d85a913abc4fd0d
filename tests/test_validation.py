"""Input and parameter validation of DCCMClustering (issue 6): every bad input or value
fails early with a ValueError or TypeError that names the problem and, where there is one,
the fix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

from skdccm import DCCMClustering
from skdccm.validation import check_int, is_int


@pytest.fixture(scope="module")
def images(digit_images):
    return np.array(digit_images[:40])


@pytest.fixture(scope="module")
def fitted(images, tiny_config):
    """A tiny fit on grey (n, 8, 8) images."""
    return DCCMClustering(n_clusters=3, max_iter=1, ablation="M3", **tiny_config).fit(images)


@pytest.fixture
def tiny(make_dccm):
    return lambda **params: make_dccm(**{"n_clusters": 3, **params})


def with_value(images, value):
    bad = images.astype(np.float32)
    bad[3, 2, 5] = value
    return bad


# ---------------------------------------------------------------------------------------
# bad X in fit
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make_X", "error", "match"), [
    (lambda im: with_value(im, np.nan), ValueError, "Input X contains NaN"),
    (lambda im: with_value(im, np.inf), ValueError, "Input X contains infinity"),
    (lambda im: with_value(im, -np.inf), ValueError, "Input X contains infinity"),
    (lambda im: im.reshape(-1)[:64], ValueError, "Expected 2D array, got 1D array"),
    (lambda im: im.reshape(40, 1, 8, 8, 1), ValueError,
     r"must be 2-D .* got 5-D with shape \(40, 1, 8, 8, 1\)"),
    (lambda im: im[:0], ValueError, r"0 sample\(s\)"),
    (lambda im: im.reshape(40, 64)[:0], ValueError, r"0 sample\(s\)"),
    (lambda im: np.zeros((10, 0)), ValueError, r"0 feature\(s\)"),
    (lambda im: im[:1], ValueError, "1 sample"),
    (lambda im: im[:1].reshape(1, 64), ValueError, "1 sample"),
    (lambda im: im[:2], ValueError, r"n_samples=2 should be >= n_clusters=3; pass more "
                                    "samples or lower n_clusters"),
    (lambda im: np.array([["a", "b"]] * 5), ValueError, r"<U1 values, not numbers"),
    (lambda im: np.array([[object(), 1.0]] * 5, dtype=object), TypeError,
     "argument must be a string or a real number"),
    (lambda im: im.reshape(40, 64) * (1 + 1j), ValueError, "Complex data not supported"),
    (lambda im: np.zeros((5, 3, 3)), ValueError, "too small"),
])
def test_bad_training_data(make_X, error, match, images, tiny):
    with pytest.raises(error, match=match):
        tiny().fit(make_X(images))


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_matrices_are_rejected_with_advice(fmt, images, tiny):
    X = sp.random(40, 64, density=0.3, format=fmt, random_state=0)
    with pytest.raises(TypeError, match=r"dense data is required.*\.toarray\(\)"):
        tiny().fit(X)


def test_image_shape_must_match_the_features(images, tiny):
    with pytest.raises(ValueError, match=r"DCCMClustering: image_shape=\(1, 7, 7\) needs 49 "
                                         "features per sample, X has 64"):
        tiny(image_shape=(1, 7, 7)).fit(images.reshape(40, 64))
    with pytest.raises(ValueError, match=r"image_shape is only for 2-D X"):
        tiny(image_shape=(1, 8, 8)).fit(images)
    with pytest.raises(ValueError, match="positive sizes"):
        tiny(image_shape=(-1, 8, 8)).fit(images.reshape(40, 64))


def test_flat_features_with_an_image_backbone_or_augmentation(images, tiny):
    flat = images.reshape(40, 64)
    with pytest.raises(ValueError, match=r"backbone='conv' needs images.*image_shape"):
        tiny(backbone="conv").fit(flat)
    with pytest.raises(ValueError, match=r"augmentation='cifar' needs images"):
        tiny(augmentation="cifar").fit(flat)


# ---------------------------------------------------------------------------------------
# bad X after fit
# ---------------------------------------------------------------------------------------


def test_unfitted_estimator(images, tiny):
    with pytest.raises(NotFittedError):
        tiny().predict(images)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "transform"])
@pytest.mark.parametrize(("make_X", "match"), [
    (lambda im: np.zeros((3, 9, 9)), r"fitted on samples of shape \(1, 8, 8\), images "
                                     r"\(C, H, W\), but X holds samples of shape \(1, 9, 9\)"),
    (lambda im: np.zeros((3, 8, 8, 3)), r"\(1, 8, 8\).*\(3, 8, 8\)"),           # channels
    (lambda im: np.zeros((3, 3, 8, 8)), r"\(1, 8, 8\).*\(3, 8, 8\)"),
    (lambda im: np.zeros((3, 64)), r"\(1, 8, 8\).*\(64,\), flat features"),
    (lambda im: np.full((3, 8, 8), np.nan), "Input X contains NaN"),
    (lambda im: np.zeros((0, 8, 8)), r"0 sample\(s\)"),
    (lambda im: np.zeros(64), "Expected 2D array"),
])
def test_bad_data_after_fit(fitted, images, method, make_X, match):
    with pytest.raises(ValueError, match=match):
        getattr(fitted, method)(make_X(images))


def test_sparse_after_fit(fitted):
    with pytest.raises(TypeError, match=r"\.toarray\(\)"):
        fitted.predict(sp.csr_matrix(np.zeros((3, 64))))


def test_equivalent_forms_after_fit_are_accepted(fitted, images):
    expected = fitted.predict_proba(images[:10])
    for form in (images[:10, None], images[:10, ..., None]):
        np.testing.assert_array_equal(fitted.predict_proba(form), expected)
    assert fitted.predict(images[:1]).shape == (1,)   # one sample is fine after fit


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"batch_size": 0}, {"batch_size": -4}, {"batch_size": 2.5}, {"batch_size": True},
    {"max_iter": -1}, {"max_iter": 0}, {"max_iter": 2.0}, {"target_batch_size": 0},
    {"passes_per_target": 0}, {"draws_per_batch": -2}, {"n_negatives": 0}, {"mi_hidden": 0},
    {"predict_batch_size": 0}, {"checkpoint_every": 0}, {"n_init": 0}, {"init_iter": 1.5},
])
def test_sizes_must_be_positive_ints(params, images, tiny):
    (key, value), = params.items()
    with pytest.raises(ValueError, match=rf"DCCMClustering: {key}={value!r} must be a "
                                         "positive int"):
        tiny(**params).fit(images)


def test_numpy_ints_are_accepted_as_sizes(images, tiny):
    est = tiny(max_iter=np.int64(1), batch_size=np.int32(32), n_negatives=np.int64(2),
               target_batch_size=np.int64(64)).fit(images)
    assert est.n_iter_ == 1


@pytest.mark.parametrize(("params", "match"), [
    ({"learning_rate": 0}, "learning_rate=0 must be > 0"),
    ({"learning_rate": -1e-3}, "learning_rate=-0.001 must be > 0"),
    ({"tol": -0.1}, "tol=-0.1 must be >= 0"),
    ({"alpha": -1.0}, "alpha=-1.0 must be >= 0"),
    ({"beta": -0.5}, "beta=-0.5 must be >= 0"),
    ({"balance_weight": -1}, "balance_weight=-1 must be >= 0"),
    ({"instance_weight": -0.5}, "instance_weight=-0.5 must be >= 0"),
    ({"weight_decay": -1e-4}, "weight_decay=-0.0001 must be >= 0"),
    ({"graph_threshold": 0.0}, r"graph_threshold=0.0 must be in \(0, 1\]"),
    ({"graph_threshold": 1.5}, r"graph_threshold=1.5 must be in \(0, 1\]"),
    ({"confidence_threshold": -0.2}, r"confidence_threshold=-0.2 must be in \(0, 1\]"),
    ({"n_clusters": 0}, "n_clusters=0 must be at least"),
    ({"n_clusters": -3}, "n_clusters=-3 must be at least"),
])
def test_out_of_range_values(params, match, images, tiny):
    with pytest.raises(ValueError, match=f"DCCMClustering: {match}"):
        tiny(**params).fit(images)


@pytest.mark.parametrize("params", [
    {"n_clusters": 2.5}, {"n_clusters": "3"}, {"n_clusters": None}, {"n_clusters": True},
    {"learning_rate": "fast"}, {"tol": "0.1"}, {"alpha": "x"}, {"beta": "0.1"},
    {"graph_threshold": "high"},
])
def test_non_numbers_are_type_errors(params, images, tiny):
    (key, value), = params.items()
    with pytest.raises(TypeError, match=rf"DCCMClustering: {key}.*{value!r}"):
        tiny(**params).fit(images)


@pytest.mark.parametrize(("params", "match"), [
    ({"preset": "fast"}, r"unknown preset 'fast'; choose one of 'paper', 'code', 'default'"),
    ({"backbone": "vgg"}, r"unknown backbone 'vgg'; choose one of 'auto', 'conv', 'small', "
                          r"'mlp', 'resnet18', 'resnet34'"),
    ({"augmentation": "strong"}, r"unknown augmentation 'strong'; choose one of 'auto', "
                                 r"'cifar', 'mild', 'digits', 'none'"),
    ({"optimizer": "lbfgs"}, r"unknown optimizer 'lbfgs'; choose 'rmsprop', 'adam', "
                             r"'adamw' or 'sgd'"),
    ({"lr_schedule": "step"}, r"unknown lr_schedule 'step'; choose 'constant' or 'cosine'"),
    ({"ablation": "M5"}, r"unknown ablation 'M5'; choose one of 'M1', 'M2', 'M3', 'M4' "
                         "or None"),
    ({"pseudo_label_loss": "mse"}, r"pseudo_label_loss='mse'; choose 'ce' or 'bce'"),
    ({"precision": "fp8"}, r"precision='fp8'; choose 'auto', 'float32', 'bf16' or 'fp16'"),
    ({"channels": "middle"}, r"channels='middle' must be None, 'first' or 'last'"),
    ({"verbose": 3}, r"verbose=3 must be 0, 1 or 2"),
    ({"device": "gpu0"}, r"device='gpu0' is not a torch device"),
])
def test_unknown_names_list_the_valid_ones(params, match, images, tiny):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(images)


def test_bad_backbone_and_callbacks_are_type_errors(images, tiny):
    with pytest.raises(TypeError, match=r"backbone must be a name, an nn.Module class or "
                                        "instance; got 3"):
        tiny(backbone=3).fit(images)
    with pytest.raises(TypeError, match="callbacks must be callables or objects with an "
                                        "on_epoch_end method"):
        tiny(callbacks=3).fit(images)
    with pytest.raises(TypeError, match="callbacks must be"):
        tiny(callbacks=[print, "not callable"]).fit(images)


# ---------------------------------------------------------------------------------------
# the shared integer checks (skdccm.validation): which values pass, what the message says
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 3, np.int64(3), np.uint8(2)])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, "3", None])
def test_is_int_rejects_bools_floats_and_strings(value):
    assert not is_int(value)


@pytest.mark.parametrize("value", [1, 7, np.int32(2)])
def test_check_int_passes_positive_ints(value):
    check_int(value, "n_runs", "Owner")


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "auto", None])
def test_check_int_names_owner_key_and_value(value):
    with pytest.raises(ValueError, match=rf"Owner: n_runs={value!r} must be a positive int"):
        check_int(value, "n_runs", "Owner")


def test_check_int_minimum_zero_allows_zero_and_says_so():
    check_int(0, "pretrain_epochs", "Owner", minimum=0)
    with pytest.raises(ValueError, match=r"pretrain_epochs=-1 must be an int >= 0"):
        check_int(-1, "pretrain_epochs", "Owner", minimum=0)


def test_check_int_auto_allowed_only_when_asked():
    check_int("auto", "min_steps", "Owner", minimum=0, auto=True)
    with pytest.raises(ValueError, match=r"min_steps='fast' must be 'auto' or an int >= 0"):
        check_int("fast", "min_steps", "Owner", minimum=0, auto=True)
    with pytest.raises(ValueError, match=r"must be an int >= 0"):
        check_int("auto", "min_steps", "Owner", minimum=0)
