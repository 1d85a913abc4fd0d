"""The benchmark harness behind ``python -m skdccm benchmark`` and ``demo``.

Methods (:class:`Method`, :func:`parse_methods`, :func:`make_estimator`), one measured fit
(:func:`fit_one`, :class:`PeakMemory`), a whole data set's runs (:func:`benchmark_dataset`),
and what they write: ``results.csv``, ``summary.csv``, ``results.md`` and ``config.json``
(:class:`BenchmarkRecord`). Plots come from :mod:`skdccm.figures`; the command line that
drives all this is :mod:`skdccm.cli`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
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

from .console import CommandError, EpochProgress, Progress, format_duration, one_line
from .figures import plot_confusion, plot_embedding, plot_learning_curve
from .metrics import bcubed_precision_recall, clustering_accuracy, clustering_scores
from .refinement import CHECK_NEIGHBOURS

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


# ----------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One entry of ``--methods``: a family, and for deep methods a preset, an ablation and
    the number of runs of a consensus (``runs > 1``: :class:`skdccm.ConsensusClustering`)."""

    name: str
    family: str
    preset: str | None = None
    ablation: str | None = None
    runs: int = 1

    @property
    def is_deep(self) -> bool:
        return self.family in DEEP_FAMILIES


def parse_methods(text: str, *, ablation: bool = False) -> list[Method]:
    """Methods from ``"dccm,dccm-paper,crlc-x5,kmeans"``; ``FAMILY-PRESET`` picks a preset,
    a last part ``xN`` (N >= 2) makes a deep method the consensus of N runs.

    With ``ablation``, every DCCM entry becomes four: its models M1..M4.
    """
    methods: list[Method] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        family, _, preset = name.partition("-")
        runs = re.fullmatch(r"(?:(.+)-)?x([2-9]|[1-9][0-9]+)", preset)
        if family in BASELINES and not preset:
            methods.append(Method(name, family))
        elif family in DEEP_FAMILIES and runs:
            methods.append(Method(name, family, runs.group(1) or "default",
                                  runs=int(runs.group(2))))
        elif family in DEEP_FAMILIES:
            methods.append(Method(name, family, preset or "default"))
        else:
            known = ", ".join([*DEEP_FAMILIES, *(f + "-PRESET" for f in DEEP_FAMILIES),
                               *(f + "-xN" for f in DEEP_FAMILIES), *BASELINES])
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
    return Method(f"{method.name}-{ablation}", method.family, method.preset, ablation,
                  method.runs)


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
    if method.runs > 1:
        from .consensus import ConsensusClustering

        return ConsensusClustering(cls(**kwargs), n_runs=method.runs, random_state=seed)
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
    # Share of training samples that kept their cluster through graph refinement (refine_);
    # None when the fit was not refined.
    refine_agreement: float | None = None
    # Whether that refinement added the pixels' graph (refine_pixels_); None when unrefined.
    refine_pixels: bool | None = None
    # The leaks of the head's clusters and of the cut where the cut was checked
    # (refine_check_); None where no check ran.
    refine_check: tuple[float, float] | None = None
    labels: np.ndarray | None = None
    estimator: Any = None


def fit_one(method: Method, seed: int, images: np.ndarray, pixels: np.ndarray, y: np.ndarray,
            n_clusters: int, params: dict[str, Any], progress: Progress | None = None) -> Run:
    """Fit one method with one seed and score its labels against ``y``.

    With ``progress``, a deep method's epochs are reported there with an ETA.
    """
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
        if progress is not None and method.is_deep and method.runs == 1:
            fit_watched(estimator, data, progress, f"{method.name} seed {seed}")
        else:
            estimator.fit(data)
        run.fit_seconds = time.perf_counter() - tic
    run.peak_rss_mb = memory.peak_mb
    if use_cuda:
        import torch

        run.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    first = getattr(estimator, "estimators_", [estimator])[0]  # a consensus: its first run
    run.device = str(getattr(first, "device_", "cpu"))
    run.n_iter = _n_iter(estimator)
    run.refine_agreement = getattr(estimator, "refine_agreement_", None)  # not a consensus
    run.refine_pixels = getattr(estimator, "refine_pixels_", None)
    run.refine_check = getattr(estimator, "refine_check_", None)
    run.labels = np.asarray(estimator.labels_)
    run.scores = clustering_scores(y, run.labels)
    precision, recall = bcubed_precision_recall(y, run.labels)
    run.scores.update(bcubed_precision=precision, bcubed_recall=recall)
    if hasattr(estimator, "run_labels_"):  # a consensus: how its runs did on their own
        accs = [clustering_accuracy(y, labels) for labels in estimator.run_labels_]
        run.note = (f"runs' ACC {' / '.join(f'{a:.3f}' for a in accs)} (mean "
                    f"{np.mean(accs):.3f}); agreement {estimator.agreement_:.3f}")
    run.estimator = estimator
    return run


