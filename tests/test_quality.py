"""Quality of the default presets on real data, over seeds (slow: run with ``pytest -m slow``).

All 1,797 scikit-learn digits as 8x8 uint8 images, default parameters, seeds 0, 1 and 2,
KMeans (``n_init=10``) on the same pixels. Measured by the suite benchmark over seeds 0 to
4 (``benchmarks/results/suite/digits`` and, for CRLC's 60-epoch default,
``benchmarks/results/suite-crlc/digits``; 2 CPU cores):

- CRLC: ACC 0.967 / 0.962 / 0.965 / 0.948 / 0.967, mean 0.962, standard deviation 0.007;
- DCCM: ACC 0.868 / 0.923 / 0.922 / 0.903 / 0.864, mean 0.896, standard deviation 0.025;
- KMeans: 0.792 / 0.792 / 0.797 / 0.796 / 0.796.

Each seed must reach the measured mean minus two standard deviations (rounded down), since
another CPU takes the same seed down another trajectory and only the spread carries over.
The mean of the three seeds must beat KMeans by 0.10 for CRLC; DCCM's measured mean is
0.101 above KMeans, so its bar is that less two standard errors of a 3-seed mean
(0.101 - 2 x 0.025 / sqrt(3), rounded down: 0.07; see
BENCHMARKS.md). CRLC is also run on the digits stored by class, the order in which MNIST 5k
and image folders come: an earlier build estimated BatchNorm statistics and chose its
sub-head on batches in storage order, one class each (ACC 0.752 on the sorted digits).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from skdccm import CRLCClustering, DCCMClustering
from skdccm.datasets import load_digits_images
from skdccm.metrics import clustering_accuracy

SEEDS = (0, 1, 2)

#: estimator -> (per-seed bar: measured mean - 2 std, rounded down; margin of the mean
#: over KMeans)
BARS = {DCCMClustering: (0.84, 0.07), CRLCClustering: (0.94, 0.10)}


def kmeans_accuracy(X, y, seed):
    pixels = X.reshape(len(X), -1).astype(np.float64) / 255.0
    return clustering_accuracy(y, KMeans(n_clusters=10, n_init=10,
                                         random_state=seed).fit_predict(pixels))


def check_over_seeds(cls, X, y):
    seed_bar, margin = BARS[cls]
    fitted = [cls(n_clusters=10, random_state=s).fit(X) for s in SEEDS]
    accs = [clustering_accuracy(y, est.labels_) for est in fitted]
    kmeans = np.mean([kmeans_accuracy(X, y, s) for s in SEEDS])
    name = cls.__name__
    assert min(accs) >= seed_bar, f"{name} ACC per seed {np.round(accs, 3)}, bar {seed_bar}"
    assert np.mean(accs) >= kmeans + margin, (
        f"{name} mean ACC {np.mean(accs):.3f}, KMeans {kmeans:.3f}, required margin {margin}")
    return fitted


@pytest.mark.slow
@pytest.mark.parametrize("cls", list(BARS), ids=lambda cls: cls.__name__)
def test_default_beats_kmeans_on_digits_over_seeds(cls):
    X, y = load_digits_images()
    fitted = check_over_seeds(cls, X, y)
    # DCCM does not refine these; CRLC's cut splits 27 near-identical 1s off as a cluster
    # (ACC about 0.88), and the check against the head's clusters refuses it.
    assert not any(est.refine_ for est in fitted)


@pytest.mark.slow
def test_crlc_on_digits_stored_by_class():
    X, y = load_digits_images()
    order = np.argsort(y, kind="stable")
    check_over_seeds(CRLCClustering, X[order], y[order])


#: ConsensusClustering of 5 DCCM runs (MLP backbone, a tenth of the default's time on the
#: 8x8 digits), seeds 0 to 2, one thread on an AMD EPYC (benchmark ``dccm-x5`` with
#: ``--param backbone=mlp``): consensus 0.953 / 0.864 / 0.952 against its runs' means
#: 0.906 / 0.882 / 0.933 (differences +0.047 / -0.018 / +0.019: on seed 1 four runs of five
#: shared one merge, and the consensus kept it); KMeans 0.794. Each seed's consensus may
#: fall below the mean of its own runs by at most twice that worst case, and the mean must
#: beat KMeans by 0.10.
CONSENSUS_TOLERANCE = 0.04


@pytest.mark.slow
def test_consensus_of_dccm_runs_on_digits():
    from skdccm import ConsensusClustering

    X, y = load_digits_images()
    accs, gains = [], []
    for seed in SEEDS:
        model = ConsensusClustering(DCCMClustering(n_clusters=10, backbone="mlp"), n_runs=5,
                                    random_state=seed).fit(X)
        runs = np.mean([clustering_accuracy(y, labels) for labels in model.run_labels_])
        accs.append(clustering_accuracy(y, model.labels_))
        gains.append(accs[-1] - runs)
    assert min(gains) >= -CONSENSUS_TOLERANCE, f"consensus - mean of runs: {np.round(gains, 3)}"
    kmeans = np.mean([kmeans_accuracy(X, y, s) for s in SEEDS])
    assert np.mean(accs) >= kmeans + 0.10, f"consensus {np.round(accs, 3)}, KMeans {kmeans:.3f}"


#: COIL-20 with DCCM's default, which gives it the defaults for photographs (72 images a
#: cluster) and refines it with the embedding's graph alone (its clusters leak 0.5-1.3% of
#: their links): seeds 0-4 gave ACC 0.922 / 0.914 / 0.892 / 0.948 / 0.908, mean 0.917,
#: standard deviation 0.018, KMeans 0.693 (``benchmarks/results/photo-coil20``, one CPU
#: thread). Per seed: mean - 2 std, rounded down; the 3-seed mean must beat KMeans by the
#: measured 0.224 less two standard errors of a 3-seed mean (0.203), rounded down.
COIL20_BARS = (0.88, 0.20)


def check_data_set(name, n_clusters, seeds, bars, cls=DCCMClustering):
    """``cls``'s default on ``name`` from the data folder, one fit a seed: each seed's ACC at
    least ``bars[0]``, the mean at least KMeans' (same seeds, same pixels) plus ``bars[1]``.
    Returns the fitted estimators; skips when the set's file is absent."""
    from skdccm.datasets import data_home, load_dataset

    if not (data_home() / f"{name}.npz").is_file():
        pytest.skip(f"{data_home() / name}.npz is absent (../shared/data only exists on the "
                    "project's build machines)")
    X, y = load_dataset(name)
    pixels = X.reshape(len(X), -1).astype(np.float64) / 255.0
    seed_bar, margin = bars
    fitted = [cls(n_clusters=n_clusters, random_state=seed).fit(X) for seed in seeds]
    accs = [clustering_accuracy(y, est.labels_) for est in fitted]
    kmeans = [clustering_accuracy(y, KMeans(n_clusters=n_clusters, n_init=10,
                                            random_state=seed).fit_predict(pixels))
              for seed in seeds]
    assert min(accs) >= seed_bar, f"ACC per seed {np.round(accs, 3)}, bar {seed_bar}"
    assert np.mean(accs) >= np.mean(kmeans) + margin, (
        f"mean ACC {np.mean(accs):.3f}, KMeans {np.mean(kmeans):.3f}, margin {margin}")
    return fitted


