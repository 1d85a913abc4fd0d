"""Data-parallel training across processes: PyTorch DDP under ``torchrun``.

Each process ("rank") trains on its own shard of the data and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients. What the methods
compute over a whole batch stays global, through a :class:`Collective` that the training
loop hands to the objective:

- DCCM's targets (pseudo-graph, pseudo-labels, confidence) are computed over the target
  batch gathered from every rank, and the MI loss samples neighbours and negatives from the
  whole minibatch;
- CRLC's contrastive negatives and batch-marginal entropy use the gathered global batch;
- BatchNorm normalises with statistics of the global batch (:func:`global_batchnorm`).

Gathers keep the gradient (:func:`all_gather_with_grad`). Each rank's loss is its share of
the global loss, so that the mean over ranks, which is what DDP's gradient averaging
optimises, is the loss of the global batch: 2 ranks with batches of 256 train like one
process with batches of 512.

The single-process :class:`Collective` does nothing, so the objectives read the same in both
cases.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

#: Parameter values of ``strategy``.
STRATEGIES = ("auto", "single", "ddp")


class Collective:
    """Communication between ranks, as the objectives and the loop need it: one process.

    Every method is the identity here; :class:`ProcessGroupCollective` does the work.
    """

    rank = 0
    world_size = 1
    device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this rank prints, writes checkpoints and plots."""
        return self.rank == 0

    def gather(self, tensor: Tensor, groups: int = 1) -> Tensor:
        """Rows of every rank, in rank order, with gradient.

        ``groups > 1``: ``tensor`` stacks that many groups of rows (e.g. views); the result
        stacks the groups the same way, each holding the rows of every rank.
        """
        return tensor

    def local_part(self, tensor: Tensor) -> Tensor:
        """This rank's rows of a gathered tensor."""
        return tensor

    def global_index(self, index: Tensor, chunk_len: int) -> Tensor:
        """Positions of the global minibatch in the global chunk of ``chunk_len`` samples.

        ``index`` holds this rank's positions within its own part of the chunk.
        """
        return index

    def mean_(self, tensor: Tensor) -> Tensor:
        """Average over ranks, in place, without gradient (for figures and buffers)."""
        return tensor

    def max_(self, tensor: Tensor) -> Tensor:
        """Largest value over ranks, in place, without gradient."""
        return tensor

    def augmentation_generator(self, generator: torch.Generator) -> torch.Generator:
        """The generator for augmentations: per rank, so that ranks draw different views."""
        return generator

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Reseed the per-rank augmentation generator for ``epoch`` (exact resumes)."""

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """The module that computes the loss, wrapped for gradient averaging."""
        return module

    def barrier(self) -> None:
        """Wait for every rank."""

    def shard(self, n_samples: int, seed: int) -> np.ndarray | None:
        """Indices of this rank's samples (None: all of them, in input order)."""
        return None

    def gather_labels(self, labels: Tensor) -> Tensor:
        """Labels of every rank's shard, padding removed, in the shards' order."""
        return labels

    def to_input_order(self, values: np.ndarray) -> np.ndarray:
        """Put per-sample values from :meth:`gather_labels`' order back in input order."""
        return values


SINGLE_PROCESS = Collective()