def fit_watched(estimator, data, progress: Progress, label: str):
    """``estimator.fit(data)`` reporting its epochs with an ETA (``-v``: one line each).

    The reporting callback is added for this fit only: the fitted estimator keeps its own
    ``callbacks`` (so that it pickles, and its parameters say what the user set).
    """
    from .training import format_record

    own = estimator.callbacks
    callbacks = [] if own is None else list(own) if isinstance(own, (list, tuple)) else [own]
    max_time = getattr(estimator, "max_time", None)
    if max_time is not None:  # no epoch total to count against: the budget is the plan
        label = f"{label} (max_time {format_duration(max_time)})"
    watcher = EpochProgress(progress, label, total=planned_epochs, describe=format_record)
    estimator.set_params(callbacks=[*callbacks, watcher])
    try:
        estimator.fit(data)
    finally:
        estimator.set_params(callbacks=own)
        progress.end_line()
    return estimator


def planned_epochs(estimator) -> int | None:
    """Epochs a deep estimator's fit runs unless stopped early (pre-training and every
    initialisation included), as planned once fit began; None when unknown, and under a
    time budget (``max_time``), whose plan changes as epochs are timed."""
    try:
        params = estimator._resolved_params()
    except Exception:  # fit reports invalid parameters; the ETA just goes without a total
        return None
    if getattr(estimator, "max_time", None) is not None:
        return None
    # The clustering stage's plan as fit resolved it (min_steps stretches the preset's
    # epochs on small sets, colour images get fewer), else the parameters' max_iter.
    max_iter = getattr(estimator, "_cluster_epochs", params.get("max_iter"))
    if not isinstance(max_iter, int):
        return None
    trials = (int(params.get("n_init") or 1) - 1) * int(params.get("init_iter") or max_iter)
    # The warm start's length ("auto": it depends on the images) is known once fit began,
    # which is when the progress callback asks.
    pretrain = getattr(estimator, "pretrain_epochs_", params.get("pretrain_epochs"))
    return max_iter + (pretrain if isinstance(pretrain, int) else 0) + trials


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
               "peak_cuda_mb", "device", "n_iter", "refine_agreement", "refine_pixels",
               "note")

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
                "n_iter": "" if run.n_iter is None else run.n_iter,
                "refine_agreement": _fmt(run.refine_agreement, 6),
                "refine_pixels": "" if run.refine_pixels is None else run.refine_pixels,
                "note": run.note,
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


def flat_pixels(images: np.ndarray) -> np.ndarray:
    """Baselines' input: flattened pixels, uint8 scaled to [0, 1] (float32)."""
    flat = images.reshape(len(images), -1)
    return flat.astype(np.float32) / 255.0 if flat.dtype == np.uint8 else flat.astype(np.float32)


def describe(images: np.ndarray) -> str:
    """An image shape for messages: ``"28x28"``, ``"32x32x3"``."""
    return "x".join(str(s) for s in images.shape[1:])


