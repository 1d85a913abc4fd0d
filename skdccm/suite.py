"""The suite benchmark: every method x seed on several image sets, KMeans in the same run.

``python -m skdccm benchmark --suite`` runs :func:`benchmark_suite`: each set of
:data:`SUITE_SETS` goes through :func:`skdccm.harness.benchmark_dataset` into its own folder,
and ``suite.md`` / ``suite.csv`` beside them gather, per set and method, the mean ± standard
deviation of ACC / NMI / ARI, the worst seed's ACC, the seconds per fit and each method's
worst-seed margin over KMeans. Both are rewritten after every run.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import load_dataset, subsample_indices
from .harness import (
    BenchmarkRecord,
    BenchmarkSettings,
    Method,
    Run,
    benchmark_dataset,
    describe,
    describe_dataset,
    markdown_table,
    timing_note,
)

#: Suite set -> (data set name for :func:`~skdccm.datasets.load_dataset`, images drawn).
#: The CIFAR-10 subset is drawn with ``random_state=0`` from all 60,000 images.
SUITE_SETS: dict[str, tuple[str, int | None]] = {
    "digits": ("digits", None),
    "mnist5k": ("mnist5k", None),
    "usps": ("usps", None),
    "coil20": ("coil20", None),
    "orl": ("orl", None),
    "cifar10-5k": ("cifar10", 5000),
}

#: The baseline every margin is measured against.
REFERENCE = "kmeans"

MARGIN_NOTE = ("worst-seed margin over KMeans: min over seeds s of (ACC_method(s) - "
               "ACC_KMeans(s)), KMeans(n_init=10) fitted with the same seed s in the same "
               "run on the same images; positive means the method beat KMeans on every seed.")

SUITE_COLUMNS = ("set", "method", "runs", "n_samples", "n_clusters", "acc_mean", "acc_std",
                 "nmi_mean", "nmi_std", "ari_mean", "ari_std", "acc_worst", "worst_seed",
                 "fit_seconds_mean", "margin_worst", "margin_worst_seed")


def parse_sets(text: str) -> list[str]:
    """Suite sets from ``"digits,orl"``, in the order given; unknown names are refused."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUITE_SETS]
    if unknown or not names:
        raise ValueError(f"--sets {text!r}: choose from {', '.join(SUITE_SETS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--sets lists a set twice: {text!r}")
    return names


