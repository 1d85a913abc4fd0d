"""The command line: ``python -m skdccm COMMAND`` (or the ``skdccm`` console script).

Commands
--------
``demo``
    DCCM (and CRLC, when available) beside KMeans on scikit-learn's bundled digits; no setup.
``benchmark``
    Several methods x several seeds on a data set; writes ``results.md``, ``results.csv``,
    ``summary.csv``, ``config.json`` and plots (confusion matrices, learning curves, 2-D
    embeddings).
``cluster``
    Cluster a folder of images; writes ``clusters.csv`` and one contact sheet per cluster.
``fit``
    Fit one estimator on a data set and save it with joblib; under ``torchrun`` every
    process trains on its shard (``torchrun --nproc_per_node=N -m skdccm fit ...``).

Every estimator flag maps one to one onto an estimator parameter (``--max-iter`` is
``max_iter``, ``--param NAME=VALUE`` sets any other); there is no configuration file. A new
command is a function ``_add_NAME(subparsers)`` that registers its arguments and its
handler ``(args) -> int``, listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import BUILTIN_DATASETS, DATASET_FILES, load_dataset, load_image_folder
from .metrics import bcubed_precision_recall, clustering_scores, match_clusters

#: Deep methods by family name; the class is looked up lazily in ``skdccm``.
DEEP_FAMILIES = {"dccm": "DCCMClustering", "crlc": "CRLCClustering"}

#: Baselines on flattened pixels scaled to [0, 1].
BASELINES = ("kmeans", "agglomerative")

#: Ward linkage needs the n x n distance matrix (8 n^2 / 2 bytes): 1.6 GB at 20,000 samples.
AGGLOMERATIVE_MAX_SAMPLES = 20_000

#: DCCM's ablation models (paper Table 3), run by ``benchmark --ablation``.
ABLATION_MODELS = ("M1", "M2", "M3", "M4")

#: Samples drawn for the 2-D embedding plots.
EMBEDDING_PLOT_SAMPLES = 3000

MEMORY_NOTE = ("peak resident set size (RSS) of the process during fit, above its level "
               "when fit started, sampled every 10 ms from /proc/self/statm; on systems "
               "without /proc, the growth of ru_maxrss (0 when fit stays below an earlier "
               "peak). peak_cuda_mb: torch.cuda.max_memory_allocated during fit.")


class CommandError(Exception):
    """A user error the command reports in one line (no traceback)."""


# ----------------------------------------------------------------------------------------
# estimator flags: one flag, one estimator parameter
# ----------------------------------------------------------------------------------------

#: flag destination (= estimator parameter) -> (type, help)
ESTIMATOR_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "max_iter": (int, "epochs (default: the preset's)"),
    "batch_size": (int, "minibatch size (default: the preset's)"),
    "learning_rate": (float, "learning rate (default: the preset's)"),
    "backbone": (str, "backbone name, e.g. conv, resnet18 (default: the preset's)"),
    "device": (str, "auto, cpu, cuda, cuda:1, mps (default: auto)"),
    "precision": (str, "auto, float32, bf16, fp16 (default: auto)"),
    "verbose": (int, "0 silent, 1 progress line, 2 one line per epoch (default: 0)"),
}


def _add_estimator_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "estimator parameters", "passed unchanged to the deep estimators (DCCM, CRLC)")
    for name, (kind, text) in ESTIMATOR_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                           help=text)
    group.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="any other estimator parameter, e.g. --param alpha=2.0 "
                            "--param lr_schedule=cosine (VALUE is a Python literal or a "
                            "string); repeatable")


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def estimator_params(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator parameters given on the command line (flags left unset are absent)."""
    params = {name: getattr(args, name) for name in ESTIMATOR_FLAGS
              if getattr(args, name, None) is not None}
    for item in getattr(args, "param", []) or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--param {item!r}: expected NAME=VALUE, e.g. --param alpha=2.0")
        params[name.strip()] = _parse_value(value.strip())
    return params


# ----------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One entry of ``--methods``: a family, and for deep methods a preset and an ablation."""

    name: str
    family: str
    preset: str | None = None
    ablation: str | None = None

    @property
    def is_deep(self) -> bool:
        return self.family in DEEP_FAMILIES


def parse_methods(text: str, *, ablation: bool = False) -> list[Method]:
    """Methods from ``"dccm,dccm-paper,crlc,kmeans"``; ``FAMILY-PRESET`` picks a preset.

    With ``ablation``, every DCCM entry becomes four: its models M1..M4.
    """
    methods: list[Method] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        family, _, preset = name.partition("-")
        if family in BASELINES and not preset:
            methods.append(Method(name, family))
        elif family in DEEP_FAMILIES:
            methods.append(Method(name, family, preset or "default"))
        else:
            known = ", ".join([*DEEP_FAMILIES, *(f + "-PRESET" for f in DEEP_FAMILIES),
                               *BASELINES])
            raise CommandError(f"unknown method {raw.strip()!r}; choose from {known}")
    if ablation:
        if not any(m.family == "dccm" for m in methods):
            raise CommandError("--ablation runs DCCM's models M1..M4: add dccm to --methods")
        methods = [replace_ablation(m, a) for m in methods
                   for a in (ABLATION_MODELS if m.family == "dccm" else (None,))]
    if len({m.name for m in methods}) != len(methods):
        raise CommandError(f"--methods lists a method twice: {text!r}")
    if not methods:
        raise CommandError("--methods is empty")
    return methods