def run_line(index: int, total: int, run: Run) -> str:
    """The one-line report of a finished run: scores, time, memory, device."""
    head = f"[{index:>{len(str(total))}}/{total}] {run.method.name} seed={run.seed}"
    if run.status != "ok":
        return f"{head}: {run.status} ({run.note})"
    scores = " ".join(f"{k.upper()}={run.scores[k]:.3f}" for k in SCORE_KEYS)
    memory = f"peak RSS +{run.peak_rss_mb:.0f} MB"
    if not math.isnan(run.peak_cuda_mb):
        memory += f", CUDA {run.peak_cuda_mb:.0f} MB"
    epochs = "" if run.n_iter is None else f" {run.n_iter} it"
    if run.refine_agreement is not None:
        pixels = " + pixels" if run.refine_pixels else ""
        epochs += f", refined{pixels} ({run.refine_agreement:.0%} kept)"
    elif run.refine_check is not None:
        epochs += f", head kept (the cut leaks more at {CHECK_NEIGHBOURS} neighbours)"
    note = f" | {run.note}" if run.note else ""
    return (f"{head}: {scores} | fit {run.fit_seconds:.1f} s{epochs} | {memory} | "
            f"{run.device}{note}")


def describe_dataset(name: str, images: np.ndarray, y: np.ndarray, n_clusters: int | None,
                     **details: Any) -> dict[str, Any]:
    """The ``dataset`` entry of config.json (``details``: how it was drawn)."""
    return {"name": name, "n_samples": len(images), "image_shape": list(images.shape[1:]),
            "dtype": str(images.dtype), "n_classes": len(np.unique(y)), **details,
            "n_clusters": n_clusters or len(np.unique(y))}


@dataclass
class BenchmarkSettings:
    """What every data set of a benchmark run shares: methods, seeds, flags, the command."""

    methods: list[Method]
    seeds: int
    params: dict[str, Any]
    argv: list[str]
    plots: bool = True
    warmup: bool = True
    progress: Progress = field(default_factory=Progress)
    tracebacks: bool = False

    @property
    def command(self) -> str:
        return "python -m skdccm " + shlex.join(self.argv)


@dataclass
class BenchmarkRecord:
    """Everything a benchmark writes about one data set: its configuration and runs so far."""

    settings: BenchmarkSettings
    started: _dt.datetime
    dataset: dict[str, Any]
    env: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    resolved: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, list[str]] = field(default_factory=dict)

    @property
    def planned(self) -> int:
        return len(self.settings.methods) * self.settings.seeds

    def write(self, out: Path) -> None:
        """results.csv, summary.csv, results.md and config.json."""
        data, settings = self.dataset, self.settings
        summary = summarise(self.runs, settings.methods)
        write_runs_csv(out / "results.csv", self.runs, data["name"], data["n_samples"],
                       data["n_clusters"])
        write_summary_csv(out / "summary.csv", summary)
        (out / "results.md").write_text(self.markdown(summary))
        config = {
            "command": settings.command, "argv": settings.argv,
            "started": self.started.isoformat(),
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "runs_done": len(self.runs), "runs_planned": self.planned,
            "dataset": data, "n_clusters": data["n_clusters"],
            "seeds": list(range(settings.seeds)),
            "methods": [{"name": m.name, "family": m.family, "preset": m.preset,
                         "ablation": m.ablation, **self.resolved.get(m.name, {})}
                        for m in settings.methods],
            "estimator_flags": settings.params, "warmup": settings.warmup,
            "memory_measure": MEMORY_NOTE, "plots": self.plots, **self.env,
        }
        (out / "config.json").write_text(json.dumps(jsonable(config), indent=2) + "\n")

    def markdown(self, summary: Sequence[dict[str, Any]]) -> str:
        data = self.dataset
        seeds = ", ".join(str(s) for s in range(self.settings.seeds))
        done = len(self.runs)
        progress = "" if done == self.planned else f" ({done} of {self.planned} runs done so far)"
        shape = "x".join(str(side) for side in data["image_shape"])
        return (
            f"# {data['name']}: {data['n_samples']} images ({shape}), "
            f"K={data['n_clusters']}{progress}\n\n"
            f"Mean ± standard deviation over seeds {seeds}. ACC is Hungarian-matched accuracy; "
            "labels are used only for scoring. Baselines run on flattened pixels scaled to "
            "[0, 1].\n\n"
            f"{summary_markdown(summary)}\n\n"
            f"- command: `{self.settings.command}`\n"
            f"- hardware: {_hardware_line(self.env['hardware'])}\n"
            f"- fit seconds: {timing_note(self.settings.warmup)}\n"
            f"- memory: {MEMORY_NOTE}\n"
            f"- started: {self.started.isoformat(timespec='seconds')}\n"
        )


