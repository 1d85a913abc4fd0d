"""The command line: ``python -m skdccm COMMAND`` (or the ``skdccm`` console script).

Commands
--------
``demo``
    DCCM (and CRLC, when available) beside KMeans on scikit-learn's bundled digits; no setup.
``benchmark``
    Several methods x several seeds on a data set (or, with ``--suite``, on several); writes
    ``results.md``, ``results.csv``, ``summary.csv``, ``config.json`` and plots
    (:mod:`skdccm.harness`, :mod:`skdccm.suite`).
``cluster``
    Cluster a folder of images; writes ``clusters.csv``, ``model.joblib``, one contact sheet
    per cluster and ``overview.png`` (:mod:`skdccm.workflow`).
``predict``
    Assign the images of a folder to the clusters of a saved model, with the same outputs.
``fit``
    Fit one estimator on a data set and save it with joblib; under ``torchrun`` every
    process trains on its shard (``torchrun --nproc_per_node=N -m skdccm fit ...``).

Every estimator flag maps one to one onto an estimator parameter (``--max-iter`` is
``max_iter``, ``--param NAME=VALUE`` sets any other); there is no configuration file. A new
command is a function ``_add_NAME(subparsers)`` that registers its arguments and its
handler ``(args) -> int``, listed in :data:`COMMANDS`.

Conventions: progress with an ETA goes to stderr (``-q`` silences it, ``-v`` adds one line
per epoch), results to stdout and files; every error is one line on stderr with exit
status 1 (2 for usage errors), ``--traceback`` (anywhere on the line) shows the full
traceback instead. This module only parses and reports; the work is done by
:mod:`skdccm.harness` (benchmark runs and their files), :mod:`skdccm.suite`,
:mod:`skdccm.workflow` (image folders) and :mod:`skdccm.figures`.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .console import NORMAL, QUIET, VERBOSE, CommandError, Progress, one_line, summarised_warnings
from .datasets import BUILTIN_DATASETS, DATASET_FILES, RESIZE_MODES, load_dataset
from .harness import (
    DEEP_FAMILIES,
    BenchmarkSettings,
    benchmark_dataset,
    check_params_used,
    deep_class,
    describe,
    describe_dataset,
    fit_one,
    fit_watched,
    flat_pixels,
    make_estimator,
    markdown_table,
    parse_methods,
    summarise,
    summary_markdown,
)
from .metrics import clustering_scores
from .suite import SUITE_SETS, benchmark_suite, failed_runs, parse_sets
from .workflow import (
    EXPORT_MODES,
    MODEL_NAME,
    assign,
    check_out_folder,
    clear_outputs,
    load_model,
    read_folder_for,
    write_assignments,
)

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
    "verbose": (int, "the estimator's own output on stdout: 0 silent, 1 progress line, 2 one "
                     "line per epoch (default: 0; the command's progress on stderr: -q, -v)"),
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
    pixels = flat_pixels(images)
    print(f"digits: {len(images)} images 8x8, 10 classes; "
          f"{', '.join(m.name for m in methods)} (random_state={args.random_state})", flush=True)
    # The time budget is shared by the deep methods so that the demo takes about a minute.
    budget = args.time_limit / sum(m.is_deep for m in methods) if args.time_limit else None
    rows = []
    for method in methods:
        run_params = dict(params)
        if method.is_deep and budget:
            # max_time, not a stopping callback: the schedule is re-planned to the budget, so
            # a slow machine gets a short full schedule rather than a truncated long one.
            run_params["max_time"] = budget
        args.progress.info(f"fitting {method.name} ...")
        run = fit_one(method, args.random_state, images, pixels, y, 10, run_params,
                      args.progress)
        note = ""
        if getattr(run.estimator, "stopped_by_time_", False):
            note = f"shortened to the time limit ({budget:.0f} s)"
        label = {"dccm": "DCCMClustering", "crlc": "CRLCClustering",
                 "kmeans": "KMeans(n_init=10)"}[method.name]
        rows.append((label, f"{run.scores['acc']:.3f}", f"{run.scores['nmi']:.3f}",
                     f"{run.scores['ari']:.3f}", f"{run.fit_seconds:.1f}",
                     "" if run.n_iter is None else run.n_iter, note))
    print()
    print(markdown_table(("method", "ACC", "NMI", "ARI", "fit s", "iterations", "note"), rows))
    if any(row[-1] for row in rows):
        print("\nA method shortened to the time limit trained for fewer epochs than its "
              "preset asks; `--time-limit 0` trains it fully.")
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    suite = args.suite or args.sets is not None
    methods = parse_methods(args.methods or ("dccm,crlc,kmeans" if suite else "dccm,kmeans"),
                            ablation=args.ablation)
    params = estimator_params(args)
    check_params_used(methods, params)
    if args.seeds < 1:
        raise CommandError(f"--seeds {args.seeds}: need at least one seed")
    if suite:
        return _run_suite(args, methods, params)
    if args.dataset is None:
        raise CommandError("pass --dataset (one data set) or --suite (several)")
    with summarised_warnings(args.progress, "loading"):
        images, y = load_dataset(args.dataset, n_samples=args.n_samples,
                                 random_state=args.data_seed, subset=args.subset,
                                 size=args.size or None)
    if y is None:
        raise CommandError(f"{args.dataset} has no labels; a benchmark needs them (for a "
                           "folder: one subfolder per class). To cluster it, use "
                           "`python -m skdccm cluster`")
    name = str(args.dataset)
    is_named = name.lower() in (*BUILTIN_DATASETS, *DATASET_FILES)
    dataset = describe_dataset(name.lower() if is_named else Path(name).name, images, y,
                               args.n_clusters, source=name, subset=args.subset,
                               data_seed=args.data_seed, n_samples_requested=args.n_samples)
    out = Path(args.out)
    print(f"{dataset['name']}: {len(images)} images {describe(images)} {images.dtype}, "
          f"{dataset['n_classes']} classes, K={dataset['n_clusters']}; {len(methods)} methods "
          f"x {args.seeds} seeds -> {out}", flush=True)
    record = benchmark_dataset(images, y, dataset, _settings(args, methods, params), out)
    print("\n" + summary_markdown(summarise(record.runs, methods))
          + f"\n\nwrote {out}/results.md, results.csv, summary.csv, config.json"
          + ("" if args.no_plots else " and plots"), flush=True)
    return 1 if any(r.status == "failed" for r in record.runs) else 0


def _settings(args: argparse.Namespace, methods, params: dict[str, Any]) -> BenchmarkSettings:
    return BenchmarkSettings(methods, args.seeds, params, args.argv, plots=not args.no_plots,
                             warmup=not args.no_warmup, progress=args.progress,
                             tracebacks=args.traceback)


def _run_suite(args: argparse.Namespace, methods, params: dict[str, Any]) -> int:
    if args.dataset is not None:
        raise CommandError("--suite runs its own sets (choose them with --sets); drop "
                           "--dataset")
    if args.n_clusters is not None or args.subset != "all":
        raise CommandError("--n-clusters and --subset apply to one data set; the suite uses "
                           "each set's classes and all its images")
    if not any(m.name == "kmeans" for m in methods):
        # The margins are measured against KMeans fitted in the same run.
        methods = [*methods, *parse_methods("kmeans")]
    sets = parse_sets(args.sets or ",".join(SUITE_SETS))
    out = Path(args.out)
    results = benchmark_suite(sets, _settings(args, methods, params), out,
                              n_samples=args.n_samples)
    print(f"\n{(out / 'suite.md').read_text()}\nwrote {out}/suite.md, suite.csv and one "
          "folder per set", flush=True)
    return 1 if failed_runs(results) else 0


def _deep_method(text: str, flag: str):
    method = parse_methods(text)[0] if text.partition("-")[0] in DEEP_FAMILIES else None
    if method is None:
        raise CommandError(f"{flag} {text!r}: choose dccm, crlc or FAMILY-PRESET "
                           "(e.g. dccm-paper)")
    if method.runs > 1:
        raise CommandError(f"{flag} {text!r}: a consensus of several runs (-xN) is measured "
                           "by `benchmark`; in Python, wrap the estimator in "
                           "skdccm.ConsensusClustering")
    return method


def run_cluster(args: argparse.Namespace) -> int:
    import joblib

    from .datasets import load_image_folder

    method = _deep_method(args.method, "--method")
    params = estimator_params(args)
    check_params_used([method], params)
    image_dir, out = Path(args.image_dir), Path(args.out)
    check_out_folder(out, image_dir)
    with summarised_warnings(args.progress, "loading"):
        images, y, files = load_image_folder(image_dir, size=args.size or None,
                                             resize=args.resize)
    if len(images) < args.n_clusters:
        raise CommandError(f"{image_dir} has {len(images)} images, fewer than "
                           f"--n-clusters {args.n_clusters}")
    args.progress.info(f"{image_dir}: {len(images)} images {describe(images)}; fitting "
                       f"{method.name} with K={args.n_clusters}")
    estimator = make_estimator(method, args.n_clusters, args.random_state, params)
    tic = time.perf_counter()
    fit_watched(estimator, images, args.progress, f"{method.name}")
    seconds = time.perf_counter() - tic
    labels, confidence = assign(estimator, images)
    clear_outputs(out)
    written = write_assignments(out, image_dir, files, images, labels, confidence,
                                args.n_clusters, per_sheet=args.per_sheet, export=args.export)
    joblib.dump(estimator, out / MODEL_NAME)
    print(f"fit {seconds:.1f} s", end="; ")
    _report_assignments(out, [*written, MODEL_NAME], labels, confidence, args.n_clusters, y)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    model_path, image_dir, out = Path(args.model), Path(args.image_dir), Path(args.out)
    check_out_folder(out, image_dir)
    model = load_model(model_path)
    with summarised_warnings(args.progress, "loading"):
        images, y, files = read_folder_for(model, image_dir, args.resize)
    channels, height, width = model.input_shape_
    args.progress.info(f"{image_dir}: {len(images)} images read at the model's "
                       f"{height}x{width}, {'grey' if channels == 1 else 'colour'}; "
                       f"assigning to its {model.n_clusters} clusters")
    labels, confidence = assign(model, images)
    clear_outputs(out, keep=[model_path])
    written = write_assignments(out, image_dir, files, images, labels, confidence,
                                model.n_clusters, per_sheet=args.per_sheet, export=args.export)
    _report_assignments(out, written, labels, confidence, model.n_clusters, y)
    return 0


def _report_assignments(out: Path, written: list[str], labels: np.ndarray,
                        confidence: np.ndarray, n_clusters: int, y: np.ndarray | None) -> None:
    sizes = np.bincount(labels, minlength=n_clusters)
    print(f"cluster sizes {sizes.tolist()}; mean confidence {confidence.mean():.3f}")
    if y is not None and len(np.unique(y)) > 1:
        scores = clustering_scores(y, labels)
        print("subfolders as classes: " + " ".join(f"{k.upper()}={v:.3f}"
                                                   for k, v in scores.items()))
    sheets = sum(name.startswith("cluster_") and name.endswith(".png") for name in written)
    folders = sum(name.endswith("/") for name in written)
    extra = f", {folders} cluster folders" if folders else ""
    print(f"wrote {out}: {', '.join(n for n in written if not n.startswith('cluster_'))}, "
          f"{sheets} contact sheets{extra}")


def load_fit_data(path_or_name: str, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images for ``fit``: an ``.npy`` file as a read-only memory map, else
    :func:`~skdccm.datasets.load_dataset` (labels when the data set has them)."""
    if str(path_or_name).endswith(".npy"):
        return np.load(path_or_name, mmap_mode="r"), None
    return load_dataset(path_or_name, size=size or None)


