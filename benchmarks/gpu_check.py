"""One-command GPU check: the CUDA tests, training speed beside the reference loop, and
CIFAR-10 fits of both estimators under a time budget, all into one folder.

Usage (one GPU; sized to finish within 8 minutes)::

    python benchmarks/gpu_check.py --out benchmark_results/gpu_check

Steps, each recorded in ``summary.json`` and ``summary.md`` whether or not the others pass:

1. ``tests``: ``pytest -m gpu`` (the tests that need CUDA; they skip without it), log and
   JUnit XML.
2. ``speed``: ``benchmarks/speed.py`` for DCCM and CRLC (paper presets) on the device,
   against the PIL + DataLoader reference loop (``speed/``).
3. ``fits``: ``DCCMClustering`` and ``CRLCClustering`` (default presets, seed 0) on all
   60,000 CIFAR-10 images with ``max_time=--fit-seconds`` each: ACC, NMI, ARI, seconds,
   epochs, training and prediction images per second (``fit_dccm.json``, ``fit_crlc.json``).

``--tiny`` runs every step at toy sizes (60 images, a one-second budget, the speed script
on 8x8 images) to check the script itself, on any device. The exit status is 0 when every
step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import skdccm
from skdccm import CRLCClustering, DCCMClustering
from skdccm.datasets import data_home, load_npz
from skdccm.metrics import clustering_accuracy

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = {"dccm": DCCMClustering, "crlc": CRLCClustering}

#: speed.py flags per method on a GPU (benchmarks/README.md) and at toy sizes.
SPEED_ARGS = {
    "dccm": ["--n", "20000", "--steps", "200", "--num-workers", "8"],
    "crlc": ["--n", "20000", "--steps", "40", "--num-workers", "8"],
}
TINY_SAMPLES = 60
TINY_SPEED_ARGS = ["--n", "40", "--size", "8", "--steps", "2", "--batch-size", "8",
                   "--matmul-size", "128", "--num-workers", "1"]

#: Wall-clock limits of the subprocess steps, seconds (a hung step must not hold the GPU).
TESTS_TIMEOUT = 240
SPEED_TIMEOUT = 200


def run_logged(command: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``command`` from the checkout with its output into ``log``; status and seconds.

    The command imports the same skdccm as this script, wherever that was found.
    """
    package_parent = str(Path(skdccm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    tic = time.perf_counter()
    with open(log, "w") as handle:
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": time.perf_counter() - tic,
                    "command": command}
    return {"status": "ok" if code == 0 else f"failed (exit {code})",
            "seconds": time.perf_counter() - tic, "command": command}


def run_tests(args: argparse.Namespace) -> dict[str, Any]:
    """``pytest -m gpu``, with the count of passed, failed and skipped tests."""
    xml = args.out / "tests.xml"
    result = run_logged([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p",
                         "no:cacheprovider", f"--junitxml={xml}"],
                        args.out / "tests.log", TESTS_TIMEOUT)
    if xml.exists():
        suite = ElementTree.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors",
                                                          "skipped")}
        counts["passed"] = (counts["tests"] - counts["failures"] - counts["errors"]
                            - counts["skipped"])
        result.update(counts)
    return result


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    """``benchmarks/speed.py`` for each method: ours / reference training and prediction."""
    out = args.out / "speed"
    out.mkdir(exist_ok=True)
    result: dict[str, Any] = {"status": "ok", "seconds": 0.0}
    for method in ESTIMATORS:
        extra = TINY_SPEED_ARGS if args.tiny else SPEED_ARGS[method]
        step = run_logged([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--method",
                           method, "--device", args.device, "--out", str(out), *extra],
                          out / f"speed_{method}.log", SPEED_TIMEOUT)
        result["seconds"] += step["seconds"]
        if step["status"] != "ok":
            result["status"] = f"{method}: {step['status']}"
            continue
        figures = json.loads((out / f"speed_{method}.json").read_text())
        result[method] = {
            "train_images_per_s": figures["ours"]["train_images_per_s"],
            "reference_train_images_per_s": figures["reference"]["train_images_per_s"],
            "ratio_train": figures["ratio_train"],
            "predict_images_per_s": figures["ours"]["predict_images_per_s"],
            "ratio_predict": figures["ratio_predict"],
        }
    return result


