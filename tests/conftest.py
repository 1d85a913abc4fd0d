"""Shared fixtures: tiny digit images and a tiny, seeded CPU fit of DCCMClustering.

Every configuration here is small on purpose (a few dozen to 150 8x8 images, one to three
epochs, minibatches of 32, target batches of 64): the whole suite runs on two shared CPU
cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdccm import DCCMClustering

#: Sizes shared by every tiny fit: small minibatches and target batches, CPU, seeded.
TINY = {"batch_size": 32, "target_batch_size": 64, "device": "cpu", "random_state": 0}


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as uint8 images in 0..255 ``(1797, 8, 8)`` and labels."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    return images, data.target


@pytest.fixture(scope="session")
def digit_images(digits):
    """150 uint8 digit images ``(150, 8, 8)``: enough for 10 clusters, quick to train on."""
    images = digits[0][:150].copy()
    images.setflags(write=False)  # tests share it: nobody may modify it
    return images


@pytest.fixture(scope="session")
def tiny_config():
    """The sizes of every tiny fit, for fixtures that cannot use ``make_dccm``."""
    return dict(TINY)


@pytest.fixture
def make_dccm():
    """Factory of tiny CPU DCCMClustering estimators; keyword arguments override."""

    def make(**params):
        return DCCMClustering(**{"n_clusters": 4, "max_iter": 1, **TINY, **params})

    return make


@pytest.fixture(scope="module")
def fitted_dccm(digit_images):
    """One tiny fit shared by a test module: 10 clusters, 3 epochs, default preset."""
    return DCCMClustering(n_clusters=10, max_iter=3, **TINY).fit(digit_images)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (figures measured so, or compared with a child that
    runs so), restoring the thread count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def strokes_and_shaded():
    """Grey images the photographs rule (``skdccm.data.grey_photographs``) sorts apart, 20
    a cluster for 3 clusters: bars of ink on black with anti-aliased edges (strokes), and
    the same bars lifted into mid-tones (shaded like photographs)."""
    from skdccm.data import PHOTO_MIN_SIDE

    side = PHOTO_MIN_SIDE
    rng = np.random.default_rng(0)
    strokes = np.zeros((3 * 20, side, side), dtype=np.float32)
    strokes[:, 4:12, 6:9] = 1.0                      # a bar of ink
    strokes[:, 4:12, 5] = strokes[:, 4:12, 9] = 0.5  # its anti-aliased edges
    shaded = np.clip(strokes + rng.uniform(0.2, 0.8, (len(strokes), 1, 1)), 0, 1)
    return strokes, shaded.astype(np.float32)
