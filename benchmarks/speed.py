"""Training and prediction speed of the paper presets beside a plain PIL / DataLoader loop.

For each method (DCCM, and CRLC) this script measures, in one run on random uint8 images:

- **ours**: training images per second of the estimator's own training loop
  (:func:`skdccm.training.train` with the network, objective and :class:`TrainSpec` that
  ``fit`` would build), prediction images per second of ``predict``, and peak memory;
- **reference**: the same network, the same objective (its loss code, unchanged) and the same
  optimiser, minibatch and target-batch sizes, fed the way the released DCCM code fed its
  network: every image augmented one by one with torchvision's PIL transforms inside a
  :class:`torch.utils.data.DataLoader` with worker processes;
- the ratio ours / reference, the network's FLOPs per training image
  (:class:`torch.utils.flop_counter.FlopCounterMode`, forward and backward), the machine's
  measured matrix-multiply rate, and the share of it that training achieves.

Images per second count each training image once, however many augmented views of it the
method uses in a step (DCCM: the original and one augmented view; CRLC: two views).

Only a few optimiser steps are timed. The training subset is sized so that one epoch of the
preset's loop structure (target batch, passes, draws per minibatch) is about half of
``--steps`` optimiser steps; one such epoch warms up, the following ones are timed. The cost
per training image does not depend on the subset's size: each target batch is still prepared
once per ``passes x draws`` visits of its images. Peak memory additionally covers one
preparation of a full target batch (DCCM's 1000 images), the largest single allocation of a
real run.

Usage (CPU, 2 cores, a few minutes)::

    python benchmarks/speed.py --method dccm --preset paper --n 2048 --size 32 --channels 3 \
        --steps 30 --device auto --out benchmark_results/speed

Writes ``speed_<method>.json`` and ``speed_<method>.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import skdccm
import skdccm.dccm
from skdccm.data import ArraySource, even_splits, value_range
from skdccm.training import (
    TrainSpec,
    autocast_dtype,
    make_optimizer,
    resolve_device,
    steps_per_epoch,
    train,
)

METHODS = ("dccm", "crlc")

# ----------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    except OSError:
        return False
    return status_kib("VmHWM") is not None


def lifetime_peak_rss_bytes() -> int:
    """``ru_maxrss``: the process's peak RSS since it started (kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """Peak memory of the code run inside ``with PeakMemory(device) as peak:``.

    On CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``), reset on
    entry. On CPU: the process's peak resident set size, read from ``/proc/self/status``
    (``VmHWM``) after resetting it through ``/proc/self/clear_refs``; where that is not
    possible, ``getrusage``'s lifetime peak (``ru_maxrss``), which cannot be reset and so
    includes everything the process did before. ``method`` says which one was used. Host
    peak RSS is recorded on every device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.host_peak_bytes = 0
        self._resettable = False

    def __enter__(self) -> PeakMemory:
        synchronize(self.device)
        self._resettable = reset_peak_rss()
        rss = status_kib("VmRSS")
        self.host_baseline_bytes = rss * 1024 if rss is not None else 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline_bytes = self.host_baseline_bytes
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        if self._resettable:
            self.host_peak_bytes = (status_kib("VmHWM") or 0) * 1024
            host_method = "peak RSS (VmHWM, reset at the start of the phase)"
        else:
            self.host_peak_bytes = lifetime_peak_rss_bytes()
            host_method = "peak RSS of the whole process so far (getrusage ru_maxrss)"
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (reset at the start of the phase)"
        else:
            self.peak_bytes = self.host_peak_bytes
            self.method = host_method

    def as_dict(self) -> dict[str, Any]:
        return {"peak_bytes": int(self.peak_bytes), "baseline_bytes": int(self.baseline_bytes),
                "working_set_bytes": int(self.peak_bytes - self.baseline_bytes),
                "host_peak_rss_bytes": int(self.host_peak_bytes), "method": self.method}


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                repeats: int = 5) -> dict[str, Any]:
    """Measured rate of ``torch.mm`` on ``size x size`` matrices, in GFLOP/s (median, best)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=generator, device=device).to(dtype)
    b = torch.randn(size, size, generator=generator, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: thread pools, kernels, allocator
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        seconds.append(time.perf_counter() - tic)
    flops = 2.0 * size**3
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "repeats": repeats,
            "gflops_median": flops / float(np.median(seconds)) / 1e9,
            "gflops_best": flops / min(seconds) / 1e9}


# ----------------------------------------------------------------------------------------
# the estimator's own parts, set up as fit does
# ----------------------------------------------------------------------------------------


def make_estimator(method: str, args: argparse.Namespace) -> Any:
    """The method's estimator with the requested preset and any size overrides."""
    if method == "dccm":
        cls = skdccm.DCCMClustering
    else:
        cls = getattr(skdccm, "CRLCClustering", None)
        if cls is None:
            raise SystemExit("skdccm.CRLCClustering does not exist in this version")
    params: dict[str, Any] = {"n_clusters": args.n_clusters, "preset": args.preset,
                              "device": args.device, "precision": args.precision,
                              "compile": args.compile, "random_state": 0}
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    return cls(**params)


