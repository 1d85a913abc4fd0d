"""Data-parallel scaling: training images per second with 1, 2, ... processes (torchrun).

Each run launches ``torchrun --standalone --nproc_per_node=P`` on this file in worker mode;
every process fits the estimator on its shard (one process is the plain single-process
fit). With ``--device cpu`` the machine's cores are split evenly between the processes
(``OMP_NUM_THREADS``), so the comparison spends the same hardware; on GPUs each process
takes one GPU.

    python benchmarks/scaling.py --dataset digits --estimator dccm --processes 1,2 \\
        --max-iter 3 --out benchmark_results/scaling

Prints a Markdown table (processes, threads each, training seconds, images per second,
speed-up over the first row, efficiency = speed-up / ideal speed-up, where the ideal is 1 on
CPU (the processes share the cores) and the ratio of process counts on GPUs, ACC against
the labels) and writes it with
the raw records (``scaling.md``, ``scaling.json``) to ``--out``. Training seconds are the
sum of the epochs' times in ``history_`` (start-up and prediction excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from skdccm.datasets import load_dataset
    from skdccm.harness import make_estimator, parse_methods
    from skdccm.metrics import clustering_scores

    X, y = load_dataset(args.dataset, n_samples=args.n_samples)
    method = parse_methods(args.estimator)[0]
    params = {"max_iter": args.max_iter, "device": args.device}
    estimator = make_estimator(method, len(set(y.tolist())), 0, params)
    tic = time.perf_counter()
    estimator.fit(X)
    wall = time.perf_counter() - tic
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not dist.is_initialized() or dist.get_rank() == 0:
        train_seconds = sum(record["seconds"] for record in estimator.history_)
        record = {"processes": world, "threads": int(os.environ.get("OMP_NUM_THREADS", 0)),
                  "n_samples": len(X), "epochs": estimator.n_iter_,
                  "train_seconds": train_seconds, "fit_seconds": wall,
                  "images_per_second": len(X) * estimator.n_iter_ / train_seconds,
                  "device": str(estimator.device_), **clustering_scores(y, estimator.labels_)}
        Path(args.record).write_text(json.dumps(record))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    records = []
    for processes in (int(p) for p in args.processes.split(",")):
        record_path = out / f"run-{processes}.json"
        env = dict(os.environ)
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, cores // processes))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", __file__, "--worker",
                   "--record", str(record_path), "--dataset", args.dataset,
                   "--estimator", args.estimator, "--max-iter", str(args.max_iter),
                   "--device", args.device]
        if args.n_samples:
            command += ["--n-samples", str(args.n_samples)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, env=env, check=True)
        records.append(json.loads(record_path.read_text()))
    base = records[0]
    lines = ["| processes | threads each | train s | images/s | speed-up | efficiency | ACC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        speedup = r["images_per_second"] / base["images_per_second"]
        # On CPU the processes share the same cores (ideal speed-up 1); on GPUs each
        # process brings its own device (ideal: the ratio of process counts).
        ideal = 1.0 if args.device == "cpu" else r["processes"] / base["processes"]
        lines.append(f"| {r['processes']} | {r['threads'] or '-'} | {r['train_seconds']:.1f} "
                     f"| {r['images_per_second']:.0f} | {speedup:.2f} "
                     f"| {speedup / ideal:.2f} | {r['acc']:.3f} |")
    table = "\n".join(lines)
    header = (f"{args.estimator} on {args.dataset} ({records[0]['n_samples']} images), "
              f"{args.max_iter} epochs, device {records[0]['device']}, {cores} cores\n\n")
    (out / "scaling.md").write_text(header + table + "\n")
    (out / "scaling.json").write_text(json.dumps(records, indent=2))
    print(header + table)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--estimator", default="dccm", help="dccm, crlc, dccm-paper, ...")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--max-iter", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    parser.add_argument("--out", default="benchmark_results/scaling")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