def replace_ablation(method: Method, ablation: str | None) -> Method:
    if ablation is None:
        return method
    return Method(f"{method.name}-{ablation}", method.family, method.preset, ablation)


def deep_class(family: str):
    """The estimator class of a deep family, or None when this skdccm lacks it."""
    import skdccm

    return getattr(skdccm, DEEP_FAMILIES[family], None)


def check_params_used(methods: Sequence[Method], params: dict[str, Any]) -> None:
    """Every given parameter must be a parameter of at least one deep method."""
    accepted: set[str] = set()
    for method in methods:
        if method.is_deep and deep_class(method.family) is not None:
            accepted |= set(deep_class(method.family)().get_params(deep=False))
    unused = sorted(set(params) - accepted)
    if unused and any(m.is_deep for m in methods):
        raise CommandError(f"no method in this run has the parameter(s) {', '.join(unused)}; "
                           f"see the estimators' documentation for their parameters")
    if unused:
        raise CommandError(f"estimator flags ({', '.join(unused)}) only apply to deep methods "
                           "(dccm, crlc), and none is listed in --methods")


def make_estimator(method: Method, n_clusters: int, seed: int, params: dict[str, Any]):
    """A fresh estimator for one run."""
    if method.family == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    if method.family == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        return AgglomerativeClustering(n_clusters=n_clusters)
    cls = deep_class(method.family)
    if cls is None:
        raise CommandError(f"method {method.name!r} needs skdccm.{DEEP_FAMILIES[method.family]}, "
                           "which this version of skdccm does not have")
    accepted = cls().get_params(deep=False)
    kwargs = {k: v for k, v in params.items() if k in accepted}
    kwargs.update(n_clusters=n_clusters, preset=method.preset, random_state=seed)
    if method.ablation is not None:
        kwargs["ablation"] = method.ablation
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------
# measuring one fit
# ----------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


