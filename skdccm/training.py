"""The training loop shared by every estimator: epochs, precision, history, checkpoints.

It knows no scikit-learn. An *objective* (an ``nn.Module`` holding the method's own trainable
parts, such as DCCM's discriminator) supplies two things:

- ``prepare(module, images, collective) -> targets``: computed without gradient on
  un-augmented images of a *chunk* (DCCM's target batch), or None;
- ``step(module, images, targets, index, generator, collective) -> StepResult``: the loss of
  one minibatch (positions ``index`` within the chunk), with its named parts;

and optionally ``batchnorm_input(images, generator) -> Tensor``: what the network sees in
training for a batch of un-augmented images, from which BatchNorm statistics are
re-estimated after training (without it, the images themselves).

Under data-parallel training (:mod:`skdccm.distributed`) each rank runs this same loop on its
shard, with chunks and minibatches of ``size // world_size``; the ``collective`` lets the
objective gather what must be global, and the epoch's figures are averaged over ranks so
that every rank keeps the same history.

One epoch visits every sample once in chunks of ``chunk_size``; each chunk is visited
``passes_per_chunk`` times in shuffled minibatches, with ``steps_per_batch`` optimiser steps
(fresh augmentations) per minibatch. DCCM's released loop is 1000 / 10 / 32 / 2; a contrastive
method uses ``chunk_size == batch_size`` and one pass.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .budget import TimeBudget, affordable_epochs, seconds_per_epoch, whole
from .data import ArraySource, even_splits, shuffled_batches, to_device
from .distributed import SINGLE_PROCESS, Collective, global_batchnorm

logger = logging.getLogger("skdccm")

CHECKPOINT_FORMAT = "skdccm-checkpoint"
CHECKPOINT_NAME = "checkpoint.pt"


class StepResult(NamedTuple):
    """What an objective returns for one minibatch."""

    loss: Tensor                   # () the total, to minimise
    parts: dict[str, Tensor]       # name -> () detached or not; averaged per epoch for history
    labels: Tensor | None = None   # (n,) cluster of each sample, if the step computed it


class ChunkTargets(NamedTuple):
    """What ``prepare`` returns: per-chunk tensors the step indexes, plus figures to log."""

    tensors: dict[str, Tensor]
    labels: Tensor | None          # (N_chunk,) current cluster of each sample
    stats: dict[str, Tensor]       # name -> () figure averaged over chunks for history


@dataclass(frozen=True)
class TrainSpec:
    """Everything the loop needs, resolved and validated by the estimator.

    ``channels_last``: train convolutions in the channels-last memory format (None: on CUDA
    when the network has 2-D convolutions, where cuDNN's tensor-core kernels run natively in
    that layout). The network is returned in the standard layout.
    """

    max_epochs: int
    batch_size: int
    chunk_size: int
    passes_per_chunk: int = 1
    steps_per_batch: int = 1
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_schedule: str = "constant"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool | None = None
    tol: float = 0.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = False
    verbose: int = 0
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    module: nn.Module
    objective: nn.Module
    history: list[dict[str, Any]]
    n_epochs: int
    interrupted: bool = False
    stopped_by: str | None = None
    #: After ``stop_after``: the loop's state (optimiser, generators, epoch, history), from
    #: which ``train(..., state=...)`` continues the same run.
    state: dict[str, Any] | None = None


class EarlyStop(Exception):
    """Raise from a callback to end training after the current epoch."""


# ----------------------------------------------------------------------------------------
# set-up helpers
# ----------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; other values go to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ('auto', 'cpu', 'cuda', "
                         "'cuda:1', 'mps')") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='auto'")
    return resolved


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32)."""
    if precision == "float32" or device.type != "cuda":
        if precision in ("bf16", "fp16") and device.type == "cpu":
            return torch.bfloat16 if precision == "bf16" else None
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def use_channels_last(requested: bool | None, module: nn.Module,
                      device: torch.device) -> bool:
    """Whether to train ``module`` in the channels-last memory format.

    ``requested`` True or False decides; None picks it on CUDA for networks with 2-D
    convolutions (cuDNN runs them natively in that layout, with no transposes around its
    tensor-core kernels). On CPU the measured effect was within noise, so it stays off.
    """
    if requested is not None:
        return bool(requested)
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in module.modules())