def load_suite_set(name: str, n_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A suite set's images and labels; ``n_samples`` caps its size (drawn with seed 0).

    Raises FileNotFoundError or ImportError when its file or package is missing.
    """
    source, size = SUITE_SETS[name]
    if size is not None:  # drawn while reading: only the chosen JPEG files are decoded
        return load_dataset(source, n_samples=min(size, n_samples or size), random_state=0)
    X, y = load_dataset(source)
    if n_samples is None or n_samples >= len(X):
        return X, y
    keep = subsample_indices(len(X), n_samples, 0)
    return X[keep], y[keep]


@dataclass
class SetResult:
    """One set of the suite: its benchmark record (None when skipped) or why it was skipped."""

    name: str
    record: BenchmarkRecord | None = None
    skipped: str = ""


def set_rows(result: SetResult, methods: Sequence[Method]) -> list[dict[str, Any]]:
    """One suite.csv row per method of a set that ran."""
    record = result.record
    reference = {r.seed: r.scores["acc"] for r in record.runs
                 if r.method.name == REFERENCE and r.status == "ok"}
    rows = []
    for method in methods:
        done = [r for r in record.runs if r.method == method and r.status == "ok"]
        row: dict[str, Any] = {"set": result.name, "method": method.name, "runs": len(done),
                               "n_samples": record.dataset["n_samples"],
                               "n_clusters": record.dataset["n_clusters"]}
        for key in ("acc", "nmi", "ari"):
            values = np.array([r.scores[key] for r in done], dtype=float)
            row[key + "_mean"] = float(values.mean()) if done else math.nan
            row[key + "_std"] = float(values.std()) if done else math.nan
        worst = min(done, key=lambda r: r.scores["acc"], default=None)
        row["acc_worst"] = worst.scores["acc"] if worst else math.nan
        row["worst_seed"] = worst.seed if worst else ""
        seconds = np.array([r.fit_seconds for r in done], dtype=float)
        row["fit_seconds_mean"] = float(seconds.mean()) if done else math.nan
        margins = {r.seed: r.scores["acc"] - reference[r.seed] for r in done
                   if r.seed in reference}
        if margins and method.name != REFERENCE:
            seed = min(margins, key=margins.__getitem__)
            row["margin_worst"], row["margin_worst_seed"] = margins[seed], seed
        else:
            row["margin_worst"], row["margin_worst_seed"] = math.nan, ""
        rows.append(row)
    return rows


def _cell(value: Any, digits: int = 3, sign: bool = False) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return str(value)


def write_suite(out: Path, results: Sequence[SetResult], settings: BenchmarkSettings) -> None:
    """suite.csv (one row per set and method) and suite.md (the same, and the margins)."""
    rows = [row for result in results if result.record is not None
            for row in set_rows(result, settings.methods)]
    with open(out / "suite.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUITE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v, 6) for k, v in row.items()})
    (out / "suite.md").write_text(suite_markdown(rows, results, settings))


def suite_markdown(rows: Sequence[dict[str, Any]], results: Sequence[SetResult],
                   settings: BenchmarkSettings) -> str:
    def mean_std(row: dict[str, Any], key: str) -> str:
        if not row["runs"]:
            return "n/a"
        text = f"{row[key + '_mean']:.3f}"
        return text + f" ± {row[key + '_std']:.3f}" if row["runs"] > 1 else text

    table = markdown_table(
        ("set", "method", "ACC", "NMI", "ARI", "worst ACC (seed)", "s / fit", "runs"),
        [(r["set"], r["method"], mean_std(r, "acc"), mean_std(r, "nmi"), mean_std(r, "ari"),
          f"{r['acc_worst']:.3f} ({r['worst_seed']})" if r["runs"] else "n/a",
          _cell(r["fit_seconds_mean"], 1), r["runs"]) for r in rows])
    ran = [result.name for result in results if result.record is not None]
    deep = [m.name for m in settings.methods if m.name != REFERENCE]
    margin = {(r["set"], r["method"]): _cell(r["margin_worst"], sign=True) for r in rows}
    margins = markdown_table(("method", *ran),
                             [(name, *(margin.get((s, name), "") for s in ran)) for name in deep])
    planned = len(results) * len(settings.methods) * settings.seeds
    done = sum(len(r.record.runs) for r in results if r.record is not None)
    sets = ", ".join(f"{r.name} ({r.record.dataset['n_samples']} images "
                     f"{'x'.join(map(str, r.record.dataset['image_shape']))}, "
                     f"K={r.record.dataset['n_clusters']})" for r in results if r.record)
    skipped = "".join(f"- skipped {r.name}: {r.skipped}\n" for r in results if r.skipped)
    progress = "" if done == planned else f" ({done} runs done so far)"
    seeds = ", ".join(str(s) for s in range(settings.seeds))
    return (
        f"# Suite: {', '.join(m.name for m in settings.methods)} on {len(ran)} sets{progress}\n\n"
        f"Seeds {seeds}; mean ± standard deviation over seeds. ACC is Hungarian-matched "
        "accuracy; labels are used only for scoring. Each set's own results.md (in its "
        "folder) has memory, devices and plots.\n\n"
        f"{table}\n\n"
        "## Worst-seed margin over KMeans\n\n"
        f"The {MARGIN_NOTE}\n\n"
        f"{margins}\n\n"
        f"- sets: {sets}\n{skipped}"
        f"- command: `{settings.command}`\n"
        f"- fit seconds: {timing_note(settings.warmup)}\n"
    )


def benchmark_suite(sets: Sequence[str], settings: BenchmarkSettings, out: Path, *,
                    n_samples: int | None = None) -> list[SetResult]:
    """Run the benchmark on each suite set into ``out/SET``; write ``out/suite.{md,csv}``.

    Parameters
    ----------
    sets : sequence of str
        Names from :data:`SUITE_SETS`.
    settings : BenchmarkSettings
        Methods (KMeans among them), seeds and estimator flags, the same for every set.
    out : Path
        The suite's folder (created).
    n_samples : int, default=None
        Cap on each set's size (a random subset drawn with seed 0), for quick trials.

    Returns
    -------
    results : list of SetResult
        One per set, in order; a set whose data file (or package) is missing is skipped
        with a one-line message.
    """
    out.mkdir(parents=True, exist_ok=True)
    results: list[SetResult] = []
    for name in sets:
        try:
            images, y = load_suite_set(name, n_samples)
        except (FileNotFoundError, ImportError) as exc:
            print(f"suite: skipping {name}: {exc}", flush=True)
            results.append(SetResult(name, skipped=str(exc)))
            write_suite(out, results, settings)
            continue
        source, size = SUITE_SETS[name]
        dataset = describe_dataset(name, images, y, None, source=source, subset="all",
                                   data_seed=0, n_samples_requested=n_samples or size)
        print(f"suite: {name}: {len(images)} images {describe(images)} {images.dtype}, "
              f"K={dataset['n_clusters']}; {len(settings.methods)} methods x "
              f"{settings.seeds} seeds -> {out / name}", flush=True)
        result = SetResult(name)
        results.append(result)

        def rewrite(record: BenchmarkRecord, result: SetResult = result) -> None:
            result.record = record
            write_suite(out, results, settings)

        benchmark_dataset(images, y, dataset, settings, out / name, on_run=rewrite)
    return results


def failed_runs(results: Sequence[SetResult]) -> list[Run]:
    """Runs of the suite that raised."""
    return [run for result in results if result.record is not None
            for run in result.record.runs if run.status == "failed"]