class ProcessGroupCollective(Collective):
    """:class:`Collective` over an initialised ``torch.distributed`` process group.

    Parameters
    ----------
    device : torch.device
        This rank's training device (its augmentation generator lives there).
    """

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        self._generator = torch.Generator(device=device)
        self._order: np.ndarray | None = None
        self._n_samples = 0

    def gather(self, tensor: Tensor, groups: int = 1) -> Tensor:
        gathered = all_gather_with_grad(tensor)                      # (W * rows, ...)
        if groups == 1:
            return gathered
        rows = tensor.shape[0] // groups
        tail = tensor.shape[1:]
        # (W, groups, rows, ...) -> (groups, W, rows, ...): group-major, then rank order
        return (gathered.reshape(self.world_size, groups, rows, *tail).transpose(0, 1)
                .reshape(groups * self.world_size * rows, *tail))

    def local_part(self, tensor: Tensor) -> Tensor:
        return tensor.chunk(self.world_size)[self.rank]

    def global_index(self, index: Tensor, chunk_len: int) -> Tensor:
        offset = self.rank * (chunk_len // self.world_size)
        return all_gather_with_grad(index + offset)

    def mean_(self, tensor: Tensor) -> Tensor:
        with torch.no_grad():
            dist.all_reduce(tensor)
            return tensor.div_(self.world_size)

    def max_(self, tensor: Tensor) -> Tensor:
        with torch.no_grad():
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            return tensor

    def augmentation_generator(self, generator: torch.Generator) -> torch.Generator:
        return self._generator

    def start_epoch(self, epoch: int, seed: int) -> None:
        # A function of (seed, epoch, rank) only: a resumed fit draws the same views.
        self._generator.manual_seed((seed * 1_000_003 + epoch * 7919 + self.rank) % 2**63)

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers need no broadcast before each forward: global BatchNorm keeps them equal
        # on every rank. Newer PyTorch renamed the switch (the old name warns there).
        name = ("forward_sync_buffers" if "forward_sync_buffers"
                in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
        return DistributedDataParallel(module, device_ids=device_ids,
                                       find_unused_parameters=find_unused_parameters,
                                       **{name: False})

    def barrier(self) -> None:
        dist.barrier()

    def shard(self, n_samples: int, seed: int) -> np.ndarray:
        self._order, shard = shard_indices(n_samples, self.world_size, self.rank, seed)
        self._n_samples = n_samples
        return shard

    def gather_labels(self, labels: Tensor) -> Tensor:
        return all_gather_with_grad(labels)[:self._n_samples]

    def to_input_order(self, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[self._order[:self._n_samples]] = values
        return out


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward sends each rank the gradient of its own rows.

    The backward sums the gradient over ranks (``all_reduce``) before taking this rank's
    rows: every rank's loss may depend on every rank's rows. ``all_reduce`` rather than
    ``reduce_scatter``, which the gloo backend lacks.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.world = dist.get_rank(), world
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(ctx.world)[ctx.rank]


class _AllReduceSum(torch.autograd.Function):
    """``all_reduce`` (sum) whose backward is the sum of the gradients over ranks."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the gradient.

    Every rank must pass the same shape.

    Parameters
    ----------
    tensor : Tensor of shape (rows, ...)
        This rank's rows.

    Returns
    -------
    Tensor of shape (world_size * rows, ...)
        Rows of rank 0, then rank 1, and so on.
    """
    return _AllGather.apply(tensor)


def all_reduce_with_grad(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over ranks, keeping the gradient.

    Parameters
    ----------
    tensor : Tensor
        This rank's value; every rank passes the same shape.

    Returns
    -------
    Tensor
        The sum, the same on every rank. Its backward sums the gradients over ranks.
    """
    return _AllReduceSum.apply(tensor)


# ----------------------------------------------------------------------------------------
# BatchNorm over the global batch
# ----------------------------------------------------------------------------------------


class _GlobalBatchNormMixin:
    """Training-mode BatchNorm with the mean and variance of the batch of every rank.

    PyTorch's ``SyncBatchNorm`` runs on accelerators only; this one runs on any backend
    (gloo on CPU included), with one all-reduce per layer of per-channel figures. Each rank
    sends the sum of its values and the sum of squares about its own mean plus its count
    times its squared mean, in float64: the global variance then comes without the
    cancellation of E[x^2] - E[x]^2 in float32. Outside training, or in one process, it is
    the plain layer.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        channels = input.shape[1]
        x = input.float()
        count = input.numel() // channels
        local_mean = x.mean(dims)                                           # (C,)
        local_m2 = (x - local_mean.view(shape)).square().sum(dims)          # (C,)
        mean64 = local_mean.double()
        totals = all_reduce_with_grad(torch.cat([
            mean64 * count, local_m2.double() + count * mean64.square(),
            mean64.new_full((1,), count)]))                                 # (2C + 1,)
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean.square()).clamp_min(0)  # biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (self.momentum if self.momentum is not None
                          else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean.float(), factor)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).float(), factor)
        out = (x - mean.float().view(shape)) * torch.rsqrt(var.float() + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


_GLOBAL_CLASSES: dict[type, type] = {}


def _global_class(cls: type) -> type:
    if cls not in _GLOBAL_CLASSES:
        _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNormMixin, cls), {})
    return _GLOBAL_CLASSES[cls]