#: Layers whose parameters are per-channel scales and shifts: never weight-decayed.
NORMALISATION_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def weight_decay_split(modules: Sequence[nn.Module]) -> tuple[list[nn.Parameter],
                                                              list[nn.Parameter]]:
    """The trainable parameters of ``modules``, as (decayed, not decayed).

    Biases and normalisation layers' parameters are not decayed, decided by name and layer
    type rather than by shape: CRLC's batched sub-head biases are ``(H, 1, D)`` tensors,
    which a rule such as ``ndim > 1`` would take for weight matrices. Each parameter is
    listed once, in ``parameters()`` order.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for root in modules:
        for layer in root.modules():
            for name, param in layer.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                if isinstance(layer, NORMALISATION_LAYERS) or name.endswith("bias"):
                    no_decay.append(param)
                else:
                    decay.append(param)
    return decay, no_decay


def make_optimizer(modules: Sequence[nn.Module], spec: TrainSpec) -> torch.optim.Optimizer:
    """RMSprop (DCCM paper: smoothing 0.9), Adam/AdamW or SGD with momentum, over the
    trainable parameters of ``modules``.

    Weight decay, when set, applies to weight matrices and kernels only, not to biases or
    normalisation parameters (:func:`weight_decay_split`).
    """
    decay, no_decay = weight_decay_split(modules)
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    lr = spec.learning_rate
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; choose 'rmsprop', 'adam', "
                     "'adamw' or 'sgd'")


def steps_per_epoch(n_samples: int, spec: TrainSpec) -> int:
    """Optimiser steps in one epoch (the loop's sizes are deterministic)."""
    total = 0
    for chunk in even_splits(torch.empty(n_samples), spec.chunk_size):
        total += len(even_splits(chunk, spec.batch_size))
    return total * spec.passes_per_chunk * spec.steps_per_batch


def learning_rate_at(step: int, total_steps: int, spec: TrainSpec) -> float:
    """Learning rate of optimiser step ``step``: constant, or cosine decay to zero."""
    if spec.lr_schedule == "constant":
        return spec.learning_rate
    if spec.lr_schedule == "cosine":
        return spec.learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"unknown lr_schedule {spec.lr_schedule!r}; choose 'constant' or 'cosine'")


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it belongs to this fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or a pickle with code in it
        # torch's own message suggests weights_only=False, which would run the file's
        # code: keep it out of ours (it stays on the chained exception).
        raise ValueError(
            f"{path} is not a readable skdccm checkpoint ({type(exc).__name__}): it is "
            "truncated, corrupted or holds more than tensors and plain values, and was not "
            "loaded. Delete it or point checkpoint_dir elsewhere"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an skdccm checkpoint")
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path} was written by a different configuration ({state.get('fingerprint')}) "
            f"than this fit ({fingerprint}); use another checkpoint_dir or resume=False"
        )
    return state


# ----------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------


def format_record(record: dict[str, Any], max_epochs: int) -> str:
    """One human-readable line for an epoch's record."""
    parts = " ".join(f"{k}={v:.4f}" for k, v in record["loss_parts"].items())
    text = f"epoch {record['epoch']:>{len(str(max_epochs))}}/{max_epochs} loss={record['loss']:.4f}"
    if parts:
        text += f" ({parts})"
    for key in ("confident", "graph_positive"):
        if key in record:
            text += f" {key}={record[key]:.1%}"
    if "cluster_min" in record:
        text += f" clusters={record['cluster_min']:.1%}..{record['cluster_max']:.1%}"
    if "label_change" in record:
        text += f" changed={record['label_change']:.1%}"
    return text + f" [{record['seconds']:.1f}s]"


def report(record: dict[str, Any], spec: TrainSpec, last: bool) -> None:
    line = format_record(record, record["planned_epochs"])
    logger.info(line)
    if spec.verbose >= 2:
        print(line, flush=True)
    elif spec.verbose == 1:
        # One updating line: works in terminals and in Jupyter, which both honour \r.
        sys.stdout.write("\r" + line.ljust(120)[:160] + ("\n" if last else ""))
        sys.stdout.flush()


