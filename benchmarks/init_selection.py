"""Does DCCM's training loss pick good initialisations? The evidence behind ``n_init``.

Fits ``DCCMClustering`` (default preset) once per seed, keeps each run's loss at every
epoch, then scores the runs against the labels. For every epoch it prints how well the loss
at that epoch ranks the runs' final accuracy (Spearman correlation; negative is good, lower
loss meaning higher ACC) and the mean ACC that keeping the lowest-loss run of every group
of ``--group`` runs would give (over all such groups of the seeds run), beside the mean of
single runs and the oracle (the best ACC of each group). Labels are read only to score.

A second table does the same for label-free scores of the trained model, computed after
training on the data without augmentation (see :func:`label_free_scores`): candidates for
choosing among initialisations once they have all finished.

Usage::

    python benchmarks/init_selection.py --dataset digits --seeds 8 \
        --out benchmark_results/init-digits

Writes ``runs.json`` (per seed: ACC, losses per epoch, seconds) and ``selection.md``.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from skdccm import DCCMClustering
from skdccm.augment import dccm_view, resolve_affine
from skdccm.datasets import load_dataset
from skdccm.metrics import clustering_accuracy


def _ranking(accs: np.ndarray, values: np.ndarray, keep: np.ndarray, group: int) -> dict:
    """Spearman(values, ACC), and the mean and lowest ACC of the run of largest ``keep``
    in every group of ``group`` runs."""
    chosen = [accs[list(g)][np.argmax(keep[list(g)])]
              for g in itertools.combinations(range(len(accs)), group)]
    return {"spearman": float(spearmanr(values, accs)[0]),
            "chosen_mean": float(np.mean(chosen)), "chosen_min": float(np.min(chosen))}


def selection_table(accs: np.ndarray, losses: np.ndarray, group: int) -> list[dict]:
    """Per epoch: Spearman(loss, ACC) and the mean ACC of the lowest-loss run per group.

    ``accs`` is ``(runs,)``, ``losses`` is ``(runs, epochs)``.
    """
    return [{"epoch": epoch + 1, **_ranking(accs, at, -at, group)}
            for epoch, at in enumerate(losses.T)]


#: Seed of the augmented views that :func:`label_free_scores` compares predictions on.
VIEW_SEED = 0


def label_free_scores(est: DCCMClustering, X: np.ndarray, n_views: int = 4) -> dict[str, float]:
    """Scores of a fitted model that use no label; higher is better for each.

    - ``confidence``: mean largest cluster probability on the data.
    - ``stability``: share of samples whose cluster on an augmented view (the fit's own
      augmentation, ``n_views`` draws with a fixed seed) is their cluster on the data.
    - ``balance``: entropy of the cluster sizes over log(K) (1 for equal sizes).
    - ``low_final_loss``: minus the training loss at the last epoch.
    """
    X = np.asarray(X)
    proba = est.predict_proba(X)
    labels = proba.argmax(axis=1)
    images = torch.as_tensor(X, dtype=torch.float32).reshape(len(X), *est.input_shape_)
    config = resolve_affine(est.augmentation, est.input_shape_)
    value_range = (float(images.min()), float(images.max()))
    generator = torch.Generator().manual_seed(VIEW_SEED)
    agreement = []
    for _ in range(n_views):
        view = dccm_view(images, config, value_range, generator).reshape(X.shape).numpy()
        if X.dtype == np.uint8:
            view = np.clip(np.rint(view), 0, 255).astype(np.uint8)
        agreement.append(np.mean(est.predict(view) == labels))
    shares = np.bincount(labels, minlength=proba.shape[1]) / len(labels)
    shares = shares[shares > 0]
    return {"confidence": float(proba.max(axis=1).mean()),
            "stability": float(np.mean(agreement)),
            "balance": float(-(shares * np.log(shares)).sum() / np.log(proba.shape[1])),
            "low_final_loss": -float(est.history_[-1]["loss"])}


def score_table(accs: np.ndarray, scores: dict[str, np.ndarray], group: int) -> list[dict]:
    """Per score: Spearman(score, ACC) and the mean ACC of the highest-scoring run per group."""
    return [{"score": name, **_ranking(accs, values, values, group)}
            for name, values in scores.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, default=8, help="runs, seeds 0..N-1")
    parser.add_argument("--group", type=int, default=3, help="n_init to simulate")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="an estimator parameter (Python literal), repeatable")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/init-selection"))
    args = parser.parse_args(argv)
    params = {}
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):  # a bare string: --param optimizer=sgd
            params[name] = value
    if args.group > args.seeds:
        parser.error("--group must not exceed --seeds")

    X, y = load_dataset(args.dataset)
    n_clusters = len(np.unique(y))
    runs = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        est = DCCMClustering(n_clusters=n_clusters, random_state=seed, **params).fit(X)
        seconds = time.perf_counter() - start
        runs.append({"seed": seed, "acc": clustering_accuracy(y, est.labels_),
                     "losses": [record["loss"] for record in est.history_],
                     "seconds": seconds, "scores": label_free_scores(est, X)})
        print(f"seed {seed}: ACC {runs[-1]['acc']:.3f}, final loss "
              f"{runs[-1]['losses'][-1]:.3f}, {runs[-1]['seconds']:.1f} s", flush=True)

    accs = np.array([run["acc"] for run in runs])
    losses = np.array([run["losses"] for run in runs])
    rows = selection_table(accs, losses, args.group)
    oracle = np.mean([accs[list(g)].max()
                      for g in itertools.combinations(range(len(accs)), args.group)])
    lines = [f"{args.dataset}, {args.seeds} seeds, parameters {params or 'default'}: mean ACC "
             f"of one run {accs.mean():.3f} (min {accs.min():.3f}); best of {args.group} by "
             f"ACC (oracle) {oracle:.3f}", "",
             f"| epoch | Spearman(loss, ACC) | ACC kept, best of {args.group} by loss "
             "(mean / min) |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['epoch']} | {r['spearman']:.2f} | {r['chosen_mean']:.3f} / "
              f"{r['chosen_min']:.3f} |" for r in rows]
    scores = {name: np.array([run["scores"][name] for run in runs]) for name in runs[0]["scores"]}
    lines += ["", f"| score after training | Spearman(score, ACC) | ACC kept, best of "
              f"{args.group} by score (mean / min) |", "| --- | ---: | ---: |"]
    lines += [f"| {r['score']} | {r['spearman']:.2f} | {r['chosen_mean']:.3f} / "
              f"{r['chosen_min']:.3f} |" for r in score_table(accs, scores, args.group)]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
    (args.out / "selection.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
