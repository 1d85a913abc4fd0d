"""Peak memory of ``fit`` and ``predict`` as the number of images grows.

Each measurement runs in a fresh Python process, so that memory that an earlier phase freed
but the allocator kept cannot hide the next phase's needs. The child builds its random
uint8 images (MNIST-sized, 28x28, by default), loads the estimator, reads its resident set
size (the *baseline*: interpreter, torch, data, model), resets the kernel's peak mark and runs
one phase:

- ``fit`` with ``max_iter=1``: its working set (peak minus baseline) should stay bounded as
  n grows, beyond a few bytes per image for the fitted labels: the data are read in place,
  never copied whole;
- ``predict`` of the model fitted in the first ``fit`` row (saved there after the
  measurement): its working set beyond the output arrays should not depend on n, because
  prediction streams fixed batches.

On Linux the peak is ``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs``; elsewhere ``getrusage``'s lifetime peak stands in (it then
includes imports and data, and the table says so).

By default the network is the estimator's MLP backbone reading the images flattened (the
data path, augmentation and objective are those of images; only the network's own compute
is small, so that 40,000 images take seconds, not hours, on a CPU). ``--backbone auto``
uses the convolutional network of the preset instead (minutes per 10,000 images on a CPU).

Usage::

    python benchmarks/memory.py --n 10000 20000 40000 --out benchmark_results/memory

Writes ``memory.json`` and ``memory.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 2**20


def make_images(n: int, size: int, seed: int) -> np.ndarray:
    """``(n, size, size)`` random uint8 images, drawn directly as uint8 (no wider copy)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def make_estimator(args: argparse.Namespace) -> Any:
    import skdccm

    cls = skdccm.DCCMClustering if args.method == "dccm" else skdccm.CRLCClustering
    params: dict[str, Any] = {"n_clusters": args.n_clusters, "preset": args.preset,
                              "backbone": args.backbone, "max_iter": 1, "device": args.device,
                              "random_state": 0}
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    if args.predict_batch_size is not None:
        params["predict_batch_size"] = args.predict_batch_size
    return cls(**params)


# ----------------------------------------------------------------------------------------
# child process: one phase, one JSON line on stdout
# ----------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: the parent process stays light (it only starts children).
    import torch
    from speed import lifetime_peak_rss_bytes, reset_peak_rss, status_kib

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    X = make_images(args.n, args.size, args.seed)
    estimator = (make_estimator(args) if args.phase == "fit"
                 else pickle.loads(Path(args.model).read_bytes()))
    baseline = (status_kib("VmRSS") or 0) * 1024
    resettable = reset_peak_rss()
    tic = time.perf_counter()
    if args.phase == "fit":
        estimator.fit(X)
        outputs = estimator.labels_.nbytes
    else:
        labels = estimator.predict(X)
        # predict builds the (n, K) float32 probabilities, then their argmax.
        outputs = labels.nbytes + args.n * estimator.n_clusters * 4
    seconds = time.perf_counter() - tic
    if args.phase == "fit" and args.save_model:
        Path(args.model).write_bytes(pickle.dumps(estimator))
    if resettable:
        peak, method = (status_kib("VmHWM") or 0) * 1024, "VmHWM reset before the phase"
    else:
        peak, method = lifetime_peak_rss_bytes(), "getrusage ru_maxrss (process lifetime)"
    return {"phase": args.phase, "n": args.n, "data_bytes": int(X.nbytes),
            "baseline_rss_bytes": int(baseline), "peak_rss_bytes": int(peak),
            "working_set_bytes": int(peak - baseline), "output_bytes": int(outputs),
            "seconds": seconds, "method": method, "threads": torch.get_num_threads(),
            "estimator": type(estimator).__name__,
            "predict_batch_size": int(estimator.predict_batch_size)}


# ----------------------------------------------------------------------------------------
# parent: one child per (phase, n)
# ----------------------------------------------------------------------------------------


def child_command(args: argparse.Namespace, phase: str, n: int, model: str,
                  save_model: bool = False) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--n", str(n),
               "--model", model, "--size", str(args.size), "--method", args.method,
               "--preset", args.preset, "--backbone", args.backbone,
               "--n-clusters", str(args.n_clusters), "--device", args.device,
               "--seed", str(args.seed)]
    for flag, value in (("--batch-size", args.batch_size),
                        ("--predict-batch-size", args.predict_batch_size),
                        ("--threads", args.threads)):
        if value is not None:
            command += [flag, str(value)]
    return [*command, "--save-model"] if save_model else command


