"""Tests of the speed and memory benchmarks (benchmarks/speed.py, benchmarks/memory.py) and of
the training loop's performance paths they measure (issue 7).

The scripts run end to end at toy sizes (8x8 images, minibatches of 8, a few steps) and their
JSON and Markdown outputs are checked for content; no test asserts on a timing. The CUDA
paths (channels-last convolutions, a training step without host synchronisation) have tests
marked ``gpu`` that skip without CUDA.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skdccm.data import ArraySource, infer_layout, to_device
from skdccm.networks import DCCMNetwork, ShallowAlexNet
from skdccm.training import (
    StepResult,
    TrainSpec,
    _snapshot,
    _snapshot_into,
    steps_per_epoch,
    train,
    use_channels_last,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import speed  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    completed = subprocess.run([sys.executable, str(BENCHMARKS / name), *args],
                               capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


# ---------------------------------------------------------------------------------------
# speed.py end to end
# ---------------------------------------------------------------------------------------

TOY_SPEED = ["--n", "40", "--size", "8", "--channels", "3", "--steps", "2", "--batch-size",
             "8", "--matmul-size", "128", "--device", "cpu"]


@pytest.fixture(scope="module")
def speed_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    # One DataLoader worker: the reference loop's multi-process path runs too.
    run_script("speed.py", "--method", "all", "--num-workers", "1", "--out", str(out),
               *TOY_SPEED)
    return out


@pytest.mark.parametrize("method", ["dccm", "crlc"])
def test_speed_json_has_positive_figures_and_the_ratio(speed_results, method):
    result = json.loads((speed_results / f"speed_{method}.json").read_text())
    assert result["method"] == method and result["preset"] == "paper"
    assert result["image_shape"] == [3, 8, 8] and result["n"] == 40
    ours, ref = result["ours"], result["reference"]
    for figures in (ours, ref):
        assert figures["train_images_per_s"] > 0 and figures["train_seconds"] > 0
        assert figures["train_images"] > 0 and figures["train_steps"] > 0
        assert np.isfinite(figures["final_loss"])
        assert figures["train_memory"]["peak_bytes"] > 0
        assert figures["train_memory"]["method"]
    assert ours["predict_images_per_s"] > 0 and ours["predict_images"] == 40
    assert ref["predict_images_per_s"] > 0
    # The ratio is computed from the two throughputs of the same run.
    assert result["ratio_train"] == pytest.approx(
        ours["train_images_per_s"] / ref["train_images_per_s"])
    # Both loops timed the same work: same steps, same images.
    assert ours["train_steps"] == ref["train_steps"]
    assert ours["train_images"] == ref["train_images"]
    assert ref["num_workers"] == 1
    assert result["flops"]["train_flops_per_image"] > 0
    assert result["matmul"]["float32"]["gflops_median"] > 0
    assert result["achieved_gflops"] == pytest.approx(
        result["flops"]["train_flops_per_image"] * ours["train_images_per_s"] / 1e9)
    assert 0 < result["fraction_of_matmul_rate"]
    assert result["spec"]["batch_size"] == 8


def test_speed_plan_follows_the_paper_loop_structure(speed_results):
    result = json.loads((speed_results / "speed_dccm.json").read_text())
    spec, plan = result["spec"], result["plan"]
    # DCCM's released loop: 10 passes over each target batch, 2 draws per minibatch.
    assert (spec["passes_per_chunk"], spec["steps_per_batch"]) == (10, 2)
    assert plan["steps_per_epoch"] % 20 == 0
    assert plan["images_per_epoch"] == plan["n_train"] * 20
    # The full-size target batch (1000, capped by n) is what the memory figure covers.
    assert plan["target_batch_size"] == 40
    assert result["ours"]["train_images"] == plan["images_per_epoch"] * (plan["epochs"] - 1)


def test_speed_markdown_reports_the_table(speed_results):
    for method in ("dccm", "crlc"):
        text = (speed_results / f"speed_{method}.md").read_text()
        assert "| training images/s |" in text
        assert "ours / reference" in text and "fraction of the matmul rate" in text
        ratio = json.loads((speed_results / f"speed_{method}.json").read_text())["ratio_train"]
        assert f"**{ratio:.2f}x**" in text


# ---------------------------------------------------------------------------------------
# speed.py pieces
# ---------------------------------------------------------------------------------------


def test_peak_memory_sees_an_allocation_inside_the_phase():
    if not speed.reset_peak_rss():
        pytest.skip("the peak RSS cannot be reset on this system (no /proc/self/clear_refs)")
    size = 64 * 2**20
    with speed.PeakMemory(torch.device("cpu")) as peak:
        # Fresh pages from the kernel: np.ones could reuse heap memory that earlier tests
        # freed but the allocator kept resident, and the peak would not move.
        with mmap.mmap(-1, size) as region:
            block = np.frombuffer(region, dtype=np.uint8)
            block[:] = 1  # touched: resident
            del block
    figures = peak.as_dict()
    assert figures["working_set_bytes"] >= 0.9 * size
    assert "VmHWM" in figures["method"]
    with speed.PeakMemory(torch.device("cpu")) as quiet:
        pass
    assert quiet.as_dict()["working_set_bytes"] < 0.5 * size  # the mark was reset


def test_reference_plan_repeats_each_minibatch_once_per_draw():
    spec = TrainSpec(max_epochs=2, batch_size=4, chunk_size=8, passes_per_chunk=3,
                     steps_per_batch=2)
    plan = speed.reference_plan(16, spec, 2, torch.Generator().manual_seed(0))
    assert len(plan) == 2 * steps_per_epoch(16, spec)
    for first, second in zip(plan[::2], plan[1::2], strict=True):
        assert first[0] == second[0] and torch.equal(first[2], second[2])
    for epoch in range(2):
        steps = plan[epoch * 24:(epoch + 1) * 24]
        seen = torch.cat([chunk[positions] for _, chunk, positions in steps])
        # every image, 3 passes x 2 draws per epoch
        assert torch.equal(torch.bincount(seen, minlength=16), torch.full((16,), 6))


def test_training_subset_gives_about_half_the_steps_per_epoch():
    spec = TrainSpec(max_epochs=1, batch_size=32, chunk_size=1000, passes_per_chunk=10,
                     steps_per_batch=2)
    assert speed.training_subset_size(spec, 30, 2048) == 32    # at least one minibatch
    assert speed.training_subset_size(spec, 200, 2048) == 160  # 5 minibatches: 100 steps
    assert speed.training_subset_size(spec, 200, 100) == 100   # capped by the data
    single = TrainSpec(max_epochs=1, batch_size=512, chunk_size=512)
    assert speed.training_subset_size(single, 30, 60000) == 15 * 512


def test_fed_views_fails_when_the_objective_never_asks_for_views():
    with pytest.raises(RuntimeError, match="never asked for augmented views"), \
            speed.fed_views(nn.Module(), "dccm") as feed:
        feed(torch.zeros(1, 2, 3, 8, 8))


# ---------------------------------------------------------------------------------------
# memory.py end to end
# ---------------------------------------------------------------------------------------


def test_memory_script_reports_fit_and_predict_per_n(tmp_path):
    run_script("memory.py", "--n", "300", "600", "--size", "12",
               "--batch-size", "32", "--predict-batch-size", "128", "--out", str(tmp_path))
    result = json.loads((tmp_path / "memory.json").read_text())
    rows = result["rows"]
    assert sorted((r["phase"], r["n"]) for r in rows) == [
        ("fit", 300), ("fit", 600), ("predict", 300), ("predict", 600)]
    for row in rows:
        assert row["data_bytes"] == row["n"] * 12 * 12
        assert row["peak_rss_bytes"] > row["baseline_rss_bytes"] > row["data_bytes"]
        assert row["working_set_bytes"] == row["peak_rss_bytes"] - row["baseline_rss_bytes"]
        assert row["seconds"] > 0
    predict = [r for r in rows if r["phase"] == "predict"]
    assert [r["output_bytes"] for r in predict] == [300 * (8 + 40), 600 * (8 + 40)]
    assert set(result["summary"]) == {"fit", "predict"}
    assert result["config"]["fit_n"] == 300
    text = (tmp_path / "memory.md").read_text()
    assert "| 300 |" in text and "| 600 |" in text and "predict: beyond outputs" in text


# ---------------------------------------------------------------------------------------
# training-loop performance paths
# ---------------------------------------------------------------------------------------


class SquareObjective(nn.Module):
    """A loss with no host synchronisation of its own: the loop's syncs are all that remain."""

    n_clusters = 2

    def prepare(self, module, images, collective):
        return None

    def step(self, module, images, targets, index, generator, collective):
        loss = module(images).logits.float().square().mean()
        return StepResult(loss, {"square": loss.detach()})