class PeakMemory:
    """Context manager measuring the peak RSS growth (MB) of the block it wraps.

    A daemon thread samples the RSS every ``interval`` seconds (the GIL is released often
    enough by torch and NumPy for it to run); without ``/proc``, the growth of ``ru_maxrss``.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._baseline = _rss_bytes()
        self._maxrss = _maxrss_bytes()
        self._peak = self._baseline or 0
        if self._baseline is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self._baseline is None:
            self.peak_mb = (_maxrss_bytes() - self._maxrss) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes() or 0)
        self.peak_mb = (self._peak - self._baseline) / 2**20


@dataclass
class Run:
    """The outcome of one (method, seed) fit."""

    method: Method
    seed: int
    status: str = "ok"                 # ok | skipped | failed
    note: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = math.nan
    peak_rss_mb: float = math.nan
    peak_cuda_mb: float = math.nan
    device: str = ""
    n_iter: int | None = None
    labels: np.ndarray | None = None
    estimator: Any = None


def fit_one(method: Method, seed: int, images: np.ndarray, pixels: np.ndarray, y: np.ndarray,
            n_clusters: int, params: dict[str, Any]) -> Run:
    """Fit one method with one seed and score its labels against ``y``."""
    run = Run(method, seed)
    if method.family == "agglomerative" and len(images) > AGGLOMERATIVE_MAX_SAMPLES:
        run.status = "skipped"
        run.note = (f"ward linkage on {len(images)} samples needs the full distance matrix; "
                    f"limit {AGGLOMERATIVE_MAX_SAMPLES} (use --n-samples)")
        return run
    estimator = make_estimator(method, n_clusters, seed, params)
    use_cuda = _uses_cuda(estimator)
    if use_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    data = images if method.is_deep else pixels
    with PeakMemory() as memory:
        tic = time.perf_counter()
        estimator.fit(data)
        run.fit_seconds = time.perf_counter() - tic
    run.peak_rss_mb = memory.peak_mb
    if use_cuda:
        import torch

        run.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    run.device = str(getattr(estimator, "device_", "cpu"))
    run.n_iter = _n_iter(estimator)
    run.labels = np.asarray(estimator.labels_)
    run.scores = clustering_scores(y, run.labels)
    precision, recall = bcubed_precision_recall(y, run.labels)
    run.scores.update(bcubed_precision=precision, bcubed_recall=recall)
    run.estimator = estimator
    return run


def _uses_cuda(estimator) -> bool:
    device = getattr(estimator, "device", None)
    if device is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    return device == "auto" or str(device).startswith("cuda")


def _n_iter(estimator) -> int | None:
    n_iter = getattr(estimator, "n_iter_", None)
    return None if n_iter is None else int(n_iter)


# ----------------------------------------------------------------------------------------
# writing results
# ----------------------------------------------------------------------------------------

CSV_COLUMNS = ("dataset", "method", "seed", "status", "n_samples", "n_clusters", "acc", "nmi",
               "ari", "bcubed_precision", "bcubed_recall", "fit_seconds", "peak_rss_mb",
               "peak_cuda_mb", "device", "n_iter", "note")

SCORE_KEYS = ("acc", "nmi", "ari")


def _fmt(value: float, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def write_runs_csv(path: Path, runs: Sequence[Run], dataset: str, n_samples: int,
                   n_clusters: int) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for run in runs:
            writer.writerow({
                "dataset": dataset, "method": run.method.name, "seed": run.seed,
                "status": run.status, "n_samples": n_samples, "n_clusters": n_clusters,
                **{k: _fmt(run.scores.get(k, math.nan), 6) for k in
                   ("acc", "nmi", "ari", "bcubed_precision", "bcubed_recall")},
                "fit_seconds": _fmt(run.fit_seconds, 3),
                "peak_rss_mb": _fmt(run.peak_rss_mb, 1),
                "peak_cuda_mb": _fmt(run.peak_cuda_mb, 1), "device": run.device,
                "n_iter": "" if run.n_iter is None else run.n_iter, "note": run.note,
            })


def summarise(runs: Sequence[Run], methods: Sequence[Method]) -> list[dict[str, Any]]:
    """Mean and standard deviation (ddof=0) over seeds of each method's successful runs."""
    rows = []
    for method in methods:
        done = [r for r in runs if r.method == method and r.status == "ok"]
        row: dict[str, Any] = {"method": method.name, "runs": len(done),
                               "failed": sum(r.method == method and r.status == "failed"
                                             for r in runs)}
        for key in (*SCORE_KEYS, "fit_seconds", "peak_rss_mb", "peak_cuda_mb"):
            values = np.array([r.scores[key] if key in SCORE_KEYS else getattr(r, key)
                               for r in done], dtype=float)
            finite = values[np.isfinite(values)]
            row[key + "_mean"] = float(finite.mean()) if finite.size else math.nan
            row[key + "_std"] = float(finite.std()) if finite.size else math.nan
        row["device"] = ", ".join(sorted({r.device for r in done}))
        row["n_iter"] = ", ".join(sorted({str(r.n_iter) for r in done if r.n_iter is not None}))
        skipped = [r.note for r in runs if r.method == method and r.status != "ok"]
        row["note"] = skipped[0] if skipped else ""
        rows.append(row)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_std(row: dict[str, Any], key: str, digits: int = 3) -> str:
    mean, std = row[key + "_mean"], row[key + "_std"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if row["runs"] > 1 else f"{mean:.{digits}f}"


def summary_markdown(summary: Sequence[dict[str, Any]]) -> str:
    header = ("method", "ACC", "NMI", "ARI", "fit s", "peak RSS MB", "peak CUDA MB",
              "n_iter", "device", "runs")
    rows = []
    for row in summary:
        if row["runs"] == 0:
            rows.append((row["method"], "n/a", "n/a", "n/a", "", "", "", "", "",
                         f"0 ({row['note']})"))
            continue
        rows.append((row["method"], _mean_std(row, "acc"), _mean_std(row, "nmi"),
                     _mean_std(row, "ari"), _mean_std(row, "fit_seconds", 1),
                     _mean_std(row, "peak_rss_mb", 0),
                     "" if math.isnan(row["peak_cuda_mb_mean"])
                     else _mean_std(row, "peak_cuda_mb", 0),
                     row["n_iter"], row["device"],
                     row["runs"] if not row["failed"] else f"{row['runs']} "
                     f"({row['failed']} failed)"))
    return markdown_table(header, rows)


def write_summary_csv(path: Path, summary: Sequence[dict[str, Any]]) -> None:
    columns = list(summary[0]) if summary else ["method"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: (_fmt(v, 6) if isinstance(v, float) else v)
                             for k, v in row.items()})