def run_phase(args: argparse.Namespace, phase: str, n: int, model: str,
              save_model: bool = False) -> dict[str, Any]:
    completed = subprocess.run(child_command(args, phase, n, model, save_model),
                               capture_output=True,
                               text=True, env=os.environ.copy(), check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{phase} with n={n} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How much the working sets move across n, beyond what n explains (outputs)."""
    summary = {}
    for phase in ("fit", "predict"):
        beyond = [r["working_set_bytes"] - r["output_bytes"] for r in rows if r["phase"] == phase]
        data = [r["data_bytes"] for r in rows if r["phase"] == phase]
        if beyond:
            summary[phase] = {
                "working_set_beyond_outputs_min_bytes": int(min(beyond)),
                "working_set_beyond_outputs_max_bytes": int(max(beyond)),
                "spread_bytes": int(max(beyond) - min(beyond)),
                "data_growth_bytes": int(max(data) - min(data)),
            }
    return summary


def markdown(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"### Peak memory of {config['estimator']} (preset={config['preset']!r}, "
        f"backbone={config['backbone']!r}) on {config['device']}",
        "",
        f"Random uint8 images {config['size']}x{config['size']}, max_iter=1, one fresh "
        f"process per row; predict uses the model of the first fit ({config['fit_n']} "
        "images). Memory: "
        f"{result['rows'][0]['method']}; working set = peak minus the resident set before "
        "the phase (which already holds the data and the model).",
        "",
        "| n | data | fit: working set | fit: s | predict: working set | predict: outputs "
        "| predict: beyond outputs | predict: s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for row in result["rows"]:
        by_n.setdefault(row["n"], {})[row["phase"]] = row
    for n in sorted(by_n):
        fit, pred = by_n[n]["fit"], by_n[n]["predict"]
        lines.append(
            f"| {n:,} | {fit['data_bytes'] / MIB:,.1f} MiB | "
            f"{fit['working_set_bytes'] / MIB:,.1f} MiB | {fit['seconds']:,.1f} | "
            f"{pred['working_set_bytes'] / MIB:,.1f} MiB | {pred['output_bytes'] / MIB:,.2f} MiB "
            f"| {(pred['working_set_bytes'] - pred['output_bytes']) / MIB:,.1f} MiB | "
            f"{pred['seconds']:,.1f} |")
    summary = result["summary"]
    lines += [
        "",
        f"Across n, the data grew by {summary['fit']['data_growth_bytes'] / MIB:,.1f} MiB; "
        f"the fit working set beyond its labels moved by "
        f"{summary['fit']['spread_bytes'] / MIB:,.1f} MiB and the predict working set beyond "
        f"its outputs by {summary['predict']['spread_bytes'] / MIB:,.1f} MiB.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10000, 20000, 40000])
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--method", choices=("dccm", "crlc"), default="dccm")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--backbone", default="mlp",
                        help="'mlp' (cheap network, image data path) or 'auto' (the CNN)")
    parser.add_argument("--n-clusters", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--predict-batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmark_results/memory"))
    parser.add_argument("--child", dest="phase", choices=("model", "fit", "predict"),
                        default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save-model", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase is not None:
        args.n = args.n[0]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.phase is not None:
        print(json.dumps(run_child(args)), flush=True)
        return None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "model.pkl")
        for i, n in enumerate(args.n):
            rows.append(run_phase(args, "fit", n, model, save_model=i == 0))
            rows.append(run_phase(args, "predict", n, model))
            print(f"n={n}: fit working set {rows[-2]['working_set_bytes'] / MIB:.1f} MiB, "
                  f"predict working set {rows[-1]['working_set_bytes'] / MIB:.1f} MiB",
                  flush=True)
    config = {"estimator": rows[0]["estimator"], "preset": args.preset,
              "backbone": args.backbone, "size": args.size, "device": args.device,
              "fit_n": args.n[0], "batch_size": args.batch_size,
              "predict_batch_size": rows[0]["predict_batch_size"], "n": args.n,
              "threads": rows[0]["threads"]}
    result = {"config": config, "rows": rows, "summary": summarise(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    report = markdown(result)
    (args.out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "memory.md").write_text(report)
    print(report, flush=True)
    return result


if __name__ == "__main__":
    main()