class Setup:
    """What ``fit`` builds before calling the training loop: validated data, network,
    objective, spec and generators. Built the same way for our loop and for the reference,
    so that both start from identical weights."""

    def __init__(self, estimator: Any, X: np.ndarray, max_epochs: int, seed: int = 0) -> None:
        self.params = estimator._resolved_params()
        self.params["max_iter"] = max_epochs
        X, layout = estimator._validate_input(X, reset=True)
        self.device = resolve_device(estimator.device)
        self.source = ArraySource(X, layout, self.device)
        self.layout = replace(layout, value_range=value_range(self.source))
        self.source.layout = self.layout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module, self.objective = estimator._build(self.layout, self.params)
        self.module.to(self.device)
        self.objective.to(self.device)
        spec = estimator._train_spec(self.params, len(X), self.layout)
        self.spec: TrainSpec = replace(spec, checkpoint_dir=None, resume=False, verbose=0,
                                       tol=0.0)
        self.generator = torch.Generator().manual_seed(seed)
        self.device_generator = torch.Generator(device=self.device).manual_seed(seed + 1)


def views_per_visit(spec: TrainSpec) -> int:
    """Optimiser steps in which each training image takes part per epoch."""
    return spec.passes_per_chunk * spec.steps_per_batch


def training_subset_size(spec: TrainSpec, steps: int, n_available: int) -> int:
    """Images whose epoch is about ``steps / 2`` optimiser steps (at least one minibatch)."""
    batches = max(1, steps // (2 * views_per_visit(spec)))
    return min(n_available, batches * spec.batch_size)


class EpochClock:
    """Training-loop callback: the time at the end of each epoch, device work included."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, owner: Any, record: dict[str, Any]) -> bool:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return False


def prepare_full_target_batch(setup: Setup, module: nn.Module, objective: nn.Module,
                              X_full: np.ndarray, target_batch_size: int) -> None:
    """One target-batch preparation at the preset's full size (memory, not timed)."""
    count = min(target_batch_size, len(X_full))
    source = ArraySource(X_full[:count], setup.layout, setup.device)
    images = source.gather(torch.arange(count))
    was_training = module.training
    module.train()
    with torch.no_grad(), _autocast(setup.device, autocast_dtype(setup.spec.precision,
                                                                 setup.device)):
        objective.prepare(module, images)
    module.train(was_training)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_ours(method: str, args: argparse.Namespace, X: np.ndarray,
             plan: dict[str, Any]) -> tuple[dict[str, Any], Setup, Any]:
    """Train with skdccm's loop on the training subset; time the epochs after the first."""
    estimator = make_estimator(method, args)
    X_train = X[: plan["n_train"]]
    setup = Setup(estimator, X_train, plan["epochs"])
    clock = EpochClock(setup.device)
    with PeakMemory(setup.device) as peak:
        synchronize(setup.device)
        result = train(setup.module, setup.objective, setup.source, setup.spec,
                       setup.generator, setup.device_generator, callbacks=[clock])
        if plan["target_batch_size"] > plan["n_train"]:
            prepare_full_target_batch(setup, result.module, setup.objective, X,
                                      plan["target_batch_size"])
    seconds = clock.times[-1] - clock.times[0]
    images = plan["images_per_epoch"] * (plan["epochs"] - 1)
    figures = {
        "train_images_per_s": images / seconds, "train_seconds": seconds,
        "train_images": images, "train_steps": plan["steps_per_epoch"] * (plan["epochs"] - 1),
        "train_memory": peak.as_dict(),
        "final_loss": result.history[-1]["loss"],
    }
    return figures, setup, estimator


def predict_throughput(estimator: Any, setup: Setup, module: nn.Module, X: np.ndarray,
                       ) -> dict[str, Any]:
    """Images per second and peak memory of ``estimator.predict`` on all of ``X``."""
    # The attributes ``fit`` would set, from the network trained above.
    estimator._validate_input(X, reset=True)
    estimator.module_ = module.cpu().eval()
    estimator.device_ = setup.device
    estimator.input_shape_ = setup.layout.sample_shape
    if method_of(estimator) == "crlc":
        estimator.selected_head_ = 0  # fit would choose it by the PC loss: any head is as fast
    warm = X[: min(len(X), estimator.predict_batch_size)]
    estimator.predict(warm)  # warm-up: kernels, allocator, device copy of the weights
    with PeakMemory(setup.device) as peak:
        tic = time.perf_counter()
        labels = estimator.predict(X)
        synchronize(setup.device)
        seconds = time.perf_counter() - tic
    assert labels.shape == (len(X),)
    return {"predict_images_per_s": len(X) / seconds, "predict_seconds": seconds,
            "predict_images": len(X), "predict_batch_size": int(estimator.predict_batch_size),
            "predict_memory": peak.as_dict()}


def method_of(estimator: Any) -> str:
    return "crlc" if type(estimator).__name__.startswith("CRLC") else "dccm"


# ----------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------


def count_flops(setup: Setup, X_train: np.ndarray) -> dict[str, Any]:
    """FLOPs per training image: one step's forward and backward, plus the target batch's
    forward spread over the ``passes x draws`` visits of each of its images.

    Counted by FlopCounterMode: matrix products, convolutions and their gradients (not the
    element-wise work of augmentations, normalisations and activations).
    """
    module = copy.deepcopy(setup.module).train()
    objective = copy.deepcopy(setup.objective).train()
    batch = setup.spec.batch_size
    images = setup.source.gather(torch.arange(batch))
    index = torch.arange(batch, device=setup.device)
    generator = torch.Generator(device=setup.device).manual_seed(0)
    with FlopCounterMode(display=False) as prepare_counter, torch.no_grad():
        targets = objective.prepare(module, images)
    with FlopCounterMode(display=False) as step_counter:
        result = objective.step(module, images, targets, index, generator)
        result.loss.backward()
    step = step_counter.get_total_flops()
    prepare = prepare_counter.get_total_flops()
    per_image = step / batch + prepare / batch / views_per_visit(setup.spec)
    return {"step_flops": int(step), "step_images": batch,
            "prepare_flops_per_image": prepare / batch,
            "train_flops_per_image": per_image,
            "counted": "FlopCounterMode: matmul and convolution FLOPs, forward + backward"}


# ----------------------------------------------------------------------------------------
# the reference loop: per-image PIL augmentation in a DataLoader
# ----------------------------------------------------------------------------------------


def reference_transform(method: str, image_size: int, channels: int):
    """torchvision PIL transforms: DCCM's released settings, or CRLC's SimCLR views."""
    from torchvision import transforms as T

    if method == "dccm":
        return T.Compose([
            T.RandomAffine(degrees=20, translate=(0.18, 0.18), scale=(0.85, 1.15)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ])
    colour = [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)]
    if channels == 3:
        colour.append(T.RandomGrayscale(p=0.2))
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        *colour,
        T.ToTensor(),
        T.Normalize((0.5,) * channels, (0.5,) * channels),
    ])