def jsonable(value: Any) -> Any:
    """Plain JSON values; anything else as its repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return repr(value)


def environment() -> dict[str, Any]:
    """Versions and hardware, for config.json."""
    import scipy
    import sklearn
    import torch

    import skdccm

    versions = {"python": platform.python_version(), "skdccm": skdccm.__version__,
                "numpy": np.__version__, "scipy": scipy.__version__,
                "scikit-learn": sklearn.__version__, "torch": torch.__version__}
    for name in ("torchvision", "matplotlib"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    device = {"platform": platform.platform(), "processor": platform.processor(),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        device["cuda_device"] = torch.cuda.get_device_name()
        device["cuda_version"] = torch.version.cuda
    return {"versions": versions, "hardware": device}


# ----------------------------------------------------------------------------------------
# plots (matplotlib's Agg canvas, no pyplot: no global state, no display needed)
# ----------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_confusion(path: Path, y: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Classes x clusters counts, clusters ordered by their Hungarian-matched class."""
    from sklearn.metrics.cluster import contingency_matrix

    classes = np.unique(y)
    clusters = np.unique(labels)
    mapping = match_clusters(y, labels)
    class_pos = {c: i for i, c in enumerate(classes)}
    order = sorted(clusters, key=lambda c: (class_pos[mapping[c]] if c in mapping
                                            else len(classes), c))
    table = contingency_matrix(y, labels)                          # (n_classes, n_clusters)
    table = table[:, [int(np.flatnonzero(clusters == c)[0]) for c in order]]
    side = max(4.0, 0.45 * max(table.shape) + 2)
    figure = _new_figure(side, side * 0.9)
    axes = figure.add_subplot()
    axes.imshow(table, cmap="Blues")
    if max(table.shape) <= 20:
        limit = table.max() / 2
        for (i, j), count in np.ndenumerate(table):
            axes.text(j, i, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > limit else "black")
    axes.set_xticks(range(len(order)), [str(c) for c in order], fontsize=7)
    axes.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=7)
    axes.set_xlabel("cluster (ordered by matched class)")
    axes.set_ylabel("class")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def plot_learning_curve(path: Path, history: Sequence[dict[str, Any]], title: str) -> None:
    """Total loss and its parts per epoch; shares (confident samples, ...) below."""
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    figure = _new_figure(7, 5.5)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(epochs, [r["loss"] for r in history], "k-o", ms=3, label="total")
    for key in history[0].get("loss_parts", {}):
        top.plot(epochs, [r["loss_parts"].get(key, math.nan) for r in history], "-o", ms=2,
                 label=key)
    top.set_ylabel("loss (epoch mean)")
    top.legend(fontsize=7)
    top.set_title(title, fontsize=9)
    for key, label in (("confident", "confident share"), ("graph_positive", "linked pairs"),
                       ("cluster_min", "smallest cluster"), ("cluster_max", "largest cluster"),
                       ("label_change", "labels changed")):
        if any(key in r for r in history):
            bottom.plot(epochs, [r.get(key, math.nan) for r in history], "-o", ms=2,
                        label=label)
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("share")
    if bottom.get_lines():
        bottom.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def plot_embedding(path: Path, points: np.ndarray, labels: np.ndarray, title: str) -> None:
    """First two principal components of ``points``, coloured by cluster."""
    from sklearn.decomposition import PCA

    flat = points.reshape(len(points), -1).astype(np.float64)
    coords = PCA(n_components=2).fit_transform(flat) if flat.shape[1] > 2 else flat
    figure = _new_figure(6, 5.5)
    axes = figure.add_subplot()
    n_colours = max(int(labels.max()) + 1, 1)
    scatter = axes.scatter(coords[:, 0], coords[:, 1], c=labels, s=4 if len(labels) > 1000
                           else 12, alpha=0.7,
                           cmap="tab10" if n_colours <= 10 else "tab20", vmin=0,
                           vmax=max(n_colours - 1, 1))
    figure.colorbar(scatter, ax=axes, label="cluster")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def write_plots(out: Path, run: Run, images: np.ndarray, pixels: np.ndarray,
                y: np.ndarray, dataset: str) -> list[str]:
    """Confusion matrix, learning curve (deep methods) and 2-D embedding of one run."""
    name = run.method.name
    written = []
    title = f"{name} on {dataset}, seed {run.seed}: ACC {run.scores['acc']:.3f}"
    target = out / f"confusion_{slug(name)}.png"
    plot_confusion(target, y, run.labels, title)
    written.append(target.name)
    history = getattr(run.estimator, "history_", None)
    if history:
        target = out / f"learning_curve_{slug(name)}.png"
        plot_learning_curve(target, history, f"{name} on {dataset}, seed {run.seed}")
        written.append(target.name)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(y), size=min(len(y), EMBEDDING_PLOT_SAMPLES), replace=False))
    if run.method.is_deep:
        points, space = run.estimator.transform(images[pick]), "learned embedding"
    elif hasattr(run.estimator, "transform"):
        points, space = run.estimator.transform(pixels[pick]), "distances to centres"
    else:
        points, space = pixels[pick], "pixels"
    target = out / f"embedding_{slug(name)}.png"
    plot_embedding(target, points, run.labels[pick], f"{name} on {dataset}: PCA of {space}")
    written.append(target.name)
    return written


# ----------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------


def _flat_pixels(images: np.ndarray) -> np.ndarray:
    """Baselines' input: flattened pixels, uint8 scaled to [0, 1] (float32)."""
    flat = images.reshape(len(images), -1)
    return flat.astype(np.float32) / 255.0 if flat.dtype == np.uint8 else flat.astype(np.float32)


def _describe(images: np.ndarray) -> str:
    return "x".join(str(s) for s in images.shape[1:])


def _progress(index: int, total: int, run: Run) -> str:
    head = f"[{index:>{len(str(total))}}/{total}] {run.method.name} seed={run.seed}"
    if run.status != "ok":
        return f"{head}: {run.status} ({run.note})"
    scores = " ".join(f"{k.upper()}={run.scores[k]:.3f}" for k in SCORE_KEYS)
    memory = f"peak RSS +{run.peak_rss_mb:.0f} MB"
    if not math.isnan(run.peak_cuda_mb):
        memory += f", CUDA {run.peak_cuda_mb:.0f} MB"
    epochs = "" if run.n_iter is None else f" {run.n_iter} it"
    return f"{head}: {scores} | fit {run.fit_seconds:.1f} s{epochs} | {memory} | {run.device}"


