"""Robustness of DCCMClustering (issue 6): random inputs and parameters, a real SIGINT,
a killed run resumed from its checkpoint, and divergence next to a checkpoint.

Property tests throw random shapes, dtypes, non-finite values and parameter values at a tiny
CPU fit. Each test decides from the drawn input alone, by the documented rules, whether it is
valid, and requires a fitted model exactly then, a ValueError/TypeError with a message
otherwise. The process tests run a fit in a child Python process (one thread, so that results
are bit-for-bit reproducible) and interrupt it for real: SIGINT, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from skdccm import DCCMClustering
from skdccm.training import CHECKPOINT_NAME

#: max_iter=1 and small batches: every example is at most one tiny epoch on CPU.
TINY = {"max_iter": 1, "batch_size": 8, "target_batch_size": 16, "device": "cpu",
        "random_state": 0}

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])

DTYPES = ("uint8", "int64", "float32", "float64", "bool", "complex128", "str")


def make_array(draw, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` with seeded values in the dtype's natural range."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    if dtype == "int64":
        return rng.integers(-3, 300, size=shape).astype(np.int64)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "complex128":
        return rng.random(shape) + 1j * rng.random(shape)
    if dtype == "str":
        return rng.integers(0, 10, size=shape).astype(str)
    return rng.random(shape).astype(dtype)


def fit_or_refuse(est: DCCMClustering, X, valid: bool) -> DCCMClustering | None:
    """Fit valid input (any exception fails the test); refuse invalid input with a clear
    ValueError/TypeError. ``valid`` is decided by the test from the drawn input alone."""
    if valid:
        return est.fit(X)
    with pytest.raises((ValueError, TypeError)) as refusal:
        est.fit(X)
    assert str(refusal.value).strip(), f"{refusal.type.__name__} without a message"
    return None


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_fitted(est: DCCMClustering, X) -> None:
    n = len(X)
    assert est.labels_.shape == (n,)
    assert est.labels_.min() >= 0 and est.labels_.max() < est.n_clusters
    proba = est.predict_proba(X)
    assert proba.shape == (n, est.n_clusters)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


@st.composite
def shapes(draw) -> tuple[int, ...]:
    """1-D to 5-D shapes with 0 to 20 samples and small (possibly empty) axes; every other
    draw is 2-D to 4-D with enough samples and sides of 4 or more (the last axis of 4-D
    shapes still random), so that valid input comes up about as often as invalid."""
    if draw(st.booleans()):
        ndim = draw(st.integers(2, 4))
        n = draw(st.sampled_from([5, 20]))
        rest = [draw(st.sampled_from([4, 5, 8])) for _ in range(ndim - 1)]
        if ndim == 4:
            rest[-1] = draw(st.sampled_from([1, 2, 3, 4, 8]))
        return (n, *rest)
    ndim = draw(st.integers(1, 5))
    n = draw(st.sampled_from([0, 1, 2, 5, 20]))
    rest = [draw(st.sampled_from([0, 1, 2, 3, 4, 8])) for _ in range(ndim - 1)]
    return (n, *rest)


def is_valid_training_data(shape: tuple[int, ...], dtype: str, n_clusters: int) -> bool:
    """The documented rules (user guide, "Input formats"), written out independently of
    the library: real numbers; flat features, grey images or 4-D images whose last axis is
    the channels when it has 1, 3 or 4 entries; at least two samples and one per cluster;
    no empty axis; images at least 4 pixels a side (the paper's CNN, the auto backbone for
    images this small)."""
    n, *rest = shape
    if dtype not in ("uint8", "int64", "float32", "float64", "bool"):
        return False
    if not 2 <= len(shape) <= 4 or n < max(2, n_clusters) or 0 in rest:
        return False
    if len(shape) == 2:
        return True
    height, width = rest[:2] if len(shape) == 3 or rest[-1] in (1, 3, 4) else rest[1:]
    return min(height, width) >= 4


@PROPERTY_SETTINGS
@given(data=st.data(), shape=shapes(), dtype=st.sampled_from(DTYPES),
       n_clusters=st.integers(1, 4))
def test_random_shapes_and_dtypes_fit_or_give_a_clear_error(data, shape, dtype, n_clusters):
    X = make_array(data.draw, shape, dtype)
    valid = is_valid_training_data(shape, dtype, n_clusters)
    est = fit_or_refuse(DCCMClustering(n_clusters=n_clusters, **TINY), X, valid)
    if valid:
        check_fitted(est, X)


@PROPERTY_SETTINGS
@given(data=st.data(), n_bad=st.integers(1, 3),
       value=st.sampled_from([np.nan, np.inf, -np.inf]),
       where=st.sampled_from(["fit", "predict"]))
def test_non_finite_values_are_refused_with_a_clear_error(data, n_bad, value, where):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    X = rng.random((12, 6, 6)).astype(data.draw(st.sampled_from(["float32", "float64"])))
    bad = X.copy()
    flat = bad.reshape(-1)
    flat[rng.choice(flat.size, size=n_bad, replace=False)] = value
    est = DCCMClustering(n_clusters=2, **TINY)
    if where == "predict":
        est.fit(X)
    with pytest.raises(ValueError, match=r"(?i)nan|inf"):
        est.fit(bad) if where == "fit" else est.predict(bad)


# Crashes the property tests found, kept as fixed cases: an empty image axis failed inside
# torch (RuntimeError from a reshape of 0 elements), learning_rate=inf and nan passed the
# check "> 0" and failed later (FloatingPointError, or torch's message without our name).
@pytest.mark.parametrize("shape", [(5, 3, 0), (20, 8, 8, 0), (20, 0, 8, 8), (4, 0, 0)])
def test_empty_image_axis_is_refused_with_a_clear_error(shape):
    with pytest.raises(ValueError, match=r"DCCMClustering: X has shape .* at least one value"):
        DCCMClustering(n_clusters=2, **TINY).fit(np.ones(shape))


@pytest.mark.parametrize("learning_rate", [np.inf, np.nan, -np.inf])
def test_non_finite_learning_rate_is_refused_before_training(learning_rate):
    X = np.random.default_rng(0).integers(0, 256, size=(12, 6, 6)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"DCCMClustering: learning_rate=.* must be > 0 and "
                                         "finite"):
        DCCMClustering(n_clusters=2, learning_rate=learning_rate, **TINY).fit(X)


#: Values each parameter accepts and values it refuses, in separate branches of equal
#: chance, so that valid and invalid combinations both come up often.
PARAMETER_VALUES = {
    "n_clusters": st.one_of(st.integers(1, 6), st.sampled_from([-2, 0, 2.0, True, "3", None])),
    "batch_size": st.one_of(st.integers(1, 40), st.sampled_from([-1, 0, 8.5, False, "8"])),
    "max_iter": st.one_of(st.sampled_from([1, 2, None]), st.sampled_from([-1, 0, 1.0, "1"])),
    "learning_rate": st.one_of(st.floats(1e-6, 1.0), st.none(), st.floats(-1.0, 0.0),
                               st.sampled_from([np.nan, np.inf, "0.01", True])),
    "image_shape": st.sampled_from([None, (6, 6), (1, 6, 6), (6, 5), (0, 36), (2, 3, 3, 2),
                                    (-6, -6), "6x6"]),
    "channels": st.sampled_from([None, "first", "last", "middle", 1]),
    "preset": st.sampled_from(["default", "paper", "code", "nope", None, 3]),
}


@PROPERTY_SETTINGS
@given(data=st.data(), flat=st.booleans(),
       chosen=st.sets(st.sampled_from(sorted(PARAMETER_VALUES)), min_size=1, max_size=3))
def test_random_parameters_fit_or_give_a_clear_error(data, flat, chosen):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(12, 36) if flat else (12, 6, 6)).astype(np.uint8)
    params = {**TINY, "n_clusters": 2}
    params.update({key: data.draw(PARAMETER_VALUES[key], label=key) for key in sorted(chosen)})
    if params["max_iter"] is not None and params.get("preset") in ("paper", "code"):
        pass  # explicit max_iter wins over the preset's 200 epochs
    elif params.get("preset") in ("paper", "code"):
        params["max_iter"] = 1  # never train the paper's 200 epochs here
    valid = are_valid_parameters(params, flat, n_samples=len(X))
    est = fit_or_refuse(DCCMClustering(**params), X, valid)
    if valid:
        check_fitted(est, X)
        assert est.predict(X).shape == (len(X),)


def are_valid_parameters(params: dict, flat: bool, n_samples: int) -> bool:
    """The documented domain of each parameter in PARAMETER_VALUES, written out."""
    learning_rate = params.get("learning_rate")
    return all([
        is_positive_int(params["n_clusters"]) and params["n_clusters"] <= n_samples,
        is_positive_int(params["batch_size"]),
        params["max_iter"] is None or is_positive_int(params["max_iter"]),
        learning_rate is None or (isinstance(learning_rate, float)
                                  and np.isfinite(learning_rate) and learning_rate > 0),
        # image_shape unflattens 2-D X only; these 12 x 36 rows hold 6 x 6 images.
        params.get("image_shape") is None or (flat and params["image_shape"] in
                                              ((6, 6), (1, 6, 6))),
        params.get("channels") in (None, "first", "last"),
        params.get("preset", "default") in ("default", "paper", "code"),
    ])


# ---------------------------------------------------------------------------------------
# real signals, in a child process
# ---------------------------------------------------------------------------------------

#: Prefix of every child script: one thread (bit-for-bit reproducible CPU results), the
#: first 200 (or fewer) digits as uint8 images.
CHILD_PRELUDE = """
import sys, time, warnings
import numpy as np, torch
torch.set_num_threads(1)
from sklearn.datasets import load_digits
from skdccm import DCCMClustering
X = np.round(load_digits().images[:{n}] * (255.0 / 16.0)).astype(np.uint8)
"""

#: Sizes of the kill-and-resume run, shared by the child and the parent.
RESUME_PARAMS = {"n_clusters": 4, "batch_size": 16, "target_batch_size": 32, "device": "cpu",
                 "random_state": 0, "lr_schedule": "constant", "max_iter": 4}
RESUME_SAMPLES = 48


def start_child(script: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    code = textwrap.dedent(CHILD_PRELUDE.format(n=n)) + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_line(child: subprocess.Popen, prefix: str) -> list[str]:
    """Read the child's stdout until a line starts with ``prefix``; fail if it exits first."""
    seen = []
    for line in child.stdout:  # blocks line by line; ends when the child closes stdout
        seen.append(line)
        if line.startswith(prefix):
            return seen
    _, err = child.communicate(timeout=60)
    pytest.fail(f"child exited ({child.returncode}) before printing {prefix!r}:\n"
                + "".join(seen) + err)