def run_fit(args: argparse.Namespace) -> int:
    import joblib
    import torch.distributed as dist

    method = _deep_method(args.estimator, "--estimator")
    params = estimator_params(args)
    check_params_used([method], params)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone reports progress
        args.progress.level = QUIET
    with summarised_warnings(args.progress, "loading"):
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
        fit_watched(estimator, X, args.progress, method.name)
        seconds = time.perf_counter() - tic
        # Under torchrun, fit has joined (or created) the process group.
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(estimator, out)
            processes = dist.get_world_size() if distributed else 1
            sizes = np.bincount(estimator.labels_, minlength=n_clusters)
            print(f"{method.name}: {len(X)} samples {describe(X)}, K={n_clusters}, "
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

# ----------------------------------------------------------------------------------------
# the parser
# ----------------------------------------------------------------------------------------


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = "integer"
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit status 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--traceback, -q and -v, accepted before and after the command.

    Below the command their defaults are suppressed, so that a flag given before it is not
    reset by the command's own default.
    """
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    group = parser.add_argument_group("output")
    group.add_argument("--traceback", action="store_true", default=default(False),
                       help="show the full traceback of an error")
    loud = group.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", default=default(False),
                      help="no progress lines on stderr (results and errors still show)")
    loud.add_argument("-v", dest="per_epoch", action="store_true", default=default(False),
                      help="also one line per training epoch on stderr")


def _add_output_flags(parser: argparse.ArgumentParser, *, export: bool = True) -> None:
    parser.add_argument("--per-sheet", type=_count(1), default=64,
                        help="images per contact sheet, the most confident (default: 64)")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                        help="how images of another shape reach the size: crop (scale to "
                             "cover, cut the centre) or pad (scale to fit, fill with white) "
                             "keep the aspect ratio, stretch does not (default: crop)")
    if export:
        parser.add_argument("--export", choices=EXPORT_MODES, default=None,
                            help="also write one folder per cluster, cluster_KK/, with copies "
                                 "of (copy) or symbolic links to (link) its files")


def _subparser(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, **kwargs)
    _common_flags(parser, top=False)
    return parser


def _add_demo(subparsers) -> None:
    parser = _subparser(
        subparsers, "demo",
        help="DCCM (and CRLC) beside KMeans on the bundled digits; no setup",
        description="Cluster scikit-learn's 1,797 digits with DCCMClustering (default "
                    "preset), CRLCClustering when available and KMeans(n_init=10); print "
                    "ACC, NMI, ARI and fit time.")
    parser.add_argument("--quick", action="store_true",
                        help="300 images and one epoch: checks the installation in seconds")
    parser.add_argument("--n-samples", type=_count(2), default=None,
                        help="use a random subset of this size")
    parser.add_argument("--random-state", type=int, default=0,
                        help="random_state of every method (default: 0)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="training seconds for the deep methods together, split "
                             "equally and passed to each as max_time, which plans its "
                             "epochs to fit (default 0: no limit, each trains for its "
                             "preset's epochs)")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_demo)


def _add_benchmark(subparsers) -> None:
    parser = _subparser(
        subparsers, "benchmark", help="methods x seeds on a data set (or a suite of them)",
        description="Fit each method with each seed on a labelled data set and write "
                    "results.md, results.csv, summary.csv, config.json and plots to --out. "
                    "With --suite, do so for several sets into --out/SET and add "
                    "suite.md and suite.csv.")
    parser.add_argument("--dataset", default=None,
                        help="digits, mnist5k, mnist, usps, cifar10, coil20, orl (all but the "
                             "first two from $SKDCCM_DATA, ../shared/data or the checkout's "
                             ".data), an .npz file, or a folder with one subfolder of images "
                             "per class")
    parser.add_argument("--suite", action="store_true",
                        help="run several data sets instead (--sets), KMeans in the same run; "
                             "adds suite.md and suite.csv: mean ± std, worst seed and each "
                             "method's worst-seed margin over KMeans per set")
    parser.add_argument("--sets", default=None,
                        help=f"comma-separated suite sets (implies --suite; default: all of "
                             f"{','.join(SUITE_SETS)}); a set whose file is absent is skipped")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: dccm, crlc, FAMILY-PRESET (dccm-paper, "
                             "dccm-code, crlc-paper), a deep method ending in -xN for the "
                             "consensus of N runs (dccm-x5, crlc-paper-x3; "
                             "skdccm.ConsensusClustering), kmeans, agglomerative "
                             "(default: dccm,kmeans; with --suite: dccm,crlc,kmeans)")
    parser.add_argument("--seeds", type=_count(1), default=3,
                        help="number of seeds, 0..N-1 (default: 3)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--n-samples", type=_count(1), default=None,
                        help="random subset of the data set (drawn with --data-seed); with "
                             "--suite, a cap on each set's size (drawn with seed 0)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the --n-samples subset (default: 0)")
    parser.add_argument("--subset", choices=("all", "train", "test"), default="all",
                        help="split of .npz data sets (default: all, as in the papers)")
    parser.add_argument("--n-clusters", type=_count(2), default=None,
                        help="K (default: the number of classes)")
    parser.add_argument("--size", type=_count(0), default=0,
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
    parser = _subparser(
        subparsers, "cluster", help="cluster a folder of images: CSV, model, contact sheets",
        description="Cluster every image under IMAGE_DIR; write into --out clusters.csv "
                    "(file, cluster, confidence), the fitted estimator as model.joblib (for "
                    "`skdccm predict`), cluster_KK.png (the most confident members of each "
                    "cluster, labelled with its id, size and mean confidence) and "
                    "overview.png (one row per cluster). Outputs of an earlier run in --out "
                    "are replaced.")
    parser.add_argument("image_dir", help="folder of PNG/JPEG images (searched recursively)")
    parser.add_argument("--n-clusters", type=_count(2), required=True, help="K")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--method", default="dccm",
                        help="dccm, crlc or FAMILY-PRESET (default: dccm)")
    parser.add_argument("--size", type=_count(0), default=32,
                        help="resize images to SIZE x SIZE (0: keep the most common size; "
                             "default: 32)")
    _add_output_flags(parser)
    parser.add_argument("--random-state", type=int, default=0, help="default: 0")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_cluster)


def _add_predict(subparsers) -> None:
    parser = _subparser(
        subparsers, "predict", help="assign a folder of images with a saved model",
        description="Assign every image under IMAGE_DIR to a cluster of MODEL (the "
                    "model.joblib of `skdccm cluster`, or a file of `skdccm fit`), reading "
                    "the images at the model's own size and channels; write the same "
                    "clusters.csv, contact sheets and overview.png into --out.")
    parser.add_argument("model", help="a fitted estimator saved with joblib")
    parser.add_argument("image_dir", help="folder of PNG/JPEG images (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    _add_output_flags(parser)
    parser.set_defaults(handler=run_predict)


def _add_fit(subparsers) -> None:
    parser = _subparser(
        subparsers, "fit", help="fit one estimator and save it with joblib (works under torchrun)",
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
                             "a data set name (digits, mnist5k, mnist, usps, cifar10, "
                             "coil20, orl)")
    parser.add_argument("--out", required=True, help="path of the joblib file to write")
    parser.add_argument("--n-clusters", type=_count(2), default=None,
                        help="K (default: the number of classes of a labelled data set)")
    parser.add_argument("--size", type=_count(0), default=0,
                        help="image size for a folder of images (default: keep)")
    parser.add_argument("--random-state", type=int, default=0, help="default: 0")
    _add_estimator_flags(parser)
    parser.set_defaults(handler=run_fit)


#: Registered commands, in help order.
COMMANDS = (_add_demo, _add_benchmark, _add_cluster, _add_predict, _add_fit)


def build_parser() -> argparse.ArgumentParser:
    """The ``skdccm`` argument parser with every command registered."""
    parser = _Parser(
        prog="skdccm", description="Deep image clustering (DCCM, CRLC) from the command line.")
    parser.add_argument("--version", action="version", version=f"skdccm {__version__}")
    _common_flags(parser, top=True)
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
        0 on success, 1 when a run failed or an error was reported (in one line on stderr),
        2 for usage errors, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors end here
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    args.progress = Progress(QUIET if args.quiet else VERBOSE if args.per_epoch else NORMAL)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        args.progress.end_line()
        print(f"skdccm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.traceback:
            raise
        args.progress.end_line()
        print(f"skdccm {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
