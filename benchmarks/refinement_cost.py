"""Seconds of graph refinement (``refine="spectral"``) as the training set grows.

Refinement runs after training, on the features of every training sample: the
k-nearest-neighbour graph (brute force), the graph Laplacian's leading eigenvectors and a
logistic regression. This times each part on synthetic features shaped like a learned
embedding (K Gaussian clusters in D dimensions), with both eigensolvers where asked, and
says whether they found the same clusters (adjusted Rand index between their labels):

    OMP_NUM_THREADS=1 python benchmarks/refinement_cost.py --n-samples 5000,20000,60000 \\
        --solvers arpack,lobpcg --max-arpack 20000

Prints a Markdown table (n_samples, graph seconds, each solver's seconds, their ARI, the
linear head's seconds) and writes it to ``--out`` when given. ``spectral_labels`` itself
picks ARPACK up to ``skdccm.refinement.ARPACK_MAX_SAMPLES`` samples and LOBPCG above.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from skdccm.refinement import graph_labels, linear_head, neighbour_graph


def synthetic_features(n_samples: int, n_clusters: int, n_features: int,
                       seed: int = 0) -> np.ndarray:
    """K Gaussian clusters (centres N(0, 1), spread 0.8) in ``n_features`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, n_features))
    members = rng.integers(n_clusters, size=n_samples)
    return (centres[members] + 0.8 * rng.normal(size=(n_samples, n_features))).astype(
        np.float32)


def time_refinement(features: np.ndarray, n_clusters: int, solvers: list[str],
                    max_arpack: int) -> dict[str, float]:
    """Seconds of each part of the refinement of ``features`` (the functions
    ``spectral_labels`` calls, then ``linear_head``), with each solver in turn (ARPACK
    skipped above ``max_arpack`` samples); ``ari`` compares the first two solvers' labels."""
    row: dict[str, float] = {"n_samples": len(features)}
    tic = time.perf_counter()
    affinity = neighbour_graph(features)
    row["graph_s"] = time.perf_counter() - tic
    labels = {}
    for solver in solvers:
        if solver == "arpack" and len(features) > max_arpack:
            continue
        tic = time.perf_counter()
        labels[solver] = graph_labels(affinity, n_clusters, eigen_solver=solver,
                                      random_state=0)
        row[f"{solver}_s"] = time.perf_counter() - tic
    if len(labels) >= 2:
        first, second = list(labels.values())[:2]
        row["ari"] = adjusted_rand_score(first, second)
    tic = time.perf_counter()
    linear_head(features, next(iter(labels.values())), n_clusters)
    row["head_s"] = time.perf_counter() - tic
    return row


def markdown(rows: list[dict[str, float]], solvers: list[str]) -> str:
    header = ["n_samples", "graph s", *(f"{s} s" for s in solvers), "ARI", "head s"]
    keys = ["graph_s", *(f"{s}_s" for s in solvers), "ari", "head_s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [f"{row['n_samples']:,}"] + [
            "-" if key not in row else f"{row[key]:.3f}" if key == "ari" else f"{row[key]:.1f}"
            for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", default="5000,20000,60000",
                        help="comma-separated training set sizes")
    parser.add_argument("--n-clusters", type=int, default=10)
    parser.add_argument("--n-features", type=int, default=64)
    parser.add_argument("--solvers", default="arpack,lobpcg")
    parser.add_argument("--max-arpack", type=int, default=20000,
                        help="skip ARPACK above this many samples (it takes minutes)")
    parser.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    rows = []
    for n in (int(v) for v in args.n_samples.split(",")):
        features = synthetic_features(n, args.n_clusters, args.n_features)
        rows.append(time_refinement(features, args.n_clusters, solvers, args.max_arpack))
        print(markdown(rows[-1:], solvers).splitlines()[-1], flush=True)
    table = markdown(rows, solvers)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
