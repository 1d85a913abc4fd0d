"""Neighbour mining: exact against a float64 brute force, and its use in training."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdccm import CRLCClustering, DCCMClustering
from skdccm.data import ArraySource, infer_layout
from skdccm.neighbours import (
    auto_neighbour_count,
    check_neighbour_space,
    feature_neighbours,
    nearest_neighbours,
    pixel_neighbours,
    principal_components,
    resolve_neighbour_count,
    resolve_neighbour_space,
)


def brute_force(features: np.ndarray, k: int) -> np.ndarray:
    x = features.astype(np.float64)
    distance = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    return np.concatenate([np.arange(len(x))[:, None],
                           np.argsort(distance, axis=1, kind="stable")[:, :k]], axis=1)


@pytest.mark.parametrize("batch_size", [7, 2048])
def test_nearest_neighbours_match_float64_brute_force(batch_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    got = nearest_neighbours(torch.from_numpy(x), 4, batch_size=batch_size).numpy()
    np.testing.assert_array_equal(got, brute_force(x, 4))


@pytest.mark.parametrize("k", [0, 1, 6])
def test_nearest_neighbours_break_ties_by_index(k):
    # Integer points on a small grid: many equal distances, inside the k nearest and at the
    # k-th place, where a top-k kernel may order them as it likes.
    x = np.random.default_rng(1).integers(0, 3, size=(80, 3)).astype(np.float32)
    got = nearest_neighbours(torch.from_numpy(x), k).numpy()
    np.testing.assert_array_equal(got, brute_force(x, k))


def test_nearest_neighbours_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="k=5"):
        nearest_neighbours(torch.zeros(5, 2), 5)


def test_principal_components_keep_the_top_variance_directions():
    rng = np.random.default_rng(1)
    # Variance 100 along axis 0, 25 along axis 1, 1e-4 elsewhere.
    x = rng.normal(size=(500, 6)) * np.array([10.0, 5.0, 1e-2, 1e-2, 1e-2, 1e-2])
    projected = principal_components(torch.from_numpy(x).float(), 2).numpy()
    assert projected.shape == (500, 2)
    np.testing.assert_allclose(sorted(projected.var(axis=0)), [25, 100], rtol=0.15)
    np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-4)


def test_pixel_neighbours_of_digits_are_mostly_the_same_digit():
    digits = load_digits()
    images = digits.images.astype(np.float32)
    layout = infer_layout(images.shape, images.dtype, image_shape=None, channels=None,
                          owner="test")
    source = ArraySource(images, layout, torch.device("cpu"))
    table = pixel_neighbours(source, 5).numpy()
    assert table.shape == (len(images), 6)
    np.testing.assert_array_equal(table[:, 0], np.arange(len(images)))
    same = (digits.target[table[:, 1:]] == digits.target[:, None]).mean()
    assert same > 0.95  # measured 0.98; a random table gives 0.1


def test_auto_count_follows_cluster_size_and_channels():
    assert auto_neighbour_count(400, 40, (1, 32, 32)) == 2
    assert auto_neighbour_count(100, 50, (1, 32, 32)) == 1
    assert auto_neighbour_count(70000, 10, (784,)) == 20
    assert auto_neighbour_count(5000, 10, (3, 32, 32)) == 0
    assert resolve_neighbour_count("auto", 400, 40, (1, 32, 32), "X") == 2
    assert resolve_neighbour_count(50, 10, 2, (4,), "X") == 9  # capped at n - 1
    for bad in (-1, 1.5, "many", True):
        with pytest.raises(ValueError, match="n_neighbors"):
            resolve_neighbour_count(bad, 400, 40, (1, 32, 32), "X")


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_training_draws_partners_from_the_neighbour_table(cls, monkeypatch):
    """With neighbours, every step's partners are the batch's images or their neighbours."""
    import skdccm.training as training

    seen = []
    original = training._draw_partners

    def spy(data, rows, generator):
        partners = original(data, rows, generator)
        seen.append((data.neighbours[rows].clone(), partners.clone(), data))
        return partners

    monkeypatch.setattr(training, "_draw_partners", spy)
    X = load_digits().images[:120]
    est = cls(n_clusters=3, max_iter=1, batch_size=40, n_neighbors=3, random_state=0).fit(X)
    assert est.n_neighbors_ == 3 and seen
    for table, partners, data in seen:
        candidates = torch.stack([data.gather(table[:, j]) for j in range(table.shape[1])])
        match = (candidates == partners[None]).flatten(2).all(-1).any(0)
        assert match.all()
        # Not always the image itself: some rows drew a neighbour.
        assert not torch.equal(partners, data.gather(table[:, 0]))


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_without_neighbours_no_partners_are_drawn(cls, monkeypatch):
    import skdccm.training as training

    calls = []
    monkeypatch.setattr(training, "_draw_partners",
                        lambda data, rows, generator: calls.append(data.neighbours))
    X = load_digits().images[:60]
    est = cls(n_clusters=3, max_iter=1, n_neighbors=0, random_state=0).fit(X)
    assert est.n_neighbors_ == 0 and calls and all(c is None for c in calls)


def test_auto_count_stops_above_the_largest_cluster_size():
    assert auto_neighbour_count(3000, 10, (1, 28, 28), max_cluster_size=300) == 20
    assert auto_neighbour_count(3001, 10, (1, 28, 28), max_cluster_size=300) == 0
    assert resolve_neighbour_count("auto", 3001, 10, (784,), "X", max_cluster_size=300) == 0
    assert resolve_neighbour_count(5, 3001, 10, (784,), "X", max_cluster_size=300) == 5


@pytest.mark.parametrize("cls, expected", [(DCCMClustering, 20), (CRLCClustering, 0)])
def test_crlc_mines_no_neighbours_for_large_clusters(cls, expected):
    # 320 images a cluster: above CRLC's limit (300), not DCCM's (none).
    X = np.random.default_rng(0).random((640, 4, 4)).astype(np.float32)
    est = cls(n_clusters=2, max_iter=1, batch_size=64, random_state=0).fit(X)
    assert est.n_neighbors_ == expected


def test_paper_presets_mine_no_neighbours():
    X = load_digits().images[:60]
    assert DCCMClustering(n_clusters=3, preset="paper", max_iter=1, batch_size=30,
                          random_state=0).fit(X).n_neighbors_ == 0


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_min_steps_stretches_the_preset_epochs_only(cls):
    X = load_digits().images[:200]  # batch size 128: 2 steps an epoch
    common = {"n_clusters": 3, "n_neighbors": 0, "pretrain_epochs": 0, "random_state": 0}
    preset_epochs = cls._presets["default"]["max_iter"]
    est = cls(min_steps=2 * preset_epochs + 2, **common).fit(X)
    assert est.n_iter_ == preset_epochs + 1
    assert cls(min_steps=2, max_iter=2, **common).fit(X).n_iter_ == 2  # explicit max_iter
    with pytest.raises(ValueError, match="min_steps"):
        cls(min_steps=-1, max_iter=1, **common).fit(X)


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_auto_min_steps_scale_with_the_number_of_clusters(cls):
    from skdccm.training import TrainSpec

    spec = TrainSpec(max_epochs=5, batch_size=100, chunk_size=100)  # 400 samples: 4 steps
    per_cluster = cls._min_steps_per_cluster
    assert per_cluster > 0
    for k in (10, 40):
        stretched = cls(n_clusters=k)._with_min_steps(spec, {"min_steps": "auto"}, 400)
        assert stretched.max_epochs == max(5, -(-per_cluster * k // 4))
    # The paper presets train epochs only.
    paper = cls(n_clusters=40, preset="paper")
    assert paper._with_min_steps(spec, cls._presets["paper"], 400).max_epochs == 5


# ----------------------------------------------------------------------------------------
# neighbours in the warm-started features (neighbor_space="features")
# ----------------------------------------------------------------------------------------


def test_feature_neighbours_are_the_cosine_nearest():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    layout = infer_layout(X.shape, X.dtype, image_shape=None, channels=None, owner="test")
    source = ArraySource(X, layout, torch.device("cpu"))
    scale = torch.tensor(rng.uniform(0.1, 10.0, size=(50, 1)), dtype=torch.float32)
    # Rows scaled by arbitrary positive factors: the cosine order ignores the lengths.
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return batch * scale

    got = feature_neighbours(embed, source, 4, batch_size=50)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    cosine = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(cosine, -np.inf)
    want = np.argsort(-cosine, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(got[:, 0].numpy(), np.arange(50))
    np.testing.assert_array_equal(got[:, 1:].numpy(), want)
    assert calls == [50]


def test_neighbour_space_resolution():
    colour, grey = (3, 8, 8), (1, 8, 8)
    assert resolve_neighbour_space("auto", False, colour) == "pixels"
    assert resolve_neighbour_space("auto", True, colour) == "features"
    assert resolve_neighbour_space("auto", True, grey) == "pixels"
    assert resolve_neighbour_space("auto", True, (64,)) == "pixels"
    assert resolve_neighbour_space("features", True, grey) == "features"
    check_neighbour_space("features", True, "X")
    with pytest.raises(ValueError, match="has no warm start"):
        check_neighbour_space("features", False, "X")
    with pytest.raises(ValueError, match="'auto', 'pixels' or 'features'"):
        check_neighbour_space("latent", True, "X")
    # Learned neighbours for colour images too, and for large clusters.
    assert auto_neighbour_count(5000, 10, (3, 32, 32), learned=True) == 20
    assert resolve_neighbour_count("auto", 5000, 10, (3, 32, 32), "X", max_cluster_size=300,
                                   learned=True) == 20


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_bad_neighbour_space_is_refused_before_the_data_is_read(cls):
    with pytest.raises(ValueError, match="neighbor_space='features'"):
        cls(n_clusters=2, pretrain_epochs=0,
            neighbor_space="features").fit(np.full((4, 4, 4), np.nan))


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_warm_started_fit_mines_neighbours_in_its_features(cls, monkeypatch):
    """Mined once, after the warm start, from the network in eval mode; the clustering
    stage's partners come from that table, the warm start's from none."""
    import skdccm.base as base
    import skdccm.training as training

    events = []
    real_mine = base.feature_neighbours

    def mine(embed, source, k, batch_size=1024):
        events.append(("mine", k))
        return real_mine(embed, source, k, batch_size)

    real_draw = training._draw_partners

    def draw(data, rows, generator):
        events.append(("draw", data.neighbours is not None))
        return real_draw(data, rows, generator)

    monkeypatch.setattr(base, "feature_neighbours", mine)
    monkeypatch.setattr(training, "_draw_partners", draw)
    X = load_digits().images[:120]
    est = cls(n_clusters=3, pretrain_epochs=1, max_iter=1, batch_size=40, n_neighbors=4,
              neighbor_space="features", random_state=0).fit(X)
    assert est.neighbor_space_ == "features" and est.n_neighbors_ == 4
    first_mine = events.index(("mine", 4))
    assert events.count(("mine", 4)) == 1
    assert set(events[:first_mine]) == {("draw", False)}     # warm start: no partners
    assert set(events[first_mine + 1:]) == {("draw", True)}  # clustering: from the table
    # With neighbor_space="pixels" the pixels' table serves both stages.
    events.clear()
    est = cls(n_clusters=3, pretrain_epochs=1, max_iter=1, batch_size=40, n_neighbors=4,
              neighbor_space="pixels", random_state=0).fit(X)
    assert est.neighbor_space_ == "pixels" and set(events) == {("draw", True)}


@pytest.mark.parametrize("cls", [DCCMClustering, CRLCClustering])
def test_auto_space_is_features_for_warm_started_colour_images_only(cls):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    grey = load_digits().images[:60]
    fitted = {name: cls(n_clusters=3, pretrain_epochs=pre, max_iter=1, random_state=0).fit(X)
              for name, X, pre in [("colour", colour, 1), ("grey", grey, 1),
                                   ("colour, no warm start", colour, 0)]}
    assert fitted["colour"].neighbor_space_ == "features"
    assert fitted["colour"].n_neighbors_ == 5                    # 60 / (4 * 3)
    assert fitted["grey"].neighbor_space_ == "pixels"
    assert fitted["colour, no warm start"].neighbor_space_ == "pixels"
    assert fitted["colour, no warm start"].n_neighbors_ == 0     # colour pixels: none


def test_defaults_for_photographs_decide_the_neighbours_of_grey_images():
    # Grey images given the defaults for photographs (DCCM: few images a cluster) are
    # neighboured as colour images are: in the warm-started features, none in pixels.
    grey = (1, 32, 32)
    assert resolve_neighbour_space("auto", True, grey) == "pixels"
    assert resolve_neighbour_space("auto", True, grey, photographic=True) == "features"
    assert resolve_neighbour_space("auto", True, (3, 32, 32), photographic=False) == "pixels"
    assert auto_neighbour_count(400, 40, grey) == 2
    assert auto_neighbour_count(400, 40, grey, photographic=True) == 0
    assert auto_neighbour_count(400, 40, grey, learned=True, photographic=True) == 2