# ----------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------


def train(
    module: nn.Module,
    objective: nn.Module,
    data: ArraySource,
    spec: TrainSpec,
    generator: torch.Generator,
    device_generator: torch.Generator,
    callbacks: Sequence[Callable[..., Any]] = (),
    owner: Any = None,
    collective: Collective = SINGLE_PROCESS,
    stop_after: int | None = None,
    state: dict[str, Any] | None = None,
    budget: TimeBudget | None = None,
    plan: Callable[[int], int] = whole,
) -> TrainResult:
    """Train ``module`` (and the ``objective``'s own parameters) on ``data``.

    Parameters
    ----------
    module, objective : nn.Module
        The network to fit and the method's objective, both already on ``data.device``.
    data : ArraySource
        Samples served as float32 batches on the device.
    spec : TrainSpec
        Sizes, optimiser, precision, stopping, checkpoints, verbosity.
    generator : torch.Generator
        CPU generator for shuffling.
    device_generator : torch.Generator
        Generator on ``data.device`` for augmentations and sampling.
    callbacks : sequence of callables
        Called as ``cb(owner, record)`` (or ``cb.on_epoch_end(owner, record)``) after each
        epoch; returning True or raising :class:`EarlyStop` ends training.
    owner : object
        Passed to callbacks (the estimator).
    collective : Collective
        Data-parallel communication (:mod:`skdccm.distributed`); one process by default.
        ``data`` is then this rank's shard and ``spec``'s sizes are global.
    stop_after : int, optional
        Pause after this many epochs (the schedule still spans ``spec.max_epochs``) and
        return the loop's state in ``TrainResult.state``, with the module left in training
        mode and its BatchNorm statistics as they are.
    state : dict, optional
        A ``TrainResult.state`` of this module and objective: continue that run. Takes
        precedence over a checkpoint.
    budget : TimeBudget, optional
        The fit's clock and time budget (:mod:`skdccm.budget`); a new, unlimited one by
        default. With a limit, the run plans its epochs (and its learning-rate schedule)
        to end inside the budget and stops when the plan is reached; a run always trains at
        least one epoch, unless it continues one that has some and no time is left.
    plan : callable, default=skdccm.budget.whole
        Maps the epochs the rest of the budget affords (this run's epochs so far included)
        to the epochs this run plans, leaving later runs of the fit their share.

    Returns
    -------
    TrainResult
        The trained module (the last complete epoch's weights if interrupted), history and
        epoch count.
    """
    with global_batchnorm(module, collective):
        return _train(module, objective, data, _local_sizes(spec, collective.world_size),
                      generator, device_generator, callbacks, owner, collective,
                      stop_after, state, budget, plan)


