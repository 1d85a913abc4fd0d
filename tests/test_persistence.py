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
                            "labels_", "module_", "n_features_in_", "n_iter_", "n_neighbors_",
                            "neighbor_space_", "photo_defaults_", "preset_params_",
                            "pretrain_epochs_", "refine_", "refine_agreement_",
                            "refine_check_", "refine_pixels_", "stopped_by_time_"]
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


# ---------------------------------------------------------------------------------------
# the network's copy on the prediction device
# ---------------------------------------------------------------------------------------

#: A device that is not the one ``module_`` lives on (``torch.device("cpu")``), on which this
#: machine can still compute: prediction takes the path of a GPU model, through a copy of
#: the network on the device, and the copy's tensors are ordinary CPU tensors.
OTHER_DEVICE = torch.device("cpu", 0)


def predict_on_other_device(monkeypatch) -> list[nn.Module]:
    """From now on, predict on OTHER_DEVICE; returns the list of networks that predict."""
    used: list[nn.Module] = []
    for cls in ESTIMATOR_CLASSES:
        infer = cls._infer

        def recording(self, module, batch, infer=infer):
            used.append(module)
            return infer(self, module, batch)

        monkeypatch.setattr(cls, "_inference_device", lambda self: OTHER_DEVICE)
        monkeypatch.setattr(cls, "_infer", recording)
    return used


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES, ids=lambda cls: cls.__name__)
def test_prediction_copies_the_network_to_the_device_once(cls, images, monkeypatch):
    est = tiny(cls).fit(images)
    expected = est.predict_proba(images), est.transform(images)
    used = predict_on_other_device(monkeypatch)
    attributes = dict(vars(est))
    for _ in range(2):
        assert_array_equal(est.predict_proba(images), expected[0])
        assert_array_equal(est.transform(images), expected[1])
    assert len(used) == 4 and all(module is used[0] for module in used)
    assert used[0] is not est.module_
    # Nothing written to the estimator (scikit-learn's check_dict_unchanged, on this path).
    assert vars(est).keys() == attributes.keys()
    assert all(vars(est)[name] is value for name, value in attributes.items())


def test_fit_leaves_no_copy_of_the_network_on_the_device(images, monkeypatch):
    from skdccm.base import _DEVICE_COPIES

    used = predict_on_other_device(monkeypatch)
    est = tiny(DCCMClustering).fit(images)   # its labelling pass predicts through a copy
    assert used and used[-1] is not est.module_
    assert est.module_ not in _DEVICE_COPIES
    est.predict(images)
    assert len(_DEVICE_COPIES[est.module_]) == 1


def test_a_network_modified_in_place_gets_a_new_copy(images, monkeypatch):
    est = tiny(DCCMClustering).fit(images)
    used = predict_on_other_device(monkeypatch)
    est.predict(images)
    stale = used[-1]
    est.module_.load_state_dict({name: value * 0.5 if value.is_floating_point() else value
                                 for name, value in est.module_.state_dict().items()})
    proba = est.predict_proba(images)
    assert used[-1] is not stale
    monkeypatch.undo()
    assert_array_equal(proba, est.predict_proba(images))   # the modified weights, on CPU


def test_a_refitted_estimator_gets_a_new_copy(images, monkeypatch):
    est = tiny(DCCMClustering).fit(images)
    used = predict_on_other_device(monkeypatch)
    est.predict(images)
    before = used[-1]
    est.set_params(random_state=1).fit(images)
    est.predict(images)
    assert used[-1] is not before


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES, ids=lambda cls: cls.__name__)
def test_pickles_do_not_carry_the_device_copy(cls, images, monkeypatch, tmp_path):
    est = tiny(cls).fit(images)
    size = len(pickle.dumps(est))
    used = predict_on_other_device(monkeypatch)
    proba = est.predict_proba(images)
    # Byte for byte the pickles differ (storage keys are addresses); a second copy of the
    # weights in them would double their size.
    assert abs(len(pickle.dumps(est)) - size) < size // 10
    assert est.__getstate__().keys() == vars(est).keys()
    joblib.dump(est, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    assert_array_equal(loaded.predict_proba(images), proba)
    assert used[-1] is not used[0]   # the loaded model made its own copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_prediction_reuses_one_copy_of_the_network(images):
    from skdccm.base import _DEVICE_COPIES

    est = tiny(DCCMClustering, device="cuda").fit(images)
    first = est.predict_proba(images)
    ((_, on_gpu),) = _DEVICE_COPIES[est.module_].values()
    assert all(p.device.type == "cuda" for p in on_gpu.parameters())
    assert all(p.device.type == "cpu" for p in est.module_.parameters())
    assert_array_equal(est.predict_proba(images), first)
    assert _DEVICE_COPIES[est.module_][est.device_][1] is on_gpu
