"""Tests of skdccm.data: layouts of every input form, scaling, batching, memory maps."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from skdccm.data import (
    ArraySource,
    InputLayout,
    as_array,
    check_image_size,
    check_is_batch,
    even_splits,
    infer_layout,
    shuffled_batches,
    to_network_input,
    value_range,
)

CPU = torch.device("cpu")
F32, U8 = np.dtype(np.float32), np.dtype(np.uint8)


def layout_of(shape, dtype=F32, image_shape=None, channels=None):
    return infer_layout(shape, dtype, image_shape=image_shape, channels=channels, owner="Est")


def gather_all(array, layout):
    return ArraySource(array, layout, CPU).gather(torch.arange(len(array)))


# ---------------------------------------------------------------------------------------
# infer_layout
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "image_shape", "channels", "sample", "stored", "last"), [
    ((10, 20), None, None, (20,), (20,), False),                         # flat features
    ((10, 784), (1, 28, 28), None, (1, 28, 28), (1, 28, 28), False),      # flattened (C,H,W)
    ((10, 784), (28, 28), None, (1, 28, 28), (1, 28, 28), False),         # flattened (H,W)
    ((10, 3072), (3, 32, 32), "first", (3, 32, 32), (3, 32, 32), False),
    ((10, 3072), (3, 32, 32), "last", (3, 32, 32), (32, 32, 3), True),   # flattened HWC
    ((10, 8, 8), None, None, (1, 8, 8), (8, 8), False),                  # (n, H, W)
    ((10, 32, 32, 3), None, None, (3, 32, 32), (32, 32, 3), True),       # (n, H, W, C)
    ((10, 28, 28, 1), None, None, (1, 28, 28), (28, 28, 1), True),
    ((10, 16, 16, 4), None, None, (4, 16, 16), (16, 16, 4), True),
    ((10, 3, 32, 32), None, None, (3, 32, 32), (3, 32, 32), False),      # (n, C, H, W)
    ((10, 1, 28, 28), None, None, (1, 28, 28), (1, 28, 28), False),
    # ambiguous: the last axis could be channels; channels= decides
    ((10, 3, 4, 4), None, None, (4, 3, 4), (3, 4, 4), True),
    ((10, 3, 4, 4), None, "first", (3, 4, 4), (3, 4, 4), False),
    ((10, 8, 8, 5), None, "last", (5, 8, 8), (8, 8, 5), True),
    ((10, 3, 8, 8), None, "first", (3, 8, 8), (3, 8, 8), False),
])
def test_infer_layout_for_every_input_form(shape, image_shape, channels, sample, stored, last):
    layout = layout_of(shape, image_shape=image_shape, channels=channels)
    assert layout.sample_shape == sample
    assert layout.stored_shape == stored
    assert layout.channels_last is last
    assert layout.is_image is (len(sample) == 3)


def test_uint8_is_scaled_and_floats_are_not():
    assert layout_of((4, 8, 8), U8).scale == pytest.approx(1 / 255)
    assert layout_of((4, 8, 8), F32).scale == 1.0
    assert layout_of((4, 8, 8), np.dtype(np.float64)).scale == 1.0
    images = np.array([[[0, 51], [255, 128]]] * 3, dtype=np.uint8)        # (3, 2, 2)
    batch = gather_all(images, layout_of(images.shape, U8))
    assert batch.dtype == torch.float32 and batch.shape == (3, 1, 2, 2)
    expected = torch.tensor([[0.0, 51 / 255], [1.0, 128 / 255]])
    torch.testing.assert_close(batch[0, 0], expected)
    floats = np.array([[[0.0, 20.0], [-3.5, 16.0]]] * 2, dtype=np.float32)
    torch.testing.assert_close(gather_all(floats, layout_of(floats.shape))[:, 0],
                               torch.from_numpy(floats))


def test_infer_layout_errors_name_the_estimator_and_the_fix():
    with pytest.raises(ValueError, match=r"Est: image_shape=\(1, 7, 7\) needs 49 features "
                                         r"per sample, X has 64"):
        layout_of((5, 64), image_shape=(1, 7, 7))
    with pytest.raises(ValueError, match=r"image_shape.*\(C, H, W\) or \(H, W\)"):
        layout_of((5, 64), image_shape=(64,))
    with pytest.raises(ValueError, match="positive"):
        layout_of((5, 64), image_shape=(0, 8, 8))
    with pytest.raises(ValueError, match="only for 2-D X"):
        layout_of((5, 8, 8), image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"channels='middle'"):
        layout_of((5, 8, 8, 3), channels="middle")
    with pytest.raises(ValueError, match=r"got 5-D with shape \(5, 2, 8, 8, 1\)"):
        layout_of((5, 2, 8, 8, 1))


# ---------------------------------------------------------------------------------------
# conversion to network input: every stored form gives the same (N, C, H, W) batch
# ---------------------------------------------------------------------------------------


def test_all_stored_forms_give_the_same_network_input():
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, size=(6, 3, 5, 7), dtype=np.uint8)       # reference (N,C,H,W)
    expected = torch.from_numpy(chw.astype(np.float32) / 255)
    hwc = np.ascontiguousarray(chw.transpose(0, 2, 3, 1))              # (N, H, W, C)
    forms = [
        (chw, {}),
        (hwc, {}),
        (chw.reshape(6, -1), {"image_shape": (3, 5, 7)}),
        (chw.reshape(6, -1), {"image_shape": (3, 5, 7), "channels": "first"}),
        (hwc.reshape(6, -1), {"image_shape": (3, 5, 7), "channels": "last"}),
    ]
    for array, kwargs in forms:
        layout = layout_of(array.shape, U8, **kwargs)
        got = gather_all(array, layout)
        assert got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)


def test_grey_forms_agree():
    rng = np.random.default_rng(1)
    hw = rng.random((4, 6, 6)).astype(np.float32)
    expected = torch.from_numpy(hw)[:, None]
    for array, kwargs in [(hw, {}), (hw[:, None], {}), (hw[..., None], {}),
                          (hw.reshape(4, 36), {"image_shape": (6, 6)}),
                          (hw.reshape(4, 36), {"image_shape": (1, 6, 6)})]:
        got = gather_all(array, layout_of(array.shape, **kwargs))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # plain strides: torch must not mistake one channel for a channels-last layout,
        # whose kernels round differently
        assert got.stride() == (36, 36, 6, 1)


def test_to_network_input_keeps_flat_features_flat():
    raw = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    out = to_network_input(raw, InputLayout((4,), (4,), False, 0.5))
    torch.testing.assert_close(out, torch.arange(12, dtype=torch.float32).reshape(3, 4) / 2)


def test_check_image_size_message():
    layout = layout_of((3, 9, 9))
    with pytest.raises(ValueError, match=r"Est was fitted on samples of shape \(1, 8, 8\).*"
                                         r"\(1, 9, 9\)"):
        check_image_size(layout, (1, 8, 8), "Est")
    check_image_size(layout_of((3, 8, 8)), (1, 8, 8), "Est")


@pytest.mark.parametrize(("shape", "fitted"), [
    ((8, 8), (1, 8, 8)), ((3, 8, 8), (3, 8, 8)), ((8, 8, 3), (3, 8, 8)),
    ((8, 8, 1), (1, 8, 8)),
])
def test_check_is_batch_refuses_one_image(shape, fitted):
    with pytest.raises(ValueError, match=r"^Est: X has shape .* X\[None\]"):
        check_is_batch(shape, fitted, "Est")


@pytest.mark.parametrize(("shape", "fitted"), [
    ((1, 8, 8), (1, 8, 8)),    # one grey image, already a batch
    ((8, 64), (1, 8, 8)),      # flattened images
    ((8, 8), (8,)),            # flat features: 8 samples
    ((5, 8, 8), (1, 8, 8)),
    ((8, 8), (3, 8, 8)),       # not one image of this model: check_image_size's business
])
def test_check_is_batch_accepts_batches(shape, fitted):
    check_is_batch(shape, fitted, "Est")


def test_as_array_keeps_dtype_and_memory():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_array(array, "Est") is array
    tensor = torch.from_numpy(array)
    converted = as_array(tensor, "Est")
    assert converted.dtype == np.uint8 and np.shares_memory(converted, array)
    listed = as_array([tensor[0], array[1], tensor[2].float().requires_grad_()], "Est")
    assert listed.dtype == np.float32  # NumPy's promotion, as for the equivalent list
    np.testing.assert_array_equal(listed, array)
    assert as_array(torch.ones(2, 2, dtype=torch.bfloat16), "Est").dtype == np.float32


# ---------------------------------------------------------------------------------------
# ArraySource: batches, memory maps
# ---------------------------------------------------------------------------------------


def test_batches_are_in_order_balanced_and_complete():
    array = np.arange(65 * 4, dtype=np.float32).reshape(65, 2, 2)
    source = ArraySource(array, layout_of(array.shape), CPU)
    batches = list(source.batches(32))
    assert [len(b) for b in batches] == [22, 22, 21]   # never a trailing batch of one
    torch.testing.assert_close(torch.cat(batches)[:, 0], torch.from_numpy(array))
    assert [len(b) for b in source.batches(1000)] == [65]


def test_gather_returns_rows_in_index_order():
    array = np.arange(10 * 9, dtype=np.float32).reshape(10, 3, 3)
    source = ArraySource(array, layout_of(array.shape), CPU)
    index = torch.tensor([7, 2, 2, 9])
    torch.testing.assert_close(source.gather(index)[:, 0], torch.from_numpy(array[[7, 2, 2, 9]]))


def test_value_range_of_scaled_data():
    images = np.array([[[3, 200]], [[17, 90]]], dtype=np.uint8)
    source = ArraySource(images, layout_of(images.shape, U8), CPU)
    low, high = value_range(source, batch_size=1)
    assert low == pytest.approx(3 / 255) and high == pytest.approx(200 / 255)


@pytest.fixture
def readonly_memmap(tmp_path):
    """A read-only (4000, 32, 32) uint8 memory map (4 MB) with known content."""
    path = tmp_path / "images.u8"
    writer = np.memmap(path, dtype=np.uint8, mode="w+", shape=(4000, 32, 32))
    writer[:] = (np.arange(4000) % 251)[:, None, None]
    writer.flush()
    del writer
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(4000, 32, 32))


def test_gather_on_a_readonly_memmap_reads_only_the_rows(readonly_memmap):
    assert not readonly_memmap.flags.writeable
    layout = layout_of(readonly_memmap.shape, U8)
    index = torch.tensor([5, 3999, 1234, 17])
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # e.g. torch's "non-writable array" warning
        tracemalloc.start()
        try:
            source = ArraySource(readonly_memmap, layout, CPU)
            batch = source.gather(index)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert source.array is readonly_memmap        # kept as given, not copied
    assert peak < readonly_memmap.nbytes // 20    # 4 rows are 4 KB; the whole map is 4 MB
    expected = np.array([5, 3999 % 251, 1234 % 251, 17], dtype=np.float32) / 255
    torch.testing.assert_close(batch[:, 0, 0, 0], torch.from_numpy(expected))
    assert batch.shape == (4, 1, 32, 32)


def test_estimator_fits_and_predicts_on_a_readonly_memmap(make_dccm, digit_images, tmp_path):
    path = tmp_path / "digits.u8"
    writer = np.memmap(path, dtype=np.uint8, mode="w+", shape=(64, 8, 8))
    writer[:] = digit_images[:64]
    writer.flush()
    del writer
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(64, 8, 8))
    est = make_dccm().fit(mapped)
    in_memory = make_dccm().fit(np.array(digit_images[:64]))
    np.testing.assert_array_equal(est.labels_, in_memory.labels_)
    np.testing.assert_array_equal(est.predict(mapped), est.labels_)


# ---------------------------------------------------------------------------------------
# even_splits
# ---------------------------------------------------------------------------------------


def test_even_splits_never_leaves_a_batch_of_one():
    for n in range(2, 260):
        for max_size in (1, 2, 3, 5, 16, 32, 64):
            parts = even_splits(torch.arange(n), max_size)
            sizes = [len(p) for p in parts]
            assert min(sizes) >= 2, (n, max_size, sizes)
            assert max(sizes) - min(sizes) <= 1
            assert torch.equal(torch.cat(parts), torch.arange(n))
            if max_size >= 3:
                assert max(sizes) <= max_size
                assert len(parts) == -(-n // max_size)          # the fewest parts


def test_even_splits_small_inputs():
    assert [len(p) for p in even_splits(torch.arange(1), 32)] == [1]
    assert [len(p) for p in even_splits(torch.arange(0), 32)] == [0]
    assert [len(p) for p in even_splits(torch.arange(33), 32)] == [17, 16]


def test_shuffled_batches_cover_every_sample_once_in_a_fixed_random_order():
    batches = shuffled_batches(1000, 128)
    order = torch.cat(batches)
    assert sorted(order.tolist()) == list(range(1000))
    assert [len(b) for b in batches] == [len(b) for b in even_splits(order, 128)]
    assert not torch.equal(order, torch.arange(1000))
    # Data stored in class order (10 classes of 100): every batch mixes many classes.
    classes = torch.arange(1000) // 100
    assert min(len(classes[b].unique()) for b in batches) >= 8
    # The same batches on every call, other ones for another seed, the global RNG untouched.
    state = torch.random.get_rng_state()
    again = shuffled_batches(1000, 128)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(torch.cat(shuffled_batches(1000, 128, seed=1)), order)


# ---------------------------------------------------------------------------------------
# tones: how much of the images' foreground is mid-tones (the photographs' defaults rule)
# ---------------------------------------------------------------------------------------


def test_tone_shares_count_the_pixels_within_the_margin_of_each_end():
    from skdccm.data import TONE_MARGIN, tone_shares

    # 10 values evenly over [0, 1]: within TONE_MARGIN of 0 are 0 and 0.1 (edge included)
    values = np.linspace(0, 1, 11, dtype=np.float64)[:10].reshape(2, 1, 5).astype(np.float32)
    values[1, 0, 4] = 1.0
    source = ArraySource(values, layout_of(values.shape), CPU)
    dark, light = tone_shares(source, (0.0, 1.0), batch_size=1)
    z = values.astype(np.float64).ravel()
    assert dark == pytest.approx(np.mean(z <= TONE_MARGIN + 1e-7))
    assert light == pytest.approx(np.mean(z >= 1 - TONE_MARGIN - 1e-7))
    assert (dark, light) == (pytest.approx(0.2), pytest.approx(0.1))


def test_tone_shares_of_constant_images_leave_no_foreground():
    from skdccm.data import foreground_midtones, tone_shares

    flat = np.full((3, 4, 4), 0.5, dtype=np.float32)
    shares = tone_shares(ArraySource(flat, layout_of(flat.shape), CPU), (0.5, 0.5))
    assert foreground_midtones(*shares) == 0.0


@pytest.mark.parametrize("dark, light, expected", [
    (0.75, 0.125, 0.5),      # ink on black: half the ink is edges
    (0.125, 0.75, 0.5),      # the same inverted (dark ink on white paper)
    (0.0, 0.0, 1.0),         # all mid-tones
    (0.5, 0.0, 1.0),         # a shaded object on black
    (1.0, 0.0, 0.0),         # all background
])
def test_foreground_midtones_takes_the_commoner_end_as_background(dark, light, expected):
    from skdccm.data import foreground_midtones

    assert foreground_midtones(dark, light) == pytest.approx(expected)


@pytest.mark.parametrize("name, shaded", [
    ("mnist5k", False), ("usps", False), ("coil20", True), ("orl", True),
])
def test_real_strokes_and_photographs_fall_either_side_of_the_midtone_threshold(name, shaded):
    from skdccm.data import PHOTO_MIN_MIDTONES, foreground_midtones, tone_shares
    from skdccm.suite import load_suite_set

    try:
        X, _ = load_suite_set(name, 1000)
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"{name} is not available here: {error}")
    source = ArraySource(X, layout_of(X.shape, X.dtype), CPU)
    midtones = foreground_midtones(*tone_shares(source, value_range(source)))
    assert (midtones >= PHOTO_MIN_MIDTONES) is shaded, midtones