def fit_one(method: str, X: np.ndarray, y: np.ndarray, args: argparse.Namespace,
            ) -> dict[str, Any]:
    """One budgeted fit: scores, epochs, seconds, images per second; the history."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    est = ESTIMATORS[method](n_clusters=10, max_time=args.fit_seconds, device=args.device,
                             random_state=args.seed, verbose=2)
    tic = time.perf_counter()
    est.fit(X)
    fit_seconds = time.perf_counter() - tic
    predict_seconds = []
    for _ in range(2):   # the first call also copies the network to the device
        tic = time.perf_counter()
        labels = est.predict(X)
        predict_seconds.append(time.perf_counter() - tic)
    train_seconds = sum(record["seconds"] for record in est.history_)
    return {
        "estimator": type(est).__name__, "n": len(X), "max_time": est.max_time,
        "acc": clustering_accuracy(y, est.labels_),
        "nmi": normalized_mutual_info_score(y, est.labels_),
        "ari": adjusted_rand_score(y, est.labels_),
        "predict_matches_labels": float(np.mean(labels == est.labels_)),
        "fit_seconds": fit_seconds, "train_seconds": train_seconds,
        "epochs": est.n_iter_, "planned_epochs": est.history_[-1]["planned_epochs"],
        "preset_epochs": est.preset_params_["max_iter"],
        "stopped_by_time": est.stopped_by_time_,
        # Each epoch visits every image once.
        "train_images_per_s": len(X) * est.n_iter_ / train_seconds,
        "predict_seconds_first": predict_seconds[0],
        "predict_seconds": predict_seconds[1],
        "predict_images_per_s": len(X) / predict_seconds[1],
        "peak_cuda_bytes": (torch.cuda.max_memory_allocated(device)
                            if device.type == "cuda" else None),
        "history": est.history_,
    }


def run_fits(args: argparse.Namespace) -> dict[str, Any]:
    """Decode CIFAR-10 once, then one budgeted fit per estimator."""
    if not args.data.exists():
        return {"status": f"failed: {args.data} not found (see --data)", "seconds": 0.0}
    tic = time.perf_counter()
    X, y = load_npz(args.data, n_samples=TINY_SAMPLES if args.tiny else None,
                    random_state=0)
    result: dict[str, Any] = {"status": "ok", "decode_seconds": time.perf_counter() - tic}
    for method in ESTIMATORS:
        step = guarded(lambda method=method: fit_one(method, X, y, args))
        if step["status"] != "ok":
            result["status"] = f"{method}: {step['status']}"
            continue
        (args.out / f"fit_{method}.json").write_text(json.dumps(step, indent=2) + "\n")
        result[method] = {k: v for k, v in step.items() if k != "history"}
    result["seconds"] = time.perf_counter() - tic
    return result


def guarded(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``step``; an exception becomes its status (the other steps still run)."""
    tic = time.perf_counter()
    try:
        result = step()
    except Exception as exc:
        traceback.print_exc()
        return {"status": f"failed: {type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - tic}
    return {"status": "ok", **result}


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "skdccm": skdccm.__version__,
        "python": platform.python_version(),
    }


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [f"# GPU check: {env['device_name']} ({env['device']}), torch {env['torch']}", "",
             "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {step['status']} | {step.get('seconds', 0.0):.0f} |"
              for name, step in summary["steps"].items()]
    tests = summary["steps"].get("tests", {})
    if "tests" in tests:
        lines += ["", f"CUDA tests: {tests['passed']} passed, {tests['failures']} failed, "
                      f"{tests['errors']} errors, {tests['skipped']} skipped."]
    speed = summary["steps"].get("speed", {})
    rows = [(m, speed[m]) for m in ESTIMATORS if m in speed]
    if rows:
        lines += ["", "| speed (paper preset) | train img/s | reference img/s | ratio | "
                      "predict img/s |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {m} | {s['train_images_per_s']:.0f} | "
                  f"{s['reference_train_images_per_s']:.0f} | {s['ratio_train']:.1f} | "
                  f"{s['predict_images_per_s']:.0f} |" for m, s in rows]
    fits = summary["steps"].get("fits", {})
    rows = [(m, fits[m]) for m in ESTIMATORS if m in fits]
    if rows:
        lines += ["", "| CIFAR-10 fit | n | ACC | NMI | ARI | fit s | epochs (of preset) | "
                      "train img/s | predict img/s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {f['estimator']} (max_time={f['max_time']:g}) | {f['n']} | "
                  f"{f['acc']:.3f} | {f['nmi']:.3f} | {f['ari']:.3f} | "
                  f"{f['fit_seconds']:.0f} | {f['epochs']} ({f['preset_epochs']}) | "
                  f"{f['train_images_per_s']:.0f} | {f['predict_images_per_s']:.0f} |"
                  for _, f in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/gpu_check"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=data_home() / "cifar10_jpeg.npz",
                        help="CIFAR-10 as JPEG (default: skdccm.datasets.data_home())")
    parser.add_argument("--fit-seconds", type=float, default=None,
                        help="max_time of each CIFAR-10 fit (default: 120; --tiny: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=("tests", "speed", "fits"))
    parser.add_argument("--tiny", action="store_true",
                        help="toy sizes: check the script itself, on any device")
    args = parser.parse_args(argv)
    if args.fit_seconds is None:
        args.fit_seconds = 1.0 if args.tiny else 120.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    steps = {"tests": run_tests, "speed": run_speed, "fits": run_fits}
    summary: dict[str, Any] = {"environment": environment(device), "tiny": args.tiny,
                               "steps": {}}
    for name, step in steps.items():
        if name in args.skip:
            continue
        print(f"== {name}", flush=True)
        summary["steps"][name] = guarded(lambda step=step: step(args))
        # Written after every step: a check cut short still leaves what it measured.
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary), flush=True)
    return 0 if all(s["status"] == "ok" for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