def _local_sizes(spec: TrainSpec, world_size: int) -> TrainSpec:
    """Each rank's share of the global chunk and minibatch sizes."""
    if world_size == 1:
        return spec
    return replace(spec, batch_size=max(1, spec.batch_size // world_size),
                   chunk_size=max(1, spec.chunk_size // world_size))


class ObjectiveStep(nn.Module):
    """The network and the objective as one module, so that DDP sees every parameter that
    a step trains (the objective's own, such as DCCM's discriminator, included)."""

    def __init__(self, module: nn.Module, objective: nn.Module,
                 collective: Collective) -> None:
        super().__init__()
        self.module = module
        self.objective = objective
        self.collective = collective

    def forward(self, images: Tensor, targets: Any, index: Tensor,
                generator: torch.Generator, partners: Tensor | None = None) -> StepResult:
        # Only objectives trained with neighbours are asked to take them.
        extra = {} if partners is None else {"partners": partners}
        return self.objective.step(self.module, images, targets, index, generator,
                                   self.collective, **extra)


def _train(module: nn.Module, objective: nn.Module, data: ArraySource, spec: TrainSpec,
           generator: torch.Generator, device_generator: torch.Generator,
           callbacks: Sequence[Callable[..., Any]], owner: Any,
           collective: Collective, stop_after: int | None = None,
           state: dict[str, Any] | None = None, budget: TimeBudget | None = None,
           plan: Callable[[int], int] = whole) -> TrainResult:
    budget = budget or TimeBudget()  # unlimited: the clock still gives history's "elapsed"
    device = data.device
    n = len(data)
    optimizer = make_optimizer((module, objective), spec)
    per_epoch = steps_per_epoch(n, spec)
    learning_rate_at(0, per_epoch * spec.max_epochs, spec)  # fail early on an unknown schedule
    amp_dtype = autocast_dtype(spec.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    channels_last = use_channels_last(spec.channels_last, module, device)
    if channels_last:
        module.to(memory_format=torch.channels_last)  # in place: same Parameter objects
    forward_module = torch.compile(module) if spec.compile else module
    # A stage that trains only some heads (CRLC's pre-training) leaves parameters unused.
    stepper = collective.wrap(ObjectiveStep(forward_module, objective, collective),
                              find_unused_parameters=not getattr(objective, "clustering", True))
    n_clusters = int(getattr(objective, "n_clusters", 0))
    lr = spec.learning_rate

    history: list[dict[str, Any]] = []
    start_epoch = 0
    previous_labels: Tensor | None = None
    # The epochs this run plans: max_epochs until the budget says otherwise. A run continued
    # within the same fit (DCCM's kept trial) keeps the plan its schedule followed so far.
    planned = spec.max_epochs
    if budget.limited and state is not None and state["history"]:
        planned = min(planned, state["history"][-1].get("planned_epochs", planned))
    ckpt_path = Path(spec.checkpoint_dir) / CHECKPOINT_NAME if spec.checkpoint_dir else None
    if state is None and spec.resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, spec.fingerprint)
        logger.info("resuming from %s after epoch %d", ckpt_path, int(state["epoch"]))
    if state is not None:
        module.load_state_dict(state["module"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"])
        device_generator.set_state(state["device_rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        previous_labels = state["labels"].to(device)

    last_good = _snapshot(module, objective)
    interrupted, stopped_by = False, None
    end_epoch = spec.max_epochs if stop_after is None else min(stop_after, spec.max_epochs)
    run_start = _elapsed_over_ranks(budget, collective)
    epoch_ends: list[float] = []
    if budget.limited and start_epoch > 0 and run_start >= budget.seconds:
        end_epoch = start_epoch  # a continued run with no time left: keep what it has
        stopped_by = _cut_short(budget, start_epoch, spec, run_start, collective)
    step = start_epoch * per_epoch
    epoch = start_epoch
    module.train()
    objective.train()
    try:
        for epoch in range(start_epoch, end_epoch):
            tic = time.perf_counter()
            collective.start_epoch(epoch, device_generator.initial_seed())
            sums: dict[str, Tensor] = {}
            first_bad: dict[str, Tensor] = {}   # name -> first step where it was not finite
            stat_sums: dict[str, Tensor] = {}
            labels = torch.full((n,), -1, dtype=torch.long, device=device)
            n_steps = n_chunks = 0
            order = torch.randperm(n, generator=generator)
            for chunk in even_splits(order, spec.chunk_size):
                # Index tensors reach the device once per chunk and pass, queued without a
                # host sync: the steps below never wait for the device.
                chunk_dev = to_device(chunk, device)                         # (Nc,)
                images = data.gather(chunk)                                  # (Nc, C, H, W)
                with torch.no_grad(), _autocast(device, amp_dtype):
                    targets = objective.prepare(forward_module, images, collective)
                if targets is not None:
                    _accumulate(stat_sums, targets.stats)
                    if targets.labels is not None:
                        labels[chunk_dev] = targets.labels
                n_chunks += 1
                for pass_ in range(spec.passes_per_chunk):
                    within = to_device(torch.randperm(len(chunk), generator=generator), device)
                    for batch_dev in even_splits(within, spec.batch_size):
                        for _ in range(spec.steps_per_batch):
                            lr = learning_rate_at(step, per_epoch * planned, spec)
                            for group in optimizer.param_groups:
                                group["lr"] = lr
                            partners = _draw_partners(data, chunk_dev[batch_dev],
                                                      device_generator)
                            with _autocast(device, amp_dtype):
                                result = stepper(images[batch_dev], targets, batch_dev,
                                                 device_generator, partners)
                            optimizer.zero_grad(set_to_none=True)
                            scaler.scale(result.loss).backward()
                            scaler.step(optimizer)
                            scaler.update()
                            _accumulate(sums, {"loss": result.loss, **result.parts})
                            _note_non_finite(first_bad, result.parts, n_steps)
                            if pass_ == 0 and result.labels is not None:
                                labels[chunk_dev[batch_dev]] = result.labels
                            n_steps += 1
                            step += 1

            # Epoch end: the one place where figures leave the device (and ranks meet).
            _mean_over_ranks(collective, sums, stat_sums)
            labels = collective.gather_labels(labels)
            # The epoch ends when its slowest rank is done (and so do the budget's readings:
            # every rank must plan alike).
            seconds, elapsed = collective.max_(torch.tensor(
                [time.perf_counter() - tic, budget.elapsed()], dtype=torch.float64,
                device=collective.device)).tolist()
            if budget.limited:
                epoch_ends.append(elapsed)
                affordable = affordable_epochs(budget.available(elapsed),
                                               seconds_per_epoch(run_start, epoch_ends))
                planned = min(spec.max_epochs, max(epoch + 1, plan(epoch + 1 + affordable)))
            record = _epoch_record(epoch, sums, n_steps, stat_sums, n_chunks, labels,
                                   previous_labels, n_clusters, lr, seconds)
            record.update(elapsed=elapsed, planned_epochs=planned)
            _check_finite(record, first_bad)
            previous_labels = labels
            history.append(record)
            _snapshot_into(last_good, module, objective)
            is_last = epoch + 1 == end_epoch
            stop = _tol_reached(record, spec.tol)
            if stop:
                stopped_by = f"label change {record['label_change']:.4%} <= tol={spec.tol}"
            if _run_callbacks(callbacks, owner, record, collective):
                stop, stopped_by = True, "callback"
            out_of_time = planned == epoch + 1 < spec.max_epochs
            if collective.is_main:
                report(record, spec, last=is_last or stop or out_of_time)
            if out_of_time and not stop:
                stop = True
                stopped_by = _cut_short(budget, epoch + 1, spec, elapsed, collective)
            if collective.is_main and ckpt_path is not None and (
                    (epoch + 1) % spec.checkpoint_every == 0 or is_last or stop):
                save_checkpoint(ckpt_path, _loop_state(spec, epoch, module, objective,
                                                       optimizer, generator,
                                                       device_generator, history, labels))
            if stop:
                break
    except KeyboardInterrupt:
        interrupted = True
        _restore(module, objective, last_good)
        if spec.verbose == 1:
            sys.stdout.write("\n")
        warnings.warn(
            f"training interrupted during epoch {epoch + 1}; keeping the weights of the last "
            f"complete epoch ({len(history)})", RuntimeWarning, stacklevel=3,
        )
    if channels_last:
        module.to(memory_format=torch.contiguous_format)
    if stop_after is not None and not interrupted and stopped_by is None and history \
            and len(history) < spec.max_epochs:
        # A pause, not an end: the caller may continue this run from its state.
        paused = _loop_state(spec, len(history) - 1, module, objective, optimizer, generator,
                             device_generator, history, previous_labels)
        return TrainResult(module, objective, history, len(history), state=paused)
    # The pass that ends the run, timed: later runs leave time for the fit's final passes.
    pass_start = _elapsed_over_ranks(budget, collective) if budget.limited else 0.0
    finish_training(module, objective, data, spec.batch_size)
    if budget.limited:
        budget.pass_seconds = _elapsed_over_ranks(budget, collective) - pass_start
    return TrainResult(module, objective, history, len(history), interrupted, stopped_by)


def _draw_partners(data: ArraySource, rows: Tensor,
                   generator: torch.Generator) -> Tensor | None:
    """For each sample at ``rows``, itself or one of its mined neighbours, drawn uniformly
    (None when the data has no neighbours)."""
    if data.neighbours is None:
        return None
    column = torch.randint(data.neighbours.shape[1], (rows.shape[0],), generator=generator,
                           device=data.neighbours.device)
    return data.gather(data.neighbours[rows, column])

def _elapsed_over_ranks(budget: TimeBudget, collective: Collective) -> float:
    """The budget's elapsed seconds, the largest over ranks (so that all plan alike)."""
    if not budget.limited or collective.world_size == 1:
        return budget.elapsed()
    return float(collective.max_(torch.tensor([budget.elapsed()], dtype=torch.float64,
                                              device=collective.device)))


def _cut_short(budget: TimeBudget, epochs: int, spec: TrainSpec, elapsed: float,
               collective: Collective) -> str:
    """Note that the budget ended a run after ``epochs`` epochs; say so; the reason."""
    budget.cut_short = True
    reason = f"max_time={budget.seconds:g} s"
    line = (f"{reason}: training stopped after {epochs} of {spec.max_epochs} epochs, "
            f"{elapsed:.1f} s into the fit")
    logger.info(line)
    if spec.verbose and collective.is_main:
        print(line, flush=True)
    return reason


def finish_training(module: nn.Module, objective: nn.Module, data: ArraySource,
                    batch_size: int) -> None:
    """What ends every run: BatchNorm statistics of the final weights (on the objective's
    ``batchnorm_input`` where it has one), then both modules in eval mode."""
    refresh_batchnorm_statistics(module, data, batch_size,
                                 getattr(objective, "batchnorm_input", None))
    module.eval()
    objective.eval()


def _loop_state(spec: TrainSpec, epoch: int, module: nn.Module, objective: nn.Module,
                optimizer: torch.optim.Optimizer, generator: torch.Generator,
                device_generator: torch.Generator, history: list[dict[str, Any]],
                labels: Tensor) -> dict[str, Any]:
    """What continues a run after ``epoch`` (0-based): a checkpoint's contents."""
    return {
        "format": CHECKPOINT_FORMAT, "version": 1, "fingerprint": spec.fingerprint,
        "epoch": epoch + 1, "module": module.state_dict(),
        "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": generator.get_state(), "device_rng": device_generator.get_state(),
        "history": list(history), "labels": labels.cpu(),
    }


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _accumulate(sums: dict[str, Tensor], values: dict[str, Tensor]) -> None:
    for key, value in values.items():
        value = value.detach().float()
        sums[key] = sums[key] + value if key in sums else value


def _snapshot(module: nn.Module, objective: nn.Module) -> tuple[dict, dict]:
    return (copy.deepcopy(module.state_dict()), copy.deepcopy(objective.state_dict()))


def _snapshot_into(snapshot: tuple[dict, dict], module: nn.Module, objective: nn.Module,
                   ) -> None:
    """Overwrite ``snapshot`` with the current weights, in place.

    Copying into the existing tensors keeps one snapshot alive instead of two while the
    new one is taken (a whole model's worth of memory at every epoch's end).
    """
    for saved, current in zip(snapshot, (module.state_dict(), objective.state_dict()),
                              strict=True):
        for key, value in current.items():
            old = saved.get(key)
            if (isinstance(value, Tensor) and isinstance(old, Tensor)
                    and old.shape == value.shape and old.dtype == value.dtype
                    and old.device == value.device):
                old.copy_(value)
            else:
                saved[key] = copy.deepcopy(value)
        for key in set(saved) - set(current):
            del saved[key]


def _restore(module: nn.Module, objective: nn.Module, snapshot: tuple[dict, dict]) -> None:
    module.load_state_dict(snapshot[0])
    objective.load_state_dict(snapshot[1])


def _epoch_record(epoch: int, sums: dict[str, Tensor], n_steps: int,
                  stat_sums: dict[str, Tensor], n_chunks: int, labels: Tensor,
                  previous: Tensor | None, n_clusters: int, lr: float,
                  seconds: float) -> dict[str, Any]:
    means = {k: float(v) / max(n_steps, 1) for k, v in sums.items()}
    record: dict[str, Any] = {"epoch": epoch + 1, "loss": means.pop("loss")}
    record["loss_parts"] = means
    record.update({k: float(v) / max(n_chunks, 1) for k, v in stat_sums.items()})
    known = labels >= 0
    if bool(known.any()):
        counts = torch.bincount(labels[known], minlength=n_clusters).tolist()
        total = sum(counts)
        record["cluster_sizes"] = counts
        record["cluster_min"] = min(counts) / total if len(counts) else 0.0
        record["cluster_max"] = max(counts) / total
        if previous is not None:
            both = known & (previous >= 0)
            record["label_change"] = float((labels[both] != previous[both]).float().mean())
    record["lr"] = lr
    record["seconds"] = seconds
    return record


def _note_non_finite(first_bad: dict[str, Tensor], parts: dict[str, Tensor], step: int) -> None:
    """Keep, per loss part, the first step of the epoch at which it was not finite.

    Device-side (no synchronisation per step): once one part is NaN the weights are, and
    every part follows, so only the first step tells which part diverged.
    """
    never = torch.iinfo(torch.int64).max
    for key, value in parts.items():
        step_if_bad = torch.where(torch.isfinite(value.detach()), never, step)
        first_bad[key] = (torch.minimum(first_bad[key], step_if_bad) if key in first_bad
                          else step_if_bad)


def _check_finite(record: dict[str, Any], first_bad: dict[str, Tensor] | None = None) -> None:
    bad = [k for k, v in record["loss_parts"].items() if not math.isfinite(v)]
    if bad and first_bad:
        steps = {k: int(first_bad[k]) for k in bad if k in first_bad}
        if steps:
            bad = [k for k, step in steps.items() if step == min(steps.values())]
    if bad or not math.isfinite(record["loss"]):
        raise FloatingPointError(
            f"training diverged in epoch {record['epoch']}: non-finite loss "
            f"({', '.join(bad) or 'total'}). Lower learning_rate, use precision='float32', or "
            "check the input for extreme values; the last checkpoint was left untouched"
        )


def _tol_reached(record: dict[str, Any], tol: float) -> bool:
    return tol > 0 and record.get("label_change", math.inf) <= tol


def _run_callbacks(callbacks: Sequence[Any], owner: Any, record: dict[str, Any],
                   collective: Collective) -> bool:
    stop = False
    for callback in callbacks:
        hook = getattr(callback, "on_epoch_end", callback)
        try:
            stop = bool(hook(owner, record)) or stop
        except EarlyStop:
            stop = True
    # One rank's request stops them all (none may be left waiting alone).
    return bool(collective.max_(torch.tensor([float(stop)], device=collective.device)))


def _mean_over_ranks(collective: Collective, *sums: dict[str, Tensor]) -> None:
    """Average each epoch sum over ranks, in place: one all-reduce per dict."""
    for values in sums:
        if values:
            keys = sorted(values)
            stacked = collective.mean_(torch.stack([values[k].float() for k in keys]))
            values.update(zip(keys, stacked.unbind(), strict=True))


def refresh_batchnorm_statistics(
    module: nn.Module, data: ArraySource, batch_size: int,
    views: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> None:
    """Re-estimate BatchNorm running statistics with the final weights, without gradient.

    Running statistics are exponential averages over training steps and lag behind the
    weights; after a short fit they describe an earlier network, and eval-mode predictions
    can collapse into a few clusters. One pass over the training data in batches of the
    training size, with a cumulative average, gives statistics of the network as it is.
    The batches are drawn at random (with a fixed seed), like the training batches: over
    data stored in class order, consecutive batches would hold one class each, and their
    variances would miss the spread between classes. ``views`` maps each batch to what the
    network was trained on (a contrastive method's augmented views, drawn from a generator
    with a fixed seed): statistics of clean images would not match a network that never saw
    any. Layers that are frozen (affine weight without gradient) keep theirs.
    """
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
             and (m.weight is None or m.weight.requires_grad)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    was_training = module.training
    module.train()
    generator = torch.Generator(device=data.device).manual_seed(0)
    with torch.no_grad():
        for index in shuffled_batches(len(data), batch_size):
            if len(index) > 1:
                images = data.gather(index)
                module(images if views is None else views(images, generator))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.train(was_training)
