"""Quality benchmarks of DESIGN.md section 7: each deep method beside KMeans, 3 seeds.

A thin wrapper over ``python -m skdccm benchmark``: it runs the named suites, each into
its own folder, and checks the results against the targets (ACC goal and time budget).

Usage::

    python benchmarks/quality.py digits mnist5k usps              # 2 CPU cores
    python benchmarks/quality.py mnist cifar10 -- --device cuda   # one GPU
    python benchmarks/quality.py digits --out /tmp/bench -- --max-iter 5

Arguments after ``--`` are passed to ``skdccm benchmark`` unchanged (they override the
suite's own flags where they repeat them). Each suite writes results.md, results.csv,
summary.csv, config.json, plots and targets.md under ``OUT/SUITE`` (default OUT:
``benchmark_results``, which git ignores).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from skdccm.cli import main as skdccm_main

#: suite -> ``skdccm benchmark`` flags
SUITES: dict[str, list[str]] = {
    "digits": ["--dataset", "digits", "--methods", "dccm,crlc,kmeans,agglomerative"],
    "mnist5k": ["--dataset", "mnist5k", "--methods", "dccm,crlc,kmeans,agglomerative"],
    "usps": ["--dataset", "usps", "--methods", "dccm,crlc,kmeans,agglomerative"],
    "mnist": ["--dataset", "mnist", "--methods", "dccm,crlc,kmeans"],
    "cifar10": ["--dataset", "cifar10", "--methods", "dccm,crlc,kmeans"],
    # The paper's Table 3 (M1..M4); on digits so that it runs on a CPU.
    "digits-ablation": ["--dataset", "digits", "--methods", "dccm,kmeans", "--ablation"],
}

#: suite -> (method family -> ACC goal, fit-time budget in seconds, where) from DESIGN.md 7
TARGETS: dict[str, tuple[dict[str, float], float, str]] = {
    "digits": ({"dccm": 0.95, "crlc": 0.95}, 60, "2 CPU cores"),
    "mnist5k": ({"dccm": 0.95, "crlc": 0.95}, 300, "2 CPU cores"),
    "usps": ({"dccm": 0.95, "crlc": 0.95}, 600, "2 CPU cores"),
    "mnist": ({"dccm": 0.97, "crlc": 0.98}, 300, "one GPU"),
    "cifar10": ({"dccm": 0.65, "crlc": 0.80}, 600, "one H100"),
}


def check_targets(suite: str, folder: Path) -> str:
    """A Markdown table: each deep method's mean ACC and fit time against the suite's goals."""
    goals, budget, where = TARGETS[suite]
    with open(folder / "summary.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))
    lines = [f"# Targets for {suite} ({where}, fit within {budget:g} s)", "",
             "| method | ACC mean | goal | fit s mean | budget | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in summary:
        family = row["method"].split("-")[0]
        if family not in goals:
            continue
        acc = float(row["acc_mean"]) if row["acc_mean"] else math.nan
        seconds = float(row["fit_seconds_mean"]) if row["fit_seconds_mean"] else math.nan
        met = acc >= goals[family] and seconds <= budget
        lines.append(f"| {row['method']} | {acc:.3f} | {goals[family]:.2f} | {seconds:.1f} | "
                     f"{budget:g} | {'met' if met else 'NOT met'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="+", choices=sorted(SUITES))
    parser.add_argument("--out", default="benchmark_results",
                        help="parent folder of the suites' folders (default: "
                             "benchmark_results, git-ignored)")
    parser.add_argument("--seeds", default="3", help="seeds per method (default: 3)")
    args = parser.parse_args(argv)
    status = 0
    for suite in args.suites:
        folder = Path(args.out) / suite
        print(f"=== {suite} -> {folder}", flush=True)
        rc = skdccm_main(["benchmark", *SUITES[suite], "--seeds", args.seeds,
                          "--out", str(folder), *extra])
        status = max(status, rc)
        if suite in TARGETS and (folder / "summary.csv").exists():
            report = check_targets(suite, folder)
            (folder / "targets.md").write_text(report)
            print(report, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