def test_sigint_during_fit_warns_keeps_a_model_and_returns():
    # Many epochs: the signal lands in training, long before the last one.
    child = start_child("""
        est = DCCMClustering(n_clusters=10, max_iter=500, batch_size=32, target_batch_size=64,
                             device="cpu", random_state=0, verbose=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X)  # SIGINT arrives in here; nothing catches KeyboardInterrupt
        interrupts = [w for w in caught if issubclass(w.category, RuntimeWarning)
                      and "interrupted" in str(w.message)]
        labels = est.predict(X)
        print("INTERRUPT_WARNINGS", len(interrupts))
        print("FIT_SURVIVED", est.n_iter_, len(labels), len(est.history_))
    """, n=200)
    try:
        wait_for_line(child, "epoch ")
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "INTERRUPT_WARNINGS 1" in out, out + err
    marker = [line.split() for line in out.splitlines() if line.startswith("FIT_SURVIVED")]
    assert len(marker) == 1, out + err
    n_iter, n_labels, n_history = map(int, marker[0][1:])
    assert 1 <= n_iter < 500
    assert n_history == n_iter
    assert n_labels == 200


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, one_thread):
    ckpt = tmp_path / CHECKPOINT_NAME
    # The callback holds the child inside epoch 3, after the epoch-2 checkpoint was written
    # and before the epoch-3 one: SIGKILL then loses a trained but unsaved epoch.
    child = start_child(f"""
        def hold(owner, record):
            if record["epoch"] == 3:
                print("HOLDING", flush=True)
                time.sleep(600)

        DCCMClustering(**{RESUME_PARAMS!r}, checkpoint_dir={str(tmp_path)!r},
                       checkpoint_every=1, callbacks=hold).fit(X)
    """, n=RESUME_SAMPLES)
    try:
        wait_for_line(child, "HOLDING")
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2

    X = np.round(load_digits().images[:RESUME_SAMPLES] * (255.0 / 16.0)).astype(np.uint8)
    resumed = DCCMClustering(**RESUME_PARAMS, checkpoint_dir=str(tmp_path),
                             checkpoint_every=1, resume=True).fit(X)
    full = DCCMClustering(**RESUME_PARAMS).fit(X)
    assert resumed.n_iter_ == full.n_iter_ == 4
    # Epochs 1-2 come from the child's checkpoint (their timings too), not from a new run.
    assert resumed.history_[:2] == saved["history"]
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in full.history_]
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    np.testing.assert_array_equal(resumed.predict_proba(X), full.predict_proba(X))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 4


# ---------------------------------------------------------------------------------------
# divergence next to a checkpoint
# ---------------------------------------------------------------------------------------


def test_divergence_keeps_a_loadable_resumable_checkpoint(tmp_path, one_thread):
    X = np.round(load_digits().images[:RESUME_SAMPLES] * (255.0 / 16.0)).astype(np.uint8)
    params = {**RESUME_PARAMS, "checkpoint_dir": str(tmp_path)}
    DCCMClustering(**{**params, "max_iter": 1}).fit(X)
    # Resumes after epoch 1 and diverges in epoch 2.
    with pytest.raises(FloatingPointError, match="training diverged in epoch 2"):
        DCCMClustering(**{**params, "max_iter": 2, "learning_rate": 1e30},
                       resume=True).fit(X)
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["module"].values()
               if v.is_floating_point())
    resumed = DCCMClustering(**{**params, "max_iter": 2}, resume=True).fit(X)
    assert resumed.history_[:1] == checkpoint["history"]  # epoch 1 was not trained again
    full = DCCMClustering(**{**RESUME_PARAMS, "max_iter": 2}).fit(X)
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in full.history_]
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    np.testing.assert_array_equal(resumed.predict_proba(X), full.predict_proba(X))
