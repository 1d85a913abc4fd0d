"""Graph refinement (``refine``): the pure functions of ``skdccm.refinement`` and what the
estimators do with them."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.cluster import KMeans, spectral_clustering
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

from skdccm import CRLCClustering, DCCMClustering, base, refinement
from skdccm.data import ArraySource
from skdccm.metrics import clustering_accuracy
from skdccm.neighbours import pixel_components
from skdccm.refinement import cluster_leak, linear_head, refined_labels, spectral_labels

ESTIMATORS = {"dccm": DCCMClustering, "crlc": CRLCClustering}


def lifted_moons(n_samples: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles, lifted off the origin so that their directions (what
    the cosine graph compares) keep their shapes: curved clusters no hyperplane separates."""
    points, labels = make_moons(n_samples, noise=0.03, random_state=seed)
    return np.c_[points, np.full(len(points), 4.0)], labels


def test_spectral_labels_follow_curved_clusters_that_kmeans_cuts():
    points, truth = lifted_moons()
    labels = spectral_labels(points, 2, random_state=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    # the case it exists for: the centroid method cuts each moon
    kmeans = KMeans(2, n_init=10, random_state=0).fit_predict(points)
    assert adjusted_rand_score(truth, kmeans) < 0.6


def test_spectral_labels_are_in_range_and_reproducible():
    points, _ = make_blobs(150, n_features=8, centers=5, random_state=1)
    first = spectral_labels(points, 5, random_state=3)
    assert first.dtype == np.int64 and first.shape == (150,)
    assert set(first) <= set(range(5))
    np.testing.assert_array_equal(first, spectral_labels(points, 5, random_state=3))


@pytest.mark.parametrize("data", ["moons", "blobs"])
def test_spectral_labels_are_the_same_with_the_large_sets_eigensolver(data, monkeypatch):
    points, truth = lifted_moons() if data == "moons" else make_blobs(
        300, n_features=8, centers=5, random_state=1)
    k = len(set(truth))
    solvers = []

    def spy(*args, **kwargs):
        solvers.append(kwargs["eigen_solver"])
        return spectral_clustering(*args, **kwargs)

    monkeypatch.setattr(refinement, "spectral_clustering", spy)
    arpack = spectral_labels(points, k, random_state=0)
    monkeypatch.setattr(refinement, "ARPACK_MAX_SAMPLES", len(points) - 1)
    lobpcg = spectral_labels(points, k, random_state=0)
    assert solvers == ["arpack", "lobpcg"]
    assert adjusted_rand_score(arpack, lobpcg) == 1.0
    assert adjusted_rand_score(truth, lobpcg) == 1.0


def test_spectral_labels_with_fewer_samples_than_neighbours():
    points, _ = make_blobs(6, n_features=3, centers=2, random_state=0)
    assert spectral_labels(points, 2, n_neighbors=10, random_state=0).shape == (6,)


def test_cluster_leak_is_the_share_of_each_clusters_links_that_leave_it():
    rng = np.random.default_rng(0)
    dense = rng.random((30, 30))
    affinity = (dense + dense.T) * (rng.random((30, 30)) < 0.3)
    affinity = np.triu(affinity, 1) + np.triu(affinity, 1).T
    labels = rng.integers(0, 4, 30)
    shares = [affinity[labels == c][:, labels != c].sum() / affinity[labels == c].sum()
              for c in range(4)]
    assert cluster_leak(sparse.csr_matrix(affinity), labels) == pytest.approx(np.mean(shares))
    # two cliques with no link between them leak nothing
    blocks = sparse.block_diag([np.ones((5, 5)), np.ones((4, 4))])
    assert cluster_leak(blocks, np.r_[np.zeros(5), np.ones(4)]) == 0.0


def test_refined_labels_add_the_pixels_only_where_the_embeddings_clusters_leak():
    truth = np.repeat(np.arange(4), 25)
    centres = np.random.default_rng(1).normal(size=(4, 8)) * 5
    clean = centres[truth] + np.random.default_rng(2).normal(size=(100, 8)) * 0.3

    def never():
        raise AssertionError("the pixels were read although the embedding is clean")

    found = refined_labels(clean, 4, pixels=never, random_state=0)
    assert not found.pixels and found.leak <= refinement.MAX_LEAK
    assert adjusted_rand_score(truth, found.labels) == 1.0
    # an embedding that has learned nothing, beside pixels that show the clusters
    noise = np.random.default_rng(3).normal(size=(100, 8))
    found = refined_labels(noise, 4, pixels=lambda: clean, random_state=0)
    assert found.pixels and found.leak > refinement.MAX_LEAK
    assert adjusted_rand_score(truth, found.labels) > 0.5
    assert adjusted_rand_score(truth, spectral_labels(noise, 4, random_state=0)) < 0.2
    assert not refined_labels(noise, 4, pixels=None, random_state=0).pixels


def test_refined_labels_weigh_the_pixels_graph_by_pixel_weight(monkeypatch):
    # an embedding whose four clusters blur into each other (it leaks), and pixels that
    # group the same samples in another way
    embedded, pixel_groups = np.repeat(np.arange(4), 25), np.tile(np.arange(4), 25)
    centres = np.random.default_rng(1).normal(size=(4, 8)) * 5
    embedding = centres[embedded] + np.random.default_rng(4).normal(size=(100, 8)) * 3.0
    pixels = centres[pixel_groups] + np.random.default_rng(2).normal(size=(100, 8)) * 0.3
    alone = spectral_labels(embedding, 4, random_state=0)
    for weight, expected in ((1e-6, alone), (1e6, pixel_groups)):
        monkeypatch.setattr(refinement, "PIXEL_WEIGHT", weight)
        found = refined_labels(embedding, 4, pixels=lambda: pixels, random_state=0)
        assert found.pixels and found.leak > refinement.MAX_LEAK
        assert adjusted_rand_score(expected, found.labels) == 1.0, weight


def split_off_copies(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three clusters of 200 (the first two touching) and, beside the third, 15 near-copies
    of one sample, which link only to each other on the 10-neighbour graph: its spectral cut
    makes them a cluster and merges the two touching ones. Returns (points, true labels)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 30.0], [2.0, 0.0, 30.0], [0.0, 8.0, 30.0]])
    points = np.r_[rng.normal(size=(600, 3)) + np.repeat(centres, 200, axis=0),
                   centres[2] + [3.5, 0.0, 0.0] + rng.normal(size=(15, 3)) * 0.01]
    return points, np.r_[np.repeat(np.arange(3), 200), np.full(15, 2)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_labels_check_the_cut_against_the_heads_clusters_at_a_clusters_scale(seed):
    points, truth = split_off_copies(seed)
    unchecked = refined_labels(points, 3, random_state=0)
    assert unchecked.check is None and unchecked.kept
    copies = set(unchecked.labels[-15:])  # the copies split off, with a neighbour or two
    assert len(copies) == 1 and np.sum(unchecked.labels == copies.pop()) < 20
    # a head that has the clusters: on the 100-neighbour graph the copies link out to
    # their cluster, and the cut leaks more than the head's clusters
    found = refined_labels(points, 3, head=truth, random_state=0)
    np.testing.assert_array_equal(found.labels, unchecked.labels)
    assert found.check[0] == pytest.approx(
        cluster_leak(refinement.neighbour_graph(points, refinement.CHECK_NEIGHBOURS), truth))
    assert found.check[1] > found.check[0] and not found.kept
    # a head that mixed half the third cluster into the first: the cut is better
    mixed = truth.copy()
    mixed[400:500] = 0
    found = refined_labels(points, 3, head=mixed, random_state=0)
    assert found.check[1] < found.check[0] and found.kept


@pytest.mark.parametrize("n_present", [1, 2, 4])
def test_linear_head_reproduces_separable_labels_and_never_picks_an_empty_cluster(n_present):
    features, labels = make_blobs(120, n_features=16, centers=n_present, cluster_std=0.5,
                                  random_state=0)
    labels = np.array([0, 2, 3, 5])[labels]  # clusters 1 and 4 of 6 stay empty
    weight, bias = linear_head(features, labels, 6)
    assert weight.shape == (6, 16) and bias.shape == (6,)
    assert weight.dtype == bias.dtype == np.float32
    np.testing.assert_array_equal((features @ weight.T + bias).argmax(axis=1), labels)
    # nor anywhere else: samples far from the training features avoid the empty clusters
    elsewhere = np.random.default_rng(0).normal(0.0, 50.0, (500, 16))
    assert not np.isin((elsewhere @ weight.T + bias).argmax(axis=1), [1, 4]).any()


# ---------------------------------------------------------------------------------------
# the estimators
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_spectral_refinement_makes_the_head_give_the_graph_labels(estimator, digits,
                                                                   monkeypatch):
    monkeypatch.setattr(refinement, "MAX_LEAK", np.inf)  # the embedding's graph alone
    X = (digits[0][:300, None] / 255.0).astype(np.float32)  # (N, 1, 8, 8): fed as it is
    common = {"n_clusters": 10, "max_iter": 2, "batch_size": 64, "random_state": 0}
    plain = ESTIMATORS[estimator](refine=None, **common).fit(X)
    assert not plain.refine_ and plain.refine_agreement_ is None
    refined = ESTIMATORS[estimator](refine="spectral", **common).fit(X)
    assert refined.refine_
    # labels_ are the new head's argmax, as predict gives them
    np.testing.assert_array_equal(refined.predict(X), refined.labels_)
    np.testing.assert_allclose(refined.predict_proba(X).sum(axis=1), 1.0, rtol=1e-5)
    # and they are the spectral clusters of the head's input (clusters matched one to one)
    with torch.no_grad():
        features = refined._infer_head_input(refined.module_.eval(),
                                             torch.from_numpy(X))[1].numpy()
    seed = int(np.random.RandomState(0).randint(np.iinfo(np.int32).max))  # as fit draws it
    expected = spectral_labels(features, 10, random_state=seed)
    assert clustering_accuracy(expected, refined.labels_) >= 0.99
    # the agreement reported is with the unrefined head of the same training
    assert refined.refine_agreement_ == pytest.approx(
        clustering_accuracy(plain.labels_, expected), abs=0.02)
    assert 0.0 < refined.refine_agreement_ < 1.0
    assert refined.refine_pixels_ is False and plain.refine_pixels_ is None
    assert refined.refine_check_ is None and plain.refine_check_ is None  # asked for: unchecked


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_refinement_adds_the_pixels_graph_of_grey_images_only(estimator, digits,
                                                              monkeypatch):
    monkeypatch.setattr(refinement, "MAX_LEAK", -1.0)  # every graph leaks more than that
    X = (digits[0][:300, None] / 255.0).astype(np.float32)
    common = {"n_clusters": 10, "max_iter": 2, "batch_size": 64, "random_state": 0,
              "refine": "spectral"}
    refined = ESTIMATORS[estimator](**common).fit(X)
    assert refined.refine_pixels_ is True
    with torch.no_grad():
        features = refined._infer_head_input(refined.module_.eval(),
                                             torch.from_numpy(X))[1].numpy()
    _, layout = refined._validate_input(X, reset=False)
    pixels = pixel_components(ArraySource(X, layout, torch.device("cpu"))).numpy()
    seed = int(np.random.RandomState(0).randint(np.iinfo(np.int32).max))
    expected = refined_labels(features, 10, pixels=lambda: pixels, random_state=seed)
    assert expected.pixels
    assert clustering_accuracy(expected.labels, refined.labels_) >= 0.99
    # colour images: the embedding's graph alone, however it leaks
    colour = np.repeat(X, 3, axis=1)
    assert ESTIMATORS[estimator](**common).fit(colour).refine_pixels_ is False


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_auto_refines_few_photographs_a_cluster_in_the_default_preset_only(
        estimator, strokes_and_shaded):
    strokes, shaded = strokes_and_shaded  # 20 images a cluster
    cls = ESTIMATORS[estimator]
    common = {"n_clusters": 3, "max_iter": 1, "pretrain_epochs": 1, "batch_size": 32,
              "refine": "auto", "random_state": 0}
    assert not cls(**common).fit(strokes).refine_
    photo = cls(**common).fit(shaded)
    assert photo.photo_defaults_ and photo.refine_
    assert 0.0 <= photo.refine_agreement_ <= 1.0
    many = DCCMClustering(photo_defaults=True, **common).fit(np.tile(shaded, (6, 1, 1)))
    assert many.photo_defaults_ and not many.refine_  # 120 a cluster
    assert not cls(preset="paper", photo_defaults=True, **common).fit(shaded).refine_
    assert cls(**{**common, "refine": "spectral"}).fit(strokes).refine_


#: One quick epoch on 3 clusters, no warm start: enough to reach the refinement.
ONE_EPOCH = {"n_clusters": 3, "max_iter": 1, "pretrain_epochs": 0, "min_steps": 0,
             "batch_size": 128, "random_state": 0}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_auto_checks_the_cut_of_grey_images_with_many_a_cluster_for_crlc_only(
        estimator, digits, monkeypatch):
    heads = []

    def spy(*args, head=None, **kwargs):
        heads.append(head)
        return refined_labels(*args, head=head, **kwargs)

    monkeypatch.setattr(base, "refined_labels", spy)
    grey = digits[0][:303, None]  # 101 a cluster: checked by CRLC's "auto"
    cls = ESTIMATORS[estimator]
    cls(**ONE_EPOCH).fit(grey)
    assert [h is not None and len(h) == len(grey) for h in heads] == (
        [True] if estimator == "crlc" else [])
    heads.clear()
    cls(**ONE_EPOCH).fit(grey[:300])  # 100 a cluster: the head as trained
    cls(**ONE_EPOCH).fit(np.repeat(grey, 3, axis=1))  # colour: not measured, not refined
    assert heads == []
    cls(refine="spectral", **ONE_EPOCH).fit(grey)  # asked for: refined, unchecked
    assert len(heads) == 1 and heads[0] is None


@pytest.mark.parametrize(("check", "kept"), [((0.0, 1.0), False), ((1.0, 0.0), True)])
def test_a_checked_cut_replaces_the_head_only_where_it_passes(check, kept, digits,
                                                              monkeypatch, capsys):
    def forced(*args, **kwargs):
        return dataclasses.replace(refined_labels(*args, **kwargs), check=check)

    grey = digits[0][:303, None]  # 101 a cluster: checked by CRLC's "auto"
    monkeypatch.setattr(base, "refined_labels", forced)
    est = CRLCClustering(verbose=1, **ONE_EPOCH).fit(grey)
    out = capsys.readouterr().out
    assert f"on a {refinement.CHECK_NEIGHBOURS}-neighbour graph" in out
    assert est.refine_ is kept and est.refine_check_ == check
    if kept:
        assert 0.0 < est.refine_agreement_ < 1.0 and est.refine_pixels_ is False
        assert "refine: spectral labels" in out
    else:  # the trained head, untouched
        assert est.refine_agreement_ is None and est.refine_pixels_ is None
        plain = CRLCClustering(refine=None, **ONE_EPOCH).fit(grey)
        assert "refine: the head is kept" in out
        np.testing.assert_array_equal(est.labels_, plain.labels_)
        np.testing.assert_array_equal(est.predict_proba(grey), plain.predict_proba(grey))


def test_refine_defaults():
    # both measured on the suite's photographs over 5 seeds (BENCHMARKS.md)
    assert DCCMClustering().refine == "auto" and CRLCClustering().refine == "auto"


@pytest.mark.parametrize("value", ["Spectral", "kmeans", True, 1])
def test_refine_rejects_unknown_values(value, strokes_and_shaded):
    strokes, _ = strokes_and_shaded
    with pytest.raises(ValueError, match="refine="):
        DCCMClustering(n_clusters=3, max_iter=1, refine=value).fit(strokes)


def test_verbose_reports_the_refinement(strokes_and_shaded, capsys):
    strokes, _ = strokes_and_shaded
    DCCMClustering(n_clusters=3, max_iter=1, batch_size=32, refine="spectral", verbose=1,
                   random_state=0).fit(strokes)
    assert "refine: spectral labels" in capsys.readouterr().out


def test_linear_head_with_few_samples_a_cluster_warns_nothing():
    # scikit-learn's guess ("a regression problem?") needs over 20 samples
    features = np.random.default_rng(0).normal(size=(30, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weight, _ = linear_head(features, np.arange(30) % 20, 20)
    assert weight.shape == (20, 4)