def run_benchmark(args: argparse.Namespace) -> int:
    started = _dt.datetime.now(_dt.timezone.utc)
    methods = parse_methods(args.methods, ablation=args.ablation)
    params = estimator_params(args)
    check_params_used(methods, params)
    if args.seeds < 1:
        raise CommandError(f"--seeds {args.seeds}: need at least one seed")
    images, y = load_dataset(args.dataset, n_samples=args.n_samples,
                             random_state=args.data_seed, subset=args.subset,
                             size=args.size or None)
    if y is None:
        raise CommandError(f"{args.dataset} has no labels; a benchmark needs them (for a "
                           "folder: one subfolder per class). To cluster it, use "
                           "`python -m skdccm cluster`")
    n_clusters = args.n_clusters or len(np.unique(y))
    name = str(args.dataset)
    is_named = name.lower() in (*BUILTIN_DATASETS, *DATASET_FILES)
    dataset = {"name": name.lower() if is_named else Path(name).name, "source": name,
               "n_samples": len(images), "image_shape": list(images.shape[1:]),
               "dtype": str(images.dtype), "n_classes": len(np.unique(y)),
               "subset": args.subset, "data_seed": args.data_seed,
               "n_samples_requested": args.n_samples, "n_clusters": n_clusters}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = _flat_pixels(images)
    print(f"{dataset['name']}: {len(images)} images {_describe(images)} {images.dtype}, "
          f"{dataset['n_classes']} classes, K={n_clusters}; {len(methods)} methods x "
          f"{args.seeds} seeds -> {out}", flush=True)
    if not args.no_warmup:
        warm_up(methods, images, n_clusters, params)

    record = BenchmarkRecord(args, started, dataset, methods, params, environment())
    total = len(methods) * args.seeds
    for m_index, method in enumerate(methods):
        for seed in range(args.seeds):
            try:
                run = fit_one(method, seed, images, pixels, y, n_clusters, params)
            except CommandError:
                raise
            except Exception as exc:  # record and go on: one failure must not lose the rest
                traceback.print_exc()
                run = Run(method, seed, status="failed", note=f"{type(exc).__name__}: {exc}")
            print(_progress(m_index * args.seeds + seed + 1, total, run), flush=True)
            if run.status == "ok" and method.name not in record.resolved:
                record.resolved[method.name] = _estimator_config(run.estimator)
                if not args.no_plots:
                    record.plots[method.name] = _try_plots(out, run, images, pixels, y,
                                                           dataset["name"])
            run.estimator = None  # free the network before the next fit
            record.runs.append(run)
            # Rewritten after every run: an interrupted benchmark keeps what it finished.
            record.write(out)

    print("\n" + summary_markdown(summarise(record.runs, methods))
          + f"\n\nwrote {out}/results.md, results.csv, summary.csv, config.json"
          + ("" if args.no_plots else " and plots"), flush=True)
    return 1 if any(r.status == "failed" for r in record.runs) else 0


@dataclass
class BenchmarkRecord:
    """Everything a benchmark writes: its configuration and the runs done so far."""

    args: argparse.Namespace
    started: _dt.datetime
    dataset: dict[str, Any]
    methods: list[Method]
    params: dict[str, Any]
    env: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    resolved: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, list[str]] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return "python -m skdccm " + shlex.join(self.args.argv)

    def write(self, out: Path) -> None:
        """results.csv, summary.csv, results.md and config.json."""
        data = self.dataset
        summary = summarise(self.runs, self.methods)
        write_runs_csv(out / "results.csv", self.runs, data["name"], data["n_samples"],
                       data["n_clusters"])
        write_summary_csv(out / "summary.csv", summary)
        (out / "results.md").write_text(self.markdown(summary))
        config = {
            "command": self.command, "argv": self.args.argv,
            "started": self.started.isoformat(),
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "runs_done": len(self.runs),
            "runs_planned": len(self.methods) * self.args.seeds,
            "dataset": data, "n_clusters": data["n_clusters"],
            "seeds": list(range(self.args.seeds)),
            "methods": [{"name": m.name, "family": m.family, "preset": m.preset,
                         "ablation": m.ablation, **self.resolved.get(m.name, {})}
                        for m in self.methods],
            "estimator_flags": self.params, "warmup": not self.args.no_warmup,
            "memory_measure": MEMORY_NOTE, "plots": self.plots, **self.env,
        }
        (out / "config.json").write_text(json.dumps(jsonable(config), indent=2) + "\n")

    def markdown(self, summary: Sequence[dict[str, Any]]) -> str:
        data = self.dataset
        seeds = ", ".join(str(s) for s in range(self.args.seeds))
        if self.args.no_warmup:
            timing = ("wall time of `fit`; the first run includes the process's one-time "
                      "start-up costs (kernel initialisation, CUDA context)")
        else:
            timing = ("wall time of `fit`, after an untimed one-epoch warm-up fit of each "
                      "deep method on a few images (start-up costs excluded)")
        done = len(self.runs)
        planned = len(self.methods) * self.args.seeds
        progress = "" if done == planned else f" ({done} of {planned} runs done so far)"
        shape = "x".join(str(side) for side in data["image_shape"])
        return (
            f"# {data['name']}: {data['n_samples']} images ({shape}), "
            f"K={data['n_clusters']}{progress}\n\n"
            f"Mean ± standard deviation over seeds {seeds}. ACC is Hungarian-matched accuracy; "
            "labels are used only for scoring. Baselines run on flattened pixels scaled to "
            "[0, 1].\n\n"
            f"{summary_markdown(summary)}\n\n"
            f"- command: `{self.command}`\n"
            f"- hardware: {_hardware_line(self.env['hardware'])}\n"
            f"- fit seconds: {timing}\n"
            f"- memory: {MEMORY_NOTE}\n"
            f"- started: {self.started.isoformat(timespec='seconds')}\n"
        )