@pytest.mark.slow
def test_dccm_default_on_coil20_over_seeds():
    fitted = check_data_set("coil20", 20, SEEDS, COIL20_BARS)
    assert all(est.photo_defaults_ for est in fitted)
    assert not any(est.refine_pixels_ for est in fitted)


#: ORL with DCCM's default (40 people, 10 faces each: the defaults for photographs, and
#: refinement with the pixels' graph at ``PIXEL_WEIGHT``, since the embedding's clusters leak
#: 14-16% of their links): seeds 0-4 gave ACC 0.818 / 0.738 / 0.812 / 0.807 / 0.780, mean
#: 0.791, standard deviation 0.030, KMeans 0.578 (``benchmarks/results/photo-orl``, one CPU
#: thread). Per seed: mean - 2 std, rounded down; the 3-seed mean must beat KMeans by the
#: measured 0.213 less two standard errors of a 3-seed mean (0.178), rounded down. Refined by
#: the embedding's graph alone, the same trainings gave 0.760 / 0.675 / 0.750 (mean 0.728,
#: seed 1 under the per-seed bar).
ORL_BARS = (0.73, 0.17)


@pytest.mark.slow
def test_dccm_default_on_orl_over_seeds():
    fitted = check_data_set("orl", 40, SEEDS, ORL_BARS)
    assert all(est.refine_pixels_ for est in fitted)


#: USPS with CRLC's default (9,298 digits, 930 a class: refined where the spectral cut
#: passes the check against the head's clusters): seeds 0-4 gave ACC 0.977 / 0.976 / 0.975
#: / 0.978 / 0.976, KMeans 0.667 (``benchmarks/results/crlc-refined-usps``, one CPU
#: thread); the head alone gave 0.923-0.930. Per seed: the issue's target, 0.95, below the
#: measured mean minus two standard deviations; the 3-seed mean must beat KMeans by 0.25
#: (measured: 0.31).
USPS_CRLC_BARS = (0.95, 0.25)


@pytest.mark.slow
def test_crlc_default_on_usps_over_seeds():
    fitted = check_data_set("usps", 10, SEEDS, USPS_CRLC_BARS, cls=CRLCClustering)
    assert all(est.refine_ for est in fitted)