@contextlib.contextmanager
def global_batchnorm(module: nn.Module, collective: Collective) -> Iterator[None]:
    """Within the block, ``module``'s BatchNorm layers use global batch statistics.

    The layers' classes are swapped for the block's duration and restored after it, so the
    same parameter objects (those the optimiser holds) stay in place and the fitted network
    holds plain, picklable layers.

    Parameters
    ----------
    module : nn.Module
        The network; its ``BatchNorm1d/2d/3d`` layers are affected.
    collective : Collective
        With one process the block changes nothing.

    Yields
    ------
    None
    """
    if collective.world_size == 1:
        yield
        return
    swapped = [(m, type(m)) for m in module.modules()
               if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)]
    for m, cls in swapped:
        m.__class__ = _global_class(cls)
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


# ----------------------------------------------------------------------------------------
# set-up and sharding
# ----------------------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process launch.

    Returns
    -------
    bool
        True when ``WORLD_SIZE`` is above 1 and ``RANK`` is set, as ``torchrun`` does.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_strategy(strategy: str, device: torch.device,
                     owner: str) -> tuple[Collective, torch.device]:
    """The :class:`Collective` for ``strategy`` and this rank's device.

    ``"auto"`` trains data-parallel when a process group is initialised with more than one
    rank, or when ``torchrun`` launched several processes (the group is then initialised
    here: NCCL on CUDA, gloo otherwise); ``"ddp"`` requires one of the two; ``"single"``
    never does. Under DDP, a CUDA device becomes ``cuda:LOCAL_RANK``.

    Parameters
    ----------
    strategy : {"auto", "single", "ddp"}
        The estimators' ``strategy`` parameter.
    device : torch.device
        The resolved training device.
    owner : str
        Name for error messages.

    Returns
    -------
    collective : Collective
        :data:`SINGLE_PROCESS` or a :class:`ProcessGroupCollective`.
    device : torch.device
        This rank's device.

    Examples
    --------
    >>> import torch
    >>> from skdccm.distributed import SINGLE_PROCESS, resolve_strategy
    >>> collective, device = resolve_strategy("auto", torch.device("cpu"), "example")
    >>> collective is SINGLE_PROCESS, device    # not launched by torchrun
    (True, device(type='cpu'))
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"{owner}: strategy={strategy!r}; choose one of "
                         + ", ".join(repr(s) for s in STRATEGIES))
    if strategy == "single":
        return SINGLE_PROCESS, device
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and not launched_by_torchrun():
        if strategy == "ddp":
            raise ValueError(
                f"{owner}: strategy='ddp' needs several processes: launch the script with "
                "torchrun --nproc_per_node=N (or initialise torch.distributed yourself)")
        return SINGLE_PROCESS, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not initialised:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=30))
    if dist.get_world_size() == 1:
        return SINGLE_PROCESS, device
    return ProcessGroupCollective(device), device


def shard_indices(n_samples: int, world_size: int, rank: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's shard of a seeded random order of the samples, padded to equal shards.

    As ``DistributedSampler`` does, the order is padded with its first samples so that every
    rank holds the same number (the ranks must take the same number of steps). The padding
    sits at the end of the padded order, hence in the last shard.

    Parameters
    ----------
    n_samples, world_size, rank, seed : int
        Data size, ranks, this rank, and the seed of the order (the same on every rank).

    Returns
    -------
    order : ndarray of shape (world_size * shard,)
        The padded order; rank r holds ``order[r * shard:(r + 1) * shard]``.
    shard : ndarray of shape (shard,)
        This rank's sample indices.

    Examples
    --------
    >>> from skdccm.distributed import shard_indices
    >>> order, shard = shard_indices(5, world_size=2, rank=1, seed=0)
    >>> len(order), len(shard), sorted(set(order.tolist())) == list(range(5))
    (6, 3, True)
    """
    order = np.random.default_rng(seed).permutation(n_samples)
    per_rank = -(-n_samples // world_size)
    padded = np.resize(order, per_rank * world_size)  # repeats the order from its start
    return padded, padded[rank * per_rank:(rank + 1) * per_rank]