def warm_up(methods: Sequence[Method], images: np.ndarray, n_clusters: int,
            params: dict[str, Any]) -> None:
    """One untimed one-epoch fit of each deep method on a few images.

    The first fit in a process pays one-time costs (lazy imports, kernel selection, the CUDA
    context) that would otherwise inflate the first seed's fit time.
    """
    n = min(len(images), max(64, 2 * n_clusters))
    for method in methods:
        if not method.is_deep or deep_class(method.family) is None:
            continue
        try:
            make_estimator(method, n_clusters, 0, {**params, "max_iter": 1}).fit(images[:n])
        except Exception:  # the timed run of this method reports any real problem
            pass


def _hardware_line(hardware: dict[str, Any]) -> str:
    text = (f"{hardware['cpu_count']} CPUs, torch threads {hardware['torch_threads']}, "
            f"{hardware['platform']}")
    if hardware.get("cuda_device"):
        text = f"{hardware['cuda_device']} (CUDA {hardware['cuda_version']}); " + text
    return text


def _estimator_config(estimator) -> dict[str, Any]:
    config = {"estimator": type(estimator).__name__,
              "params": jsonable(estimator.get_params(deep=False))}
    if hasattr(estimator, "preset_params_"):
        config["resolved_params"] = jsonable(estimator.preset_params_)
    return config


def _try_plots(out: Path, run: Run, images, pixels, y, dataset: str) -> list[str]:
    try:
        return write_plots(out, run, images, pixels, y, dataset)
    except ImportError:
        print("matplotlib is missing: no plots (pip install 'skdccm[bench]')", file=sys.stderr)
        return []


class TimeLimit:
    """Training callback: stop after the epoch during which ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.stopped = False

    def __call__(self, estimator, record) -> bool:
        self.stopped = time.perf_counter() - self.start >= self.seconds
        return self.stopped


def run_demo(args: argparse.Namespace) -> int:
    from .datasets import load_digits_images

    images, y = load_digits_images()
    params = estimator_params(args)
    n_samples = args.n_samples or (300 if args.quick else None)
    if args.quick:
        params.setdefault("max_iter", 1)
    if n_samples:
        keep = np.sort(np.random.default_rng(0).choice(len(y), n_samples, replace=False))
        images, y = images[keep], y[keep]
    names = ["dccm"] + (["crlc"] if deep_class("crlc") is not None else []) + ["kmeans"]
    methods = parse_methods(",".join(names))
    check_params_used(methods, params)
    pixels = _flat_pixels(images)
    print(f"digits: {len(images)} images 8x8, 10 classes; "
          f"{', '.join(m.name for m in methods)} (random_state={args.random_state})", flush=True)
    # The time budget is shared by the deep methods so that the demo takes about a minute.
    budget = args.time_limit / sum(m.is_deep for m in methods) if args.time_limit else None
    rows = []
    for method in methods:
        limit = None
        run_params = dict(params)
        if method.is_deep and budget:
            limit = TimeLimit(budget)
            run_params["callbacks"] = limit
        print(f"  fitting {method.name} ...", flush=True)
        run = fit_one(method, args.random_state, images, pixels, y, 10, run_params)
        note = ""
        if limit is not None and limit.stopped:
            note = f"stopped by the time limit ({budget:.0f} s)"
        label = {"dccm": "DCCMClustering", "crlc": "CRLCClustering",
                 "kmeans": "KMeans(n_init=10)"}[method.name]
        rows.append((label, f"{run.scores['acc']:.3f}", f"{run.scores['nmi']:.3f}",
                     f"{run.scores['ari']:.3f}", f"{run.fit_seconds:.1f}",
                     "" if run.n_iter is None else run.n_iter, note))
    print()
    print(markdown_table(("method", "ACC", "NMI", "ARI", "fit s", "iterations", "note"), rows))
    if any(row[-1] for row in rows):
        print("\nA method stopped by the time limit trained for fewer epochs than its preset "
              "asks; `--time-limit 0` trains it fully.")
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from PIL import Image

    family = args.method.partition("-")[0]
    if family not in DEEP_FAMILIES:
        raise CommandError(f"--method {args.method!r}: choose dccm, crlc or FAMILY-PRESET "
                           "(e.g. dccm-paper)")
    method = parse_methods(args.method)[0]
    params = estimator_params(args)
    check_params_used([method], params)
    images, y, files = load_image_folder(args.image_dir, size=args.size or None)
    if len(images) < args.n_clusters:
        raise CommandError(f"{args.image_dir} has {len(images)} images, fewer than "
                           f"--n-clusters {args.n_clusters}")
    print(f"{args.image_dir}: {len(images)} images {_describe(images)}; fitting {method.name} "
          f"with K={args.n_clusters}", flush=True)
    estimator = make_estimator(method, args.n_clusters, args.random_state, params)
    tic = time.perf_counter()
    estimator.fit(images)
    seconds = time.perf_counter() - tic
    proba = estimator.predict_proba(images)                          # (n, K)
    labels = proba.argmax(axis=1)
    confidence = proba[np.arange(len(labels)), labels]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "clusters.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "cluster", "confidence"))
        for name, cluster, conf in zip(files, labels, confidence, strict=True):
            writer.writerow((name, int(cluster), f"{conf:.6f}"))
    sheets = 0
    for cluster in range(args.n_clusters):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            continue
        best = members[np.argsort(-confidence[members], kind="stable")][:args.per_sheet]
        Image.fromarray(contact_sheet(images[best])).save(out / f"cluster_{cluster:02d}.png")
        sheets += 1
    sizes = np.bincount(labels, minlength=args.n_clusters)
    print(f"fit {seconds:.1f} s; cluster sizes {sizes.tolist()}; mean confidence "
          f"{confidence.mean():.3f}")
    if y is not None and len(np.unique(y)) > 1:
        scores = clustering_scores(y, labels)
        print("subfolders as classes: " + " ".join(f"{k.upper()}={v:.3f}"
                                                   for k, v in scores.items()))
    print(f"wrote {out / 'clusters.csv'} and {sheets} contact sheets")
    return 0


def load_fit_data(path_or_name: str, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images for ``fit``: an ``.npy`` file as a read-only memory map, else
    :func:`~skdccm.datasets.load_dataset` (labels when the data set has them)."""
    if str(path_or_name).endswith(".npy"):
        return np.load(path_or_name, mmap_mode="r"), None
    return load_dataset(path_or_name, size=size or None)


