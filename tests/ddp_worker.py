"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py MODE OUT_DIR``

- ``step``: one training step of each method, data-parallel: each rank takes its half of
  the same images. Rank 0 writes the gathered targets, the loss averaged over ranks and the
  gradients after DDP's averaging, for the test to compare with one process on all images.
- ``fit``: each rank fits both estimators on the same images; every rank writes its
  ``labels_`` and ``history_``, rank 0 pickles the fitted estimators.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

from skdccm import CRLCClustering, DCCMClustering
from skdccm.augment import AffineAugmentation
from skdccm.base import _with_range
from skdccm.data import ArraySource, value_range
from skdccm.distributed import global_batchnorm, resolve_strategy
from skdccm.training import ObjectiveStep

#: One step's configurations: no augmentation, so that the views are the images themselves
#: (augmentations draw from per-rank streams and are the one part that differs by design).
STEP_ESTIMATORS = {
    "dccm": lambda: DCCMClustering(n_clusters=10, augmentation="none", random_state=0),
    "crlc": lambda: CRLCClustering(n_clusters=10, augmentation="none", n_heads=2,
                                   random_state=0),
    # The instance term pairs each image with its view across ranks. An identity
    # augmentation keeps the views independent of how ranks draw them; without the MI
    # loss (M3), whose triplets are drawn after the views from the same generator.
    "dccm-instance": lambda: DCCMClustering(
        n_clusters=10, instance_weight=1.0, ablation="M3", random_state=0,
        augmentation=AffineAugmentation(rotation=0.0, shift=0.0, zoom=(1.0, 1.0),
                                        channel_shift=0.0, flip=False, multiply=1.0)),
}
STEP_IMAGES = 64
FIT_IMAGES = 301  # odd: the last shard is padded


def digits(n: int) -> np.ndarray:
    images = load_digits().images[:n]                               # (n, 8, 8) in [0, 16]
    return (images * (255 / 16)).round().astype(np.uint8)


def build(estimator, X: np.ndarray):
    """The network and objective the estimator's ``fit`` would train, seeded."""
    params = estimator._resolved_params()
    X, layout = estimator._validate_input(X, reset=True)
    source = ArraySource(X, layout, torch.device("cpu"))
    source.layout = layout = _with_range(layout, value_range(source))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module, objective = estimator._build(layout, params)
    return module.train(), objective.train(), source.gather(torch.arange(len(X)))


def one_step(estimator, collective) -> dict[str, object]:
    """Targets, loss parts and gradients of one step on the ``STEP_IMAGES`` digits, this
    rank taking its equal part of them (all of them in one process)."""
    module, objective, images = build(estimator, digits(STEP_IMAGES))
    images = images.chunk(collective.world_size)[collective.rank]
    generator = torch.Generator().manual_seed(1)
    with global_batchnorm(module, collective):
        stepper = collective.wrap(ObjectiveStep(module, objective, collective))
        with torch.no_grad():
            targets = objective.prepare(module, images, collective)
        result = stepper(images, targets, torch.arange(len(images)), generator)
        result.loss.backward()
    named = [*module.named_parameters(), *objective.named_parameters(prefix="objective")]
    out = {"loss": result.loss.detach().clone(),
           "parts": {k: v.clone() for k, v in result.parts.items()},
           "grads": {k: p.grad.clone() for k, p in named if p.grad is not None}}
    if targets is not None:
        out["targets"] = {k: v.clone() for k, v in targets.tensors.items()}
    return out


def main(mode: str, out_dir: Path) -> None:
    collective, _ = resolve_strategy("auto", torch.device("cpu"), "ddp_worker")
    rank, world = collective.rank, collective.world_size
    if mode == "step":
        results = {}
        for name, make in STEP_ESTIMATORS.items():
            result = one_step(make(), collective)
            for values in (result["parts"], {"loss": result["loss"]}):
                for value in values.values():
                    collective.mean_(value)
            results[name] = result
        if rank == 0:
            torch.save({"world_size": world, "results": results}, out_dir / "step.pt")
    elif mode == "fit":
        X = digits(FIT_IMAGES)
        for name, estimator in (
                ("dccm", DCCMClustering(n_clusters=10, max_iter=2, random_state=0)),
                ("crlc", CRLCClustering(n_clusters=10, max_iter=2, n_heads=2, random_state=0))):
            estimator.fit(X)
            record = {"labels": estimator.labels_.tolist(), "history": estimator.history_,
                      "world_size": world}
            (out_dir / f"{name}-rank{rank}.json").write_text(json.dumps(record, default=str))
            if rank == 0:
                joblib.dump(estimator, out_dir / f"{name}.joblib")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    # Tear down together: a rank destroying the group while another still writes can abort.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