def tiny_setup(n: int, device: torch.device, seed: int = 0):
    images = np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)
    layout = infer_layout(images.shape, images.dtype, image_shape=None, channels=None,
                          owner="test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = DCCMNetwork(ShallowAlexNet(1, (8, 8)), 256, 2).to(device)
    return module, SquareObjective().to(device), ArraySource(images, layout, device)


def train_tiny(n: int, device: torch.device, **spec_params):
    module, objective, source = tiny_setup(n, device)
    spec = TrainSpec(**{"max_epochs": 2, "batch_size": 4, "chunk_size": n,
                        "optimizer": "rmsprop", "learning_rate": 1e-3, **spec_params})
    result = train(module, objective, source, spec, torch.Generator().manual_seed(0),
                   torch.Generator(device=device).manual_seed(1))
    return result


def four_d_parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def test_channels_last_training_matches_and_returns_the_standard_layout():
    cpu = torch.device("cpu")
    # SGD: its steps are proportional to the gradients, so layout-dependent rounding stays
    # at rounding size (RMSprop would magnify it on near-zero gradients).
    plain = train_tiny(16, cpu, channels_last=False, optimizer="sgd")
    fast = train_tiny(16, cpu, channels_last=True, optimizer="sgd")
    for param in four_d_parameters(fast.module):
        assert param.is_contiguous()  # back in the standard layout for predict and pickle
    np.testing.assert_allclose([r["loss"] for r in fast.history],
                               [r["loss"] for r in plain.history], rtol=1e-4)
    for a, b in zip(plain.module.parameters(), fast.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_channels_last_default_is_on_for_cuda_convolutions_only():
    conv = DCCMNetwork(ShallowAlexNet(1, (8, 8)), 256, 2)
    mlp = nn.Sequential(nn.Linear(4, 4))
    assert use_channels_last(None, conv, torch.device("cuda"))
    assert not use_channels_last(None, mlp, torch.device("cuda"))
    assert not use_channels_last(None, conv, torch.device("cpu"))
    assert use_channels_last(True, conv, torch.device("cpu"))
    assert not use_channels_last(False, conv, torch.device("cuda"))


def test_snapshot_into_overwrites_the_existing_tensors():
    module, objective, _ = tiny_setup(8, torch.device("cpu"))
    snapshot = _snapshot(module, objective)
    held = {k: v for k, v in snapshot[0].items()}
    with torch.no_grad():
        for param in module.parameters():
            param.add_(1.0)
    _snapshot_into(snapshot, module, objective)
    for key, value in module.state_dict().items():
        assert snapshot[0][key] is held[key]            # same tensor, new values
        assert torch.equal(snapshot[0][key], value)
        assert snapshot[0][key].data_ptr() != value.data_ptr()  # a copy, not an alias


def test_to_device_is_the_identity_on_the_same_device():
    index = torch.arange(5)
    assert to_device(index, torch.device("cpu")) is index


@pytest.mark.gpu
@needs_cuda
def test_to_device_copies_to_cuda_without_blocking():
    index = torch.arange(1000)
    moved = to_device(index, torch.device("cuda"))
    assert moved.device.type == "cuda"
    assert torch.equal(moved.cpu(), index)


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_steps_do_not_synchronise_with_the_host():
    """Host syncs per epoch are allowed (figures leave the device once an epoch); per step
    none: an epoch of 8 steps syncs exactly as often as one of 2 steps."""

    def sync_count(n: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train_tiny(n, torch.device("cuda"), max_epochs=1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    sync_count(8)  # warm-up: lazy CUDA initialisation syncs once
    assert sync_count(8) == sync_count(32)


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_in_channels_last_returns_the_standard_layout():
    result = train_tiny(16, torch.device("cuda"))  # channels_last=None: on for CUDA convs
    assert all(np.isfinite(r["loss"]) for r in result.history)
    for param in four_d_parameters(result.module):
        assert param.is_contiguous()


@pytest.mark.gpu
@needs_cuda
def test_speed_script_on_cuda(tmp_path):
    run_script("speed.py", "--method", "dccm", "--num-workers", "0", "--out", str(tmp_path),
               *[a if a != "cpu" else "cuda" for a in TOY_SPEED])
    result = json.loads((tmp_path / "speed_dccm.json").read_text())
    assert result["device"].startswith("cuda")
    assert "max_memory_allocated" in result["ours"]["train_memory"]["method"]
    assert result["precision"] in ("bfloat16", "float16")
    assert result["ratio_train"] > 0