def run_fit(args: argparse.Namespace) -> int:
    import joblib
    import torch.distributed as dist

    method = parse_methods(args.estimator)[0]
    if not method.is_deep:
        raise CommandError(f"--estimator {args.estimator!r}: choose dccm, crlc or "
                           "FAMILY-PRESET (e.g. dccm-paper)")
    params = estimator_params(args)
    check_params_used([method], params)
    X, y = load_fit_data(args.data, args.size)
    n_clusters = args.n_clusters
    if n_clusters is None:
        if y is None:
            raise CommandError(f"{args.data} has no labels to count classes in: pass "
                               "--n-clusters")
        n_clusters = len(np.unique(y))
    estimator = make_estimator(method, n_clusters, args.random_state, params)
    tic = time.perf_counter()
    try:
        estimator.fit(X)
        seconds = time.perf_counter() - tic
        # Under torchrun, fit has joined (or created) the process group.
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(estimator, out)
            processes = dist.get_world_size() if distributed else 1
            sizes = np.bincount(estimator.labels_, minlength=n_clusters)
            print(f"{method.name}: {len(X)} samples {_describe(X)}, K={n_clusters}, "
                  f"{estimator.n_iter_} epochs in {seconds:.1f} s on {processes} "
                  f"process(es), device {estimator.device_}; cluster sizes "
                  f"{sizes.tolist()}", flush=True)
            if y is not None:
                scores = clustering_scores(y, estimator.labels_)
                print("against the labels: " + " ".join(f"{k.upper()}={v:.3f}"
                                                        for k, v in scores.items()))
            print(f"wrote {out}")
    except BaseException:
        # No barrier here: the other ranks may never reach it. torchrun stops them.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if distributed:
        # Together: a rank that tears down while another still writes can abort it.
        dist.barrier()
        dist.destroy_process_group()
    return 0


def contact_sheet(images: np.ndarray, *, min_tile: int = 32, pad: int = 2) -> np.ndarray:
    """A grid of images (grey or RGB uint8) on a white ground, small images enlarged.

    Parameters
    ----------
    images : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8
        The images, in reading order.
    min_tile : int, default=32
        Images smaller than this are enlarged by an integer factor (nearest neighbour).
    pad : int, default=2
        White pixels between tiles.

    Returns
    -------
    sheet : ndarray of shape (rows * (h + pad) + pad, cols * (w + pad) + pad[, 3]), uint8
    """
    n, height, width = images.shape[:3]
    factor = max(1, math.ceil(min_tile / max(min(height, width), 1)))
    tiles = images.repeat(factor, axis=1).repeat(factor, axis=2)     # (n, fH, fW[, 3])
    tile_h, tile_w = height * factor, width * factor
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = np.full((rows * (tile_h + pad) + pad, cols * (tile_w + pad) + pad,
                     *images.shape[3:]), 255, dtype=np.uint8)
    for i in range(n):
        top = pad + (i // cols) * (tile_h + pad)
        left = pad + (i % cols) * (tile_w + pad)
        sheet[top:top + tile_h, left:left + tile_w] = tiles[i]
    return sheet


# ----------------------------------------------------------------------------------------
# the parser
# ----------------------------------------------------------------------------------------


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="DCCM (and CRLC) beside KMeans on the bundled digits; no setup",
        description="Cluster scikit-learn's 1,797 digits with DCCMClustering (default "
                    "preset), CRLCClustering when available and KMeans(n_init=10); print "
                    "ACC, NMI, ARI and fit time.")
    parser.add_argument("--quick", action="store_true",
                        help="300 images and one epoch: checks the installation in seconds")
    parser.add_argument("--n-samples", type=int, default=None,
                        help="use a random subset of this size")
    parser.add_argument("--random-state", type=int, default=0,
                        help="random_state of every method (default: 0)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="training seconds for the deep methods together, split "
                             "equally; each stops after the epoch in which its share runs "
                             "out (default 0: no limit, each trains for its preset's epochs)")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_demo)


