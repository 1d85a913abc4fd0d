"""How a consensus grows with its runs: every subset of N seeded runs, combined.

Fits an estimator (default preset unless ``--param`` says otherwise) once per seed
0..N-1 on one set of the suite and saves each run's soft assignments (``runs.npz``). Then,
for every size R in ``--sizes``, it combines every R-subset of the runs exactly as
``skdccm.ConsensusClustering`` does (:func:`skdccm.consensus.combine_assignments`) and
reports the mean, spread, worst and best ACC over the subsets beside the single runs. A few
seeds of the ``-xN`` benchmark methods are a few draws; the subsets of ten runs show the
spread a user meets, and runs of another length (``--param``) show whether cheaper runs
keep the gain. Labels are read only to score.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/consensus_subsets.py --set orl --runs 10 \\
        --sizes 1,3,5,7,10 --out benchmark_results/subsets-orl
    python benchmarks/consensus_subsets.py --set orl --sizes 5 --reuse \\
        --out benchmark_results/subsets-orl     # the saved runs again, no fit

Writes ``runs.npz`` (per run: seed, ACC, seconds, soft assignments; the labels),
``subsets.json`` and ``subsets.md``.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import time
from pathlib import Path

import numpy as np

from skdccm import CRLCClustering, DCCMClustering
from skdccm.consensus import combine_assignments
from skdccm.metrics import clustering_accuracy
from skdccm.suite import load_suite_set

ESTIMATORS = {"dccm": DCCMClustering, "crlc": CRLCClustering}

#: At most this many subsets of one size are combined (drawn at random, seeded, beyond it).
MAX_SUBSETS = 300


def subsets(n_runs: int, size: int, limit: int = MAX_SUBSETS, seed: int = 0) -> list[tuple]:
    """Every ``size``-subset of ``range(n_runs)``, or ``limit`` of them drawn at random."""
    every = list(itertools.combinations(range(n_runs), size))
    if len(every) <= limit:
        return every
    keep = np.random.default_rng(seed).choice(len(every), size=limit, replace=False)
    return [every[i] for i in sorted(keep)]


def subset_accuracies(y: np.ndarray, assignments: list[np.ndarray], size: int,
                      n_clusters: int) -> np.ndarray:
    """ACC of the consensus of each ``size``-subset of the runs (k-means seed 0)."""
    return np.array([
        clustering_accuracy(y, combine_assignments([assignments[i] for i in subset],
                                                   n_clusters, 0)[2].labels_)
        for subset in subsets(len(assignments), size)])


def summary(values: np.ndarray) -> dict[str, float]:
    """Count, mean, standard deviation, worst and best of ``values``."""
    return {"n": len(values), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def fit_runs(method: str, X: np.ndarray, y: np.ndarray, n_runs: int,
             params: dict) -> dict[str, np.ndarray]:
    """Seeds 0..n_runs-1: each run's soft assignments, ACC and seconds."""
    n_clusters = len(np.unique(y))
    proba, accs, seconds = [], [], []
    for seed in range(n_runs):
        start = time.perf_counter()
        est = ESTIMATORS[method](n_clusters=n_clusters, random_state=seed, **params).fit(X)
        seconds.append(time.perf_counter() - start)
        proba.append(est.predict_proba(X))
        accs.append(clustering_accuracy(y, est.labels_))
        print(f"run {seed}: ACC {accs[-1]:.3f}, {seconds[-1]:.0f} s", flush=True)
    return {"seeds": np.arange(n_runs), "acc": np.array(accs), "seconds": np.array(seconds),
            "proba": np.stack(proba), "y": y}


def _params(items: list[str]) -> dict:
    params = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):  # a bare string: --param backbone=mlp
            params[name] = value
    return params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="orl", help="a suite set (skdccm.suite.SUITE_SETS)")
    parser.add_argument("--method", choices=sorted(ESTIMATORS), default="dccm")
    parser.add_argument("--runs", type=int, default=10, help="runs, seeds 0..N-1")
    parser.add_argument("--sizes", default="1,3,5", help="subset sizes, comma-separated")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="an estimator parameter (Python literal), repeatable")
    parser.add_argument("--reuse", action="store_true",
                        help="combine the runs saved in --out instead of fitting")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/subsets"))
    args = parser.parse_args(argv)
    params = _params(args.param)
    sizes = [int(s) for s in args.sizes.split(",")]

    args.out.mkdir(parents=True, exist_ok=True)
    if args.reuse:  # the saved runs' own set, method and parameters
        with np.load(args.out / "runs.npz") as saved:
            runs = dict(saved)
        config = json.loads(str(runs.pop("config")))
    else:
        config = {"set": args.set, "method": args.method, "params": params}
        X, y = load_suite_set(args.set, None)
        runs = fit_runs(args.method, X, y, args.runs, params)
        np.savez_compressed(args.out / "runs.npz", config=json.dumps(config), **runs)
    if max(sizes) > len(runs["acc"]) or min(sizes) < 1:
        parser.error(f"--sizes must lie in 1..{len(runs['acc'])} (the runs)")
    y, assignments = runs["y"], list(runs["proba"])
    n_clusters = len(np.unique(y))

    rows = {size: summary(subset_accuracies(y, assignments, size, n_clusters))
            for size in sizes}
    single = summary(runs["acc"])
    seeds = ", ".join(str(seed) for seed in runs["seeds"])
    lines = [f"{config['set']}, {config['method']}, {len(runs['acc'])} runs (seeds {seeds}), "
             f"parameters {config['params'] or 'default'}: single runs "
             f"{single['mean']:.3f} ± {single['std']:.3f} (min {single['min']:.3f}), "
             f"{runs['seconds'].min():.0f}-{runs['seconds'].max():.0f} s a run", "",
             "| runs combined | subsets | consensus ACC, mean ± std | worst | best |",
             "| ---: | ---: | --- | ---: | ---: |"]
    lines += [f"| {size} | {r['n']} | {r['mean']:.3f} ± {r['std']:.3f} | {r['min']:.3f} | "
              f"{r['max']:.3f} |" for size, r in rows.items()]
    (args.out / "subsets.md").write_text("\n".join(lines) + "\n")
    (args.out / "subsets.json").write_text(json.dumps(
        {**config, "single": single, "subsets": {str(size): r for size, r in rows.items()}},
        indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