def timing_note(warmup: bool) -> str:
    """What "fit seconds" measured."""
    if warmup:
        return ("wall time of `fit`, after an untimed one-epoch warm-up fit of each deep "
                "method on a few images (start-up costs excluded)")
    return ("wall time of `fit`; the first run includes the process's one-time start-up "
            "costs (kernel initialisation, CUDA context)")


def benchmark_dataset(images: np.ndarray, y: np.ndarray, dataset: dict[str, Any],
                      settings: BenchmarkSettings, out: Path, *,
                      on_run: Callable[[BenchmarkRecord], None] | None = None,
                      ) -> BenchmarkRecord:
    """Fit every method with every seed on one data set, writing the results as they come.

    Parameters
    ----------
    images : ndarray of shape (n, H, W) or (n, H, W, C)
        The images (the deep methods' input; the baselines get :func:`flat_pixels`).
    y : ndarray of shape (n,)
        Labels, for scoring only.
    dataset : dict
        The data set's description (:func:`describe_dataset`).
    settings : BenchmarkSettings
        Methods, seeds and estimator flags.
    out : Path
        Folder for results.csv, summary.csv, results.md, config.json and plots (created).
    on_run : callable, default=None
        Called with the record after every run, once the run's files are written.

    Returns
    -------
    record : BenchmarkRecord
        Every run; a run that raised is recorded as failed (with its traceback printed) and
        the others go on.
    """
    out.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    n_clusters = dataset["n_clusters"]
    pixels = flat_pixels(images)
    if settings.warmup:
        warm_up(settings.methods, images, n_clusters, settings.params)
    record = BenchmarkRecord(settings, started, dataset, environment())
    progress = settings.progress
    tic = time.perf_counter()
    for method in settings.methods:
        for seed in range(settings.seeds):
            try:
                run = fit_one(method, seed, images, pixels, y, n_clusters, settings.params,
                              progress)
            except CommandError:
                raise
            except Exception as exc:  # record and go on: one failure must not lose the rest
                if settings.tracebacks:
                    traceback.print_exc()
                run = Run(method, seed, status="failed", note=one_line(exc))
            print(run_line(len(record.runs) + 1, record.planned, run), flush=True)
            if run.status == "ok" and method.name not in record.resolved:
                record.resolved[method.name] = _estimator_config(run.estimator)
                if settings.plots:
                    record.plots[method.name] = write_plots(out, run, images, pixels, y,
                                                            dataset["name"])
            run.estimator = None  # free the network before the next fit
            record.runs.append(run)
            # Rewritten after every run: an interrupted benchmark keeps what it finished.
            record.write(out)
            if on_run is not None:
                on_run(record)
            progress.update(f"{dataset['name']}: run", len(record.runs), record.planned, tic,
                            keep=True)
    return record


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


def write_plots(out: Path, run: Run, images: np.ndarray, pixels: np.ndarray,
                y: np.ndarray, dataset: str) -> list[str]:
    """Confusion matrix, learning curve (deep methods) and 2-D embedding of one run.

    Returns the names of the files written (none, with a message, without matplotlib).
    """
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is missing: no plots (pip install 'skdccm[bench]')", file=sys.stderr)
        return []
    name = run.method.name
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    written = []
    title = f"{name} on {dataset}, seed {run.seed}: ACC {run.scores['acc']:.3f}"
    target = out / f"confusion_{slug}.png"
    plot_confusion(target, y, run.labels, title)
    written.append(target.name)
    history = getattr(run.estimator, "history_", None)
    if history:
        target = out / f"learning_curve_{slug}.png"
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
    target = out / f"embedding_{slug}.png"
    plot_embedding(target, points, run.labels[pick], f"{name} on {dataset}: PCA of {space}")
    written.append(target.name)
    return written
