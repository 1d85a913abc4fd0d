"""Pickling: round trips, weights on CPU in the pickle, GPU-trained models on CPU machines.

There is no GPU on the machines that run this suite, so the GPU-to-CPU path is tested
through its mechanism (``__getstate__`` puts the weights on CPU; a ``device_`` that is not
available here falls back to CPU in prediction) and end to end by ``test_gpu_model_loads_on_
a_cpu_only_machine``, which runs only where CUDA is.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from torch import nn

import skdccm
from skdccm import DCCMClustering

ESTIMATOR_CLASSES = [cls for cls in (DCCMClustering, getattr(skdccm, "CRLCClustering", None))
                     if cls is not None]


def tiny(cls, **params):
    return cls(**{"n_clusters": 4, "max_iter": 1, "batch_size": 16, "device": "cpu",
                  "random_state": 0, **params})


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(40, 8, 8)).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted_models(images):
    """One tiny fit per estimator class, shared by the module."""
    return {cls.__name__: tiny(cls).fit(images) for cls in ESTIMATOR_CLASSES}


@pytest.fixture(params=[cls.__name__ for cls in ESTIMATOR_CLASSES])
def fitted(request, fitted_models):
    return fitted_models[request.param]


def all_outputs(est, X):
    return est.predict(X), est.predict_proba(X), est.transform(X)


def assert_identical_outputs(loaded, original, X):
    for got, expected in zip(all_outputs(loaded, X), all_outputs(original, X), strict=True):
        assert_array_equal(got, expected)


def test_pickle_round_trip(fitted, images):
    loaded = pickle.loads(pickle.dumps(fitted))
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    assert_array_equal(loaded.labels_, fitted.labels_)
    assert loaded.history_ == fitted.history_
    assert loaded.input_shape_ == fitted.input_shape_
    assert_identical_outputs(loaded, fitted, images)


def test_joblib_round_trip(fitted, images, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    assert_identical_outputs(loaded, fitted, images)


def test_unfitted_estimator_pickles():
    est = DCCMClustering(n_clusters=3, max_iter=5, image_shape=(1, 28, 28))
    loaded = pickle.loads(pickle.dumps(est))
    assert loaded.get_params() == est.get_params()
    assert not hasattr(loaded, "module_")


def test_getstate_puts_a_cpu_copy_of_the_weights_in_the_pickle(fitted):
    state = fitted.__getstate__()
    assert state["module_"] is not fitted.module_          # a copy: the live model is kept
    tensors = [*state["module_"].parameters(), *state["module_"].buffers()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    for name, value in fitted.module_.state_dict().items():
        assert torch.equal(state["module_"].state_dict()[name], value)


def test_getstate_moves_weights_off_the_training_device(fitted, monkeypatch):
    # Without a GPU, record that __getstate__ calls .cpu() on the copy it pickles: the call
    # that moves CUDA weights home (and is a no-op here).
    calls = []
    original_cpu = nn.Module.cpu

    def recording_cpu(module):
        calls.append(module)
        return original_cpu(module)

    monkeypatch.setattr(nn.Module, "cpu", recording_cpu)
    state = fitted.__getstate__()
    assert any(module is state["module_"] for module in calls)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_unavailable_training_device_falls_back_to_cpu(fitted, images, device, monkeypatch):
    # A model trained on a GPU, unpickled where there is none: device_ still names the GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    loaded = pickle.loads(pickle.dumps(fitted))
    loaded.device_ = torch.device(device)
    assert_identical_outputs(loaded, fitted, images)
    assert loaded.device_ == torch.device(device)  # prediction writes nothing to self


def test_models_load_in_a_fresh_cpu_only_process(fitted_models, images, tmp_path):
    # A new interpreter with CUDA hidden: nothing but the pickles travel. One process for
    # every class, since starting one costs seconds (importing torch).
    joblib.dump(fitted_models, tmp_path / "models.joblib")
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import joblib, numpy as np, torch
        assert not torch.cuda.is_available()
        models = joblib.load({str(tmp_path / "models.joblib")!r})
        X = np.load({str(tmp_path / "images.npy")!r})
        np.savez({str(tmp_path / "proba.npz")!r},
                 **{{name: est.predict_proba(X) for name, est in models.items()}})
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    with np.load(tmp_path / "proba.npz") as loaded:
        assert sorted(loaded.files) == sorted(fitted_models)
        for name, est in fitted_models.items():
            assert_array_equal(loaded[name], est.predict_proba(images))


def _pickleable_kinds():
    return (int, float, str, bool, tuple, list, dict, np.ndarray, np.generic, torch.device,
            nn.Module, type(None))


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_no_loader_progress_bar_or_device_handle_on_self(images, verbose, capsys):
    est = tiny(DCCMClustering, verbose=verbose).fit(images)
    capsys.readouterr()
    for name, value in vars(est).items():
        assert isinstance(value, _pickleable_kinds()), f"{name}: {type(value).__name__}"
        assert not isinstance(value, torch.Generator | torch.utils.data.DataLoader
                              | io.IOBase | torch.Tensor), name
    fitted_names = sorted(name for name in vars(est) if name.endswith("_"))
    assert fitted_names == ["best_init_", "device_", "history_", "init_losses_", "input_shape_",
                            "labels_", "module_", "n_features_in_", "n_iter_", "preset_params_"]
    # The module holds weights and buffers only: every tensor on CPU, no optimiser state.
    assert all(t.device.type == "cpu" for t in est.module_.state_dict().values())
    assert not any(isinstance(v, torch.optim.Optimizer) for v in vars(est.module_).values())
    pickle.dumps(est)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_model_loads_on_a_cpu_only_machine(images, tmp_path):
    est = tiny(DCCMClustering, device="cuda").fit(images)
    assert est.device_.type == "cuda"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(est))
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import pickle, numpy as np, torch
        assert not torch.cuda.is_available()
        est = pickle.loads(open({str(path)!r}, "rb").read())
        X = np.load({str(tmp_path / "images.npy")!r})
        np.save({str(tmp_path / "proba.npy")!r}, est.predict_proba(X))
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    # GPU kernels (TF32, other reduction orders) differ from CPU ones in the last bits.
    np.testing.assert_allclose(np.load(tmp_path / "proba.npy"), est.predict_proba(images),
                               atol=1e-3)