class PILDataset(torch.utils.data.Dataset):
    """uint8 images ``(N, H, W, C)`` served as PIL images through ``transform``.

    ``n_views`` independent draws per item (CRLC: 2), stacked as ``(n_views, C, H, W)``.
    """

    def __init__(self, images: np.ndarray, transform: Callable, n_views: int) -> None:
        self.images = images
        self.transform = transform
        self.n_views = n_views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        from PIL import Image

        pixels = self.images[i]
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        return torch.stack([self.transform(image) for _ in range(self.n_views)])


def reference_plan(n: int, spec: TrainSpec, epochs: int, generator: torch.Generator,
                   ) -> list[tuple[int, Tensor, Tensor]]:
    """Every step of ``epochs`` epochs in the loop structure of ``spec``:
    ``(chunk number, chunk indices, positions of the minibatch within the chunk)``."""
    steps, chunk_id = [], 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for chunk in even_splits(order, spec.chunk_size):
            for _ in range(spec.passes_per_chunk):
                within = torch.randperm(len(chunk), generator=generator)
                for positions in even_splits(within, spec.batch_size):
                    steps += [(chunk_id, chunk, positions)] * spec.steps_per_batch
            chunk_id += 1
    return steps


@contextlib.contextmanager
def fed_views(objective: nn.Module, method: str) -> Iterator[Callable[[Tensor], None]]:
    """Make the objective take its augmented views from the DataLoader.

    The objective's own loss code runs unchanged; only its augmentation is replaced by the
    views that the PIL pipeline produced. Yields ``feed(views)`` to call before each step,
    and fails loudly if the objective never asked for views (its augmentation hook moved).
    """
    current: dict[str, Tensor] = {}
    calls = [0]

    def feed(views: Tensor) -> None:                       # (V, n, C, H, W)
        current["views"] = views

    if method == "dccm":
        original = skdccm.dccm.dccm_view

        def dccm_view(images, *args, **kwargs):            # one augmented view (n, C, H, W)
            calls[0] += 1
            return current["views"][0]

        skdccm.dccm.dccm_view = dccm_view
        try:
            yield feed
        finally:
            skdccm.dccm.dccm_view = original
    else:
        def views(images, generator=None):                 # two views stacked: (2n, C, H, W)
            calls[0] += 1
            return current["views"].flatten(0, 1)

        objective.views = views
        try:
            yield feed
        finally:
            del objective.views
    if calls[0] == 0:
        raise RuntimeError("the objective never asked for augmented views: update "
                           "fed_views() to its augmentation hook")


