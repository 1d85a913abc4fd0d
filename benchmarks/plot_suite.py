"""The suite benchmark's results as one figure: ACC per data set and method, every seed shown.

Reads a folder written by ``python -m skdccm benchmark --suite`` (no training):
``suite.csv`` gives the sets in order, their sizes and each method's mean and worst-seed
ACC; each set's ``SET/results.csv`` gives the per-seed values (a set without it is drawn
from ``suite.csv`` alone: mean and worst seed). Per set and method the figure shows the mean
(a bar), each seed (a dot) and the worst seed (a ringed dot); sets appear in the order of
``suite.csv``, the CIFAR-10 subset among them when the suite ran it.

Several folders may be given, for a method re-run alone after its default changed: a
method's results on a set come from the last folder that has them.

Usage::

    python benchmarks/plot_suite.py benchmarks/results/suite benchmarks/results/suite-crlc \
        --out docs/_static/suite_results.png
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, field
from pathlib import Path

#: Methods drawn, in this order, when present in suite.csv.
METHODS = ("kmeans", "dccm", "crlc")
LABELS = {"kmeans": "KMeans", "dccm": "DCCM", "crlc": "CRLC"}
COLOURS = {"kmeans": "#7f7f7f", "dccm": "#1f77b4", "crlc": "#ff7f0e"}


@dataclass
class MethodScores:
    """One method on one set: ``suite.csv``'s summary and the per-seed ACC (maybe none)."""

    mean: float
    worst: float
    worst_seed: str
    seeds: dict[int, float] = field(default_factory=dict)


@dataclass
class SetScores:
    """One set of the suite."""

    name: str
    n_samples: int
    n_clusters: int
    methods: dict[str, MethodScores] = field(default_factory=dict)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_suite(folder: Path, methods: tuple[str, ...] = METHODS) -> list[SetScores]:
    """The ACC of ``methods`` on every set of a suite folder, in ``suite.csv``'s order.

    Parameters
    ----------
    folder : Path
        A folder written by ``python -m skdccm benchmark --suite``.
    methods : tuple of str
        Method names as ``suite.csv`` spells them; absent ones are left out.

    Returns
    -------
    sets : list of SetScores
        Sets with at least one finished run of a chosen method.
    """
    summary = folder / "suite.csv"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary} not found: pass the --out folder of "
                                "`python -m skdccm benchmark --suite`")
    sets: dict[str, SetScores] = {}
    for row in _read_csv(summary):
        if row["method"] not in methods or not int(row["runs"]):
            continue
        scores = sets.setdefault(row["set"], SetScores(row["set"], int(row["n_samples"]),
                                                       int(row["n_clusters"])))
        scores.methods[row["method"]] = MethodScores(
            float(row["acc_mean"]), float(row["acc_worst"]), row["worst_seed"])
    for scores in sets.values():
        per_seed = folder / scores.name / "results.csv"
        if not per_seed.is_file():
            continue
        for run in _read_csv(per_seed):
            if run["method"] in scores.methods and run["status"] == "ok":
                scores.methods[run["method"]].seeds[int(run["seed"])] = float(run["acc"])
    return list(sets.values())


def merge_suites(suites: list[list[SetScores]]) -> list[SetScores]:
    """Several suites' sets as one: a method's scores on a set come from the last suite
    that has them; sets keep the order of their first appearance.

    Parameters
    ----------
    suites : list of list of SetScores
        As :func:`read_suite` returns them, one list per folder, oldest first.

    Returns
    -------
    sets : list of SetScores
    """
    merged: dict[str, SetScores] = {}
    for sets in suites:
        for scores in sets:
            into = merged.setdefault(scores.name, SetScores(scores.name, scores.n_samples,
                                                            scores.n_clusters))
            if (into.n_samples, into.n_clusters) != (scores.n_samples, scores.n_clusters):
                raise ValueError(f"{scores.name}: {scores.n_samples} images, K="
                                 f"{scores.n_clusters} in one folder and {into.n_samples}, "
                                 f"K={into.n_clusters} in another: not the same set")
            into.methods.update(scores.methods)
    return list(merged.values())


def plot_suite(sets: list[SetScores], methods: tuple[str, ...] = METHODS):
    """A figure of ACC per set (groups along x) and method (columns of a group).

    Parameters
    ----------
    sets : list of SetScores
        As :func:`read_suite` returns them.
    methods : tuple of str
        Column order within a group.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not sets:
        raise ValueError("the suite folder has no finished run of "
                         f"{', '.join(methods)}: nothing to plot")
    present = [m for m in methods if any(m in s.methods for s in sets)]
    width = 0.8 / len(present)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(sets) + 1.5), 4.4),
                           layout="constrained")
    for i, scores in enumerate(sets):
        for j, method in enumerate(present):
            if method not in scores.methods:
                continue
            result = scores.methods[method]
            x = i - 0.4 + width * (j + 0.5)
            colour = COLOURS.get(method, f"C{j}")
            ax.hlines(result.mean, x - 0.4 * width, x + 0.4 * width, colors=colour, lw=3,
                      gid=f"mean:{scores.name}:{method}")
            seeds = sorted(result.seeds)
            # Seeds spread a little sideways so that equal values stay countable.
            offsets = [(k - (len(seeds) - 1) / 2) * 0.5 * width / max(len(seeds), 1)
                       for k in range(len(seeds))]
            xs = dict(zip(seeds, [x + o for o in offsets], strict=True))
            ax.scatter(list(xs.values()), [result.seeds[s] for s in seeds], s=14,
                       color=colour, alpha=0.7, zorder=3, gid=f"seeds:{scores.name}:{method}")
            worst_x = xs.get(int(result.worst_seed), x) if result.worst_seed.isdigit() else x
            ax.scatter([worst_x], [result.worst], s=70, facecolors="none", edgecolors="black",
                       linewidths=1.0, zorder=4, gid=f"worst:{scores.name}:{method}")
            ax.annotate(f"{result.mean:.2f}", (x, max([result.mean, *result.seeds.values()])),
                        xytext=(0, 4), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, color=colour)
    ax.set_xticks(range(len(sets)),
                  [f"{s.name}\n{s.n_samples:,} images, K={s.n_clusters}" for s in sets],
                  fontsize=8)
    ax.set_xlim(-0.5, len(sets) - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("clustering accuracy (ACC)")
    ax.grid(axis="y", alpha=0.3)
    runs = sorted({len(r.seeds) for s in sets for r in s.methods.values()})
    seeds_text = "/".join(map(str, runs)) if runs != [0] else "?"
    ax.set_title(f"ACC per data set: mean (bar), each of {seeds_text} seeds (dot), "
                 "worst seed (ringed)", fontsize=10)
    handles = [Line2D([], [], color=COLOURS.get(m, f"C{j}"), lw=3, label=LABELS.get(m, m))
               for j, m in enumerate(present)]
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="black", ms=8,
                          label="worst seed"))
    ax.legend(handles=handles, loc="lower left", fontsize=8, ncols=len(handles))
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+",
                        help="the suite's --out folder; with several, a method's results on "
                             "a set come from the last folder that has them")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="methods to draw, in order (default: %(default)s)")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    import matplotlib

    matplotlib.use("Agg")
    sets = merge_suites([read_suite(folder, methods) for folder in args.folders])
    fig = plot_suite(sets, methods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

