"""Training speed of each backbone on colour images: milliseconds per step and seconds per epoch.

One step is a forward and backward pass of two views of a minibatch (what DCCM's and CRLC's
defaults run), on random images; the figure of merit for choosing a colour default is what
a network learns per second, and this measures the per-second half of it.

    python benchmarks/backbone_speed.py --n 5000 --batch-size 128 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from skdccm.networks import SmallCNN, build_backbone


def step_seconds(net: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Mean seconds of one SGD step (after two warm-up steps)."""
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01)
    for i in range(repeats + 2):
        if i == 2:
            start = time.perf_counter()
        _, features = net(images)
        features.square().mean().backward()
        optimiser.step()
        optimiser.zero_grad()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (3, args.size, args.size)
    nets = {name: build_backbone(name, shape) for name in ("conv", "small", "resnet18")}
    nets["SmallCNN 16-32-64-128"] = SmallCNN(3, (16, 32, 64, 128))
    nets["SmallCNN 64-128-256-512"] = SmallCNN(3, (64, 128, 256, 512))
    images = torch.randn(2 * args.batch_size, *shape)
    print("| backbone | ms / step | s / epoch | parameters |")
    print("| --- | --- | --- | --- |")
    for name, net in nets.items():
        seconds = step_seconds(net, images, args.repeats)
        epoch = seconds * args.n / args.batch_size
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"| {name} | {seconds * 1000:.0f} | {epoch:.1f} | {params:.2f} M |", flush=True)


if __name__ == "__main__":
    main()