def run_reference(method: str, args: argparse.Namespace, X: np.ndarray,
                  plan: dict[str, Any]) -> dict[str, Any]:
    """The plain loop: same network, objective, optimiser and sizes; PIL views from a
    DataLoader. The first epoch warms up (workers, kernels); the others are timed."""
    estimator = make_estimator(method, args)
    X_train = X[: plan["n_train"]]
    setup = Setup(estimator, X_train, plan["epochs"])
    device, spec = setup.device, setup.spec
    module, objective = setup.module, setup.objective
    channels, size = X.shape[-1], X.shape[1]
    n_views = 1 if method == "dccm" else 2
    dataset = PILDataset(X_train, reference_transform(method, size, channels), n_views)
    steps = reference_plan(len(X_train), spec, plan["epochs"], setup.generator)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[(chunk[pos]).tolist() for _, chunk, pos in steps],
        num_workers=args.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    # Un-augmented images for the targets and DCCM's original-view terms: (N, C, H, W).
    originals = setup.source.gather(torch.arange(len(X_train)))
    optimizer = make_optimizer((module, objective), spec)
    amp_dtype = autocast_dtype(spec.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    warmup_steps = plan["steps_per_epoch"]
    module.train()
    objective.train()
    targets, chunk_images, current_chunk, tic = None, originals, -1, None
    with PeakMemory(device) as peak, fed_views(objective, method) as feed:
        for step, ((chunk_id, chunk, positions), batch) in enumerate(zip(steps, loader,
                                                                          strict=True)):
            if step == warmup_steps:
                synchronize(device)
                tic = time.perf_counter()
            if chunk_id != current_chunk:
                chunk_images = originals[chunk.to(device)]                  # (Nc, C, H, W)
                with torch.no_grad(), _autocast(device, amp_dtype):
                    targets = objective.prepare(module, chunk_images)
                current_chunk = chunk_id
            views = batch.to(device, non_blocking=True).transpose(0, 1)     # (V, n, C, H, W)
            feed(views)
            index = positions.to(device)
            with _autocast(device, amp_dtype):
                result = objective.step(module, chunk_images[index], targets, index,
                                        setup.device_generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(result.loss).backward()
            scaler.step(optimizer)
            scaler.update()
        synchronize(device)
        seconds = time.perf_counter() - tic
        if plan["target_batch_size"] > plan["n_train"]:
            prepare_full_target_batch(setup, module, objective, X, plan["target_batch_size"])
    images = plan["images_per_epoch"] * (plan["epochs"] - 1)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "train_images_per_s": images / seconds, "train_seconds": seconds,
        "train_images": images, "train_steps": len(steps) - warmup_steps,
        "num_workers": args.num_workers, "train_memory": peak.as_dict(),
        "worker_peak_rss_bytes": int(children * (1 if sys.platform == "darwin" else 1024)),
        "final_loss": float(result.loss.detach()),
    }


def reference_predict(args: argparse.Namespace, estimator: Any, X: np.ndarray,
                      device: torch.device) -> dict[str, Any]:
    """Plain prediction: ToTensor per image in a DataLoader, then the fitted network."""
    from torchvision import transforms as T

    dataset = PILDataset(X, T.ToTensor(), 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=estimator.predict_batch_size,
                                         num_workers=args.num_workers,
                                         pin_memory=device.type == "cuda")
    module = copy.deepcopy(estimator.module_).to(device).eval()
    labels = []
    tic = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            batch = batch[:, 0].to(device, non_blocking=True)
            proba = estimator._infer(module, batch)[0]
            labels.append(proba.argmax(dim=1).cpu())
    seconds = time.perf_counter() - tic
    return {"predict_images_per_s": len(X) / seconds, "predict_seconds": seconds}


# ----------------------------------------------------------------------------------------
# one method, all figures
# ----------------------------------------------------------------------------------------


def benchmark(method: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    X = rng.integers(0, 256, size=(args.n, args.size, args.size, args.channels),
                     dtype=np.uint8)                                        # (N, H, W, C)

    # The loop structure of the preset, from the spec fit would build for all n images.
    probe = Setup(make_estimator(method, args), X[: min(len(X), 64)], 1)
    full_spec = make_estimator(method, args)._train_spec(
        probe.params, len(X), probe.layout)
    n_train = training_subset_size(full_spec, args.steps, len(X))
    probe = Setup(make_estimator(method, args), X[:n_train], 1)
    per_epoch = steps_per_epoch(n_train, probe.spec)
    plan = {
        "n_train": n_train,
        "steps_per_epoch": per_epoch,
        "epochs": 1 + max(1, math.ceil(args.steps / per_epoch)),
        "images_per_epoch": n_train * views_per_visit(probe.spec),
        "target_batch_size": full_spec.chunk_size,
    }
    device = probe.device

    flops = count_flops(probe, X[:n_train])
    ours, setup, estimator = run_ours(method, args, X, plan)
    prediction = predict_throughput(estimator, setup, setup.module, X)
    ours.update(prediction)
    reference = run_reference(method, args, X, plan)
    if not args.skip_reference_predict:
        reference.update(reference_predict(args, estimator, X, device))
    matmul = {"float32": matmul_rate(device, torch.float32, args.matmul_size)}
    amp_dtype = autocast_dtype(setup.spec.precision, device)
    if amp_dtype is not None:
        matmul[str(amp_dtype).replace("torch.", "")] = matmul_rate(device, amp_dtype,
                                                                   args.matmul_size)
    peak_rate = matmul[str(amp_dtype or torch.float32).replace("torch.", "")]["gflops_median"]
    achieved = flops["train_flops_per_image"] * ours["train_images_per_s"] / 1e9

    spec = asdict(setup.spec)
    spec.pop("fingerprint", None)
    return {
        "method": method, "preset": args.preset, "estimator": type(estimator).__name__,
        "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "skdccm": skdccm.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "n": args.n,
        "image_shape": [args.channels, args.size, args.size],
        "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
        "compile": bool(args.compile), "plan": plan, "spec": spec,
        "ours": ours, "reference": reference,
        "ratio_train": ours["train_images_per_s"] / reference["train_images_per_s"],
        "ratio_predict": (ours["predict_images_per_s"] / reference["predict_images_per_s"]
                          if "predict_images_per_s" in reference else None),
        "flops": flops, "matmul": matmul,
        "achieved_gflops": achieved,
        "fraction_of_matmul_rate": achieved / peak_rate,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def markdown(result: dict[str, Any]) -> str:
    """A Markdown report of one method's figures."""
    ours, ref, flops = result["ours"], result["reference"], result["flops"]
    spec, plan = result["spec"], result["plan"]
    rate = result["matmul"][result["precision"]]
    ref_predict = ref.get("predict_images_per_s")
    lines = [
        f"### {result['estimator']} (preset={result['preset']!r}) on {result['device']}"
        f" ({result['device_name']}, {result['threads']} threads)",
        "",
        f"Random uint8 images {tuple(result['image_shape'])}, n={result['n']}; "
        f"precision {result['precision']}; minibatch {spec['batch_size']}, target batch "
        f"{plan['target_batch_size']}, {spec['passes_per_chunk']} pass(es), "
        f"{spec['steps_per_batch']} draw(s) per minibatch; {ours['train_steps']} timed "
        f"steps after {plan['steps_per_epoch']} warm-up steps; reference with "
        f"{ref['num_workers']} DataLoader workers. torch {result['torch']}.",
        "",
        "| quantity | ours | reference (PIL + DataLoader) | ours / reference |",
        "| --- | ---: | ---: | ---: |",
        f"| training images/s | {ours['train_images_per_s']:,.1f} | "
        f"{ref['train_images_per_s']:,.1f} | **{result['ratio_train']:.2f}x** |",
        f"| prediction images/s | {ours['predict_images_per_s']:,.1f} | "
        + (f"{ref_predict:,.1f} | {result['ratio_predict']:.2f}x |" if ref_predict
           else "- | - |"),
        f"| peak memory, training | {_mib(ours['train_memory']['peak_bytes'])} | "
        f"{_mib(ref['train_memory']['peak_bytes'])} | |",
        f"| of which above the phase's start (working set) | "
        f"{_mib(ours['train_memory']['working_set_bytes'])} | "
        f"{_mib(ref['train_memory']['working_set_bytes'])} | |",
        f"| peak memory, prediction (working set) | "
        f"{_mib(ours['predict_memory']['peak_bytes'])} "
        f"({_mib(ours['predict_memory']['working_set_bytes'])}) | | |",
        "",
        "| compute | value |",
        "| --- | ---: |",
        f"| FLOPs per training image (forward + backward) | "
        f"{flops['train_flops_per_image'] / 1e9:,.3f} GFLOP |",
        f"| achieved training rate | {result['achieved_gflops']:,.1f} GFLOP/s |",
        f"| measured {rate['dtype']} matmul rate ({rate['size']}x{rate['size']}, median) | "
        f"{rate['gflops_median']:,.1f} GFLOP/s |",
        f"| fraction of the matmul rate | **{result['fraction_of_matmul_rate']:.0%}** |",
        "",
        f"Memory: {ours['train_memory']['method']}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=(*METHODS, "all"), default="dccm")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--n", type=int, default=2048, help="images (prediction uses all)")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--n-clusters", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps (about)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the preset's minibatch (a documented deviation)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto",
                        choices=("auto", "float32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true", help="train through torch.compile")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="DataLoader workers of the reference loop")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--skip-reference-predict", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/speed"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    methods = METHODS if args.method == "all" else (args.method,)
    if args.method == "all" and not hasattr(skdccm, "CRLCClustering"):
        methods = ("dccm",)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for method in methods:
        result = benchmark(method, args)
        report = markdown(result)
        (args.out / f"speed_{method}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"speed_{method}.md").write_text(report)
        print(report, flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