def _add_benchmark(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="methods x seeds on a data set: tables and plots",
        description="Fit each method with each seed on a labelled data set and write "
                    "results.md, results.csv, summary.csv, config.json and plots to --out.")
    parser.add_argument("--dataset", required=True,
                        help="digits, mnist5k, mnist, usps, cifar10 (the last three from "
                             "$SKDCCM_DATA, ../shared/data or the checkout's .data), an .npz "
                             "file, or a folder with one subfolder of images per class")
    parser.add_argument("--methods", default="dccm,kmeans",
                        help="comma-separated: dccm, crlc, FAMILY-PRESET (dccm-paper, "
                             "dccm-code, crlc-paper), kmeans, agglomerative "
                             "(default: dccm,kmeans)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--n-samples", type=int, default=None,
                        help="random subset of the data set (drawn with --data-seed)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the --n-samples subset (default: 0)")
    parser.add_argument("--subset", choices=("all", "train", "test"), default="all",
                        help="split of .npz data sets (default: all, as in the papers)")
    parser.add_argument("--n-clusters", type=int, default=None,
                        help="K (default: the number of classes)")
    parser.add_argument("--size", type=int, default=0,
                        help="image size for a folder data set (default: keep)")
    parser.add_argument("--ablation", action="store_true",
                        help="run DCCM's ablation models M1..M4 (paper Table 3) for each "
                             "dccm method")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed one-epoch warm-up fit of each deep method "
                             "(the first seed's time then includes start-up costs)")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_benchmark)


def _add_cluster(subparsers) -> None:
    parser = subparsers.add_parser(
        "cluster", help="cluster a folder of images: CSV and contact sheets",
        description="Cluster every image under IMAGE_DIR; write clusters.csv (file, cluster, "
                    "confidence) and cluster_KK.png, the most confident members of each "
                    "cluster.")
    parser.add_argument("image_dir", help="folder of PNG/JPEG images (searched recursively)")
    parser.add_argument("--n-clusters", type=int, required=True, help="K")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--method", default="dccm",
                        help="dccm, crlc or FAMILY-PRESET (default: dccm)")
    parser.add_argument("--size", type=int, default=32,
                        help="resize images to SIZE x SIZE (0: keep their size; default: 32)")
    parser.add_argument("--per-sheet", type=int, default=64,
                        help="images per contact sheet (default: 64)")
    parser.add_argument("--random-state", type=int, default=0, help="default: 0")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_cluster)


def _add_fit(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit one estimator and save it with joblib (works under torchrun)",
        description="Fit DCCMClustering or CRLCClustering on a data set and save the fitted "
                    "estimator with joblib. Launched by torchrun with several processes, "
                    "each trains on its shard of the data (DDP) and rank 0 writes the file: "
                    "torchrun --nproc_per_node=N -m skdccm fit --estimator dccm "
                    "--data X.npy --out model.joblib")
    parser.add_argument("--estimator", default="dccm",
                        help="dccm, crlc or FAMILY-PRESET, e.g. dccm-paper (default: dccm)")
    parser.add_argument("--data", required=True,
                        help="an .npy array of images (read as a memory map: each process "
                             "reads its shard only), an .npz file, a folder of images, or "
                             "a data set name (digits, mnist5k, mnist, usps, cifar10)")
    parser.add_argument("--out", required=True, help="path of the joblib file to write")
    parser.add_argument("--n-clusters", type=int, default=None,
                        help="K (default: the number of classes of a labelled data set)")
    parser.add_argument("--size", type=int, default=0,
                        help="image size for a folder of images (default: keep)")
    parser.add_argument("--random-state", type=int, default=0, help="default: 0")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_fit)


#: Registered commands, in help order.
COMMANDS = (_add_demo, _add_benchmark, _add_cluster, _add_fit)


def build_parser() -> argparse.ArgumentParser:
    """The ``skdccm`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="skdccm", description="Deep image clustering (DCCM, CRLC) from the command line.")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 1 when a run failed or an error was reported, 2 for usage errors.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    try:
        return args.handler(args)
    except (CommandError, FileNotFoundError, ImportError, ValueError) as exc:
        if args.traceback:
            raise
        print(f"skdccm {args.command}: error: {exc}", file=sys.stderr)
        return 1
