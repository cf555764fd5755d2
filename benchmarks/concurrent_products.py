"""Two independent products of an HM-RNN step's shape: in turn on two threads, or at once.

In a 3-layer HM-RNN, layer 1 at step t and layer 3 at step t-1 read nothing the other
writes, so the two could run side by side, each on a core of its own, instead of each
taking both cores in turn. This measures the premise with ATen's product at the shape
of one layer-step at (64, 60, 512, 512): ``a (64, 1024) @ w (1024, 2049)``, twice with
different operands, (1) one after the other with two torch threads, (2) at the same
time in two Python threads with one torch thread (the product releases the GIL), and
(3) one after the other with one torch thread. Median over ``--rounds`` of
``--repeats`` pairs, the three taking turns.

    python benchmarks/concurrent_products.py
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import torch


def in_turn(a: list[torch.Tensor], w: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    torch.mm(a[0], w[0], out=out[0])
    torch.mm(a[1], w[1], out=out[1])


def timed(threads: int, side_by_side: bool, repeats: int, operands: tuple) -> float:
    """Seconds per pair of products."""
    a, w, out = operands
    torch.set_num_threads(threads)
    if not side_by_side:
        start = time.perf_counter()
        for _ in range(repeats):
            in_turn(a, w, out)
        return (time.perf_counter() - start) / repeats
    barrier = threading.Barrier(3)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(repeats):
            torch.mm(a[i], w[i], out=out[i])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--depth", type=int, default=1024)
    parser.add_argument("--columns", type=int, default=2049)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    operands = (
        [torch.randn(args.rows, args.depth) for _ in range(2)],
        [torch.randn(args.depth, args.columns) for _ in range(2)],
        [torch.empty(args.rows, args.columns) for _ in range(2)],
    )
    ways: dict[str, Callable[[int], float]] = {
        "in turn, 2 threads": lambda n: timed(2, False, n, operands),
        "side by side, 1 thread each": lambda n: timed(1, True, n, operands),
        "in turn, 1 thread": lambda n: timed(1, False, n, operands),
    }
    for way in ways.values():  # warm-up
        way(max(1, args.repeats // 5))
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            times[name].append(way(args.repeats))
    flop = 2 * 2 * args.rows * args.depth * args.columns
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:28s} {median * 1e3:7.3f} ms a pair ({flop / median / 1e9:5.1f} GFLOP/s; "
            f"rounds {min(values) * 1e3:.3f}-{max(values) * 1e3:.3f} ms)"
        )


if __name__ == "__main__":
    main()
