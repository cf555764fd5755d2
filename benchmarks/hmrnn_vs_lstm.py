"""Forward+backward time and peak memory of ``HMRNN`` against ``torch.nn.LSTM``.

Both get the same batch, steps, input size, hidden size and number of layers;
one training iteration is ``model(x)`` then ``output.sum().backward()``. For
each size and model a fresh process builds the model, measures the peak memory
of one cold iteration (CPU: growth of the resident set, ``ru_maxrss`` against
the resident set before; CUDA: ``torch.cuda.max_memory_allocated`` above what
was allocated before; for the compiled model, an iteration after compiling, on
CUDA only: on CPU the resident-set peak of compilation hides it), then times
``--repeats`` iterations after ``--warmup``. This runs ``--rounds`` times, the models
of a size taking turns, so that a change in the machine's load hits them alike; the
timings of all rounds are pooled. Wall time (median and minimum) and process CPU
time are reported: on a shared machine the CPU time is the steadier.

Rows: ``lstm`` (``torch.nn.LSTM``, oneDNN/cuDNN kernels), ``hmrnn`` (default
``GumbelSigmoid(0.3)`` boundaries), with ``--compile``, ``hmrnn-compiled``
(``compile_step=True``; compilation happens during at least 3 warm-up iterations)
and, with ``--cuda-graph`` (CUDA only), ``hmrnn-graph``: the default model's whole
iteration captured in a CUDA graph after 3 warm-up iterations and replayed (its
gradients zeroed inside the graph, so inside the timing, where the other rows zero
theirs before it; no peak memory: the graph holds its own pool).

The HM-LSTM does more matrix work than an LSTM of the same sizes: its middle
layers multiply three inputs (bottom-up, recurrent, top-down) instead of two,
and only the first layer's input product can be batched over time (the layers
are coupled both ways), so at input = hidden the matrix work alone is 4/3 of the
LSTM's (``matmul ratio`` in the table).

Examples (from the repository root)::

    python benchmarks/hmrnn_vs_lstm.py --sizes small,target --out benchmarks/results/
    python benchmarks/hmrnn_vs_lstm.py --sizes target,paper --device cuda --compile --cuda-graph

Results go to ``<out>/hmrnn_vs_lstm_<device>[-<N>-threads].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stochrnn import HMRNN
from stochrnn.hmrnn import native


class Size(NamedTuple):
    batch: int
    steps: int
    input: int
    hidden: int
    layers: int


SIZES = {
    "small": Size(16, 20, 64, 64, 3),  # target: ratio <= 3
    "sensor": Size(16, 150, 3, 64, 3),  # a typical sensor / UCR classifier; target: ratio <= 3
    "target": Size(64, 60, 512, 512, 3),  # target: ratio <= 1.5, memory <= 1.5
    "paper": Size(64, 60, 2048, 1024, 3),  # HM-AN: 60 frames, 2048-d features, 3 x 1024
}
MODELS = ("lstm", "hmrnn", "hmrnn-compiled", "hmrnn-graph")


def matmul_flops(model: str, size: Size) -> int:
    """Multiply-adds x 2 of one forward's matrix products (biases and gates aside)."""
    b, t, d, h, layers = size
    if model == "lstm":
        inputs = [d] + [h] * (layers - 1)
        return sum(2 * b * t * (k + h) * 4 * h for k in inputs)
    rows = 4 * h + 1
    total = 2 * b * t * d * rows  # layer 1's input, batched over time
    for layer in range(layers):
        below = 0 if layer == 0 else h
        above = h if layer < layers - 1 else 0
        total += 2 * b * t * (below + h + above) * rows
    return total


def build(model: str, size: Size) -> nn.Module:
    if model == "lstm":
        return nn.LSTM(size.input, size.hidden, size.layers, batch_first=True)
    return HMRNN(size.input, size.hidden, size.layers, compile_step=model == "hmrnn-compiled")


def iteration(model: nn.Module, x: Tensor) -> None:
    out = model(x)
    output = out.output if isinstance(out, tuple) and hasattr(out, "output") else out[0]
    output.sum().backward()


def captured(model: nn.Module, x: Tensor) -> Callable[[], None]:
    """The replay of one iteration captured in a CUDA graph on ``x``'s device, after 3
    warm-up iterations on a side stream (as capture requires); the gradients are zeroed
    inside the graph."""

    def step() -> None:
        model.zero_grad(set_to_none=False)
        iteration(model, x)

    with torch.cuda.device(x.device):  # capture runs on the current device's streams
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    return graph.replay


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_memory_mib(model: nn.Module, x: Tensor, device: torch.device) -> float:
    """Memory one cold iteration needs beyond what is held before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        iteration(model, x)
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = resident_kib()
    iteration(model, x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return max(0, peak - before) / 1024


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One model at one size, in a fresh process (so peak memory is its own)."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    native.kernels()  # load (or build) the fused step's CPU kernels outside the measurement
    torch.manual_seed(0)
    size, device = Size(*job["size"]), torch.device(job["device"])
    model = build(job["model"], size).to(device)
    x = torch.randn(size.batch, size.steps, size.input, device=device)
    compiled, graphed = job["model"] == "hmrnn-compiled", job["model"] == "hmrnn-graph"
    memory = None if compiled or graphed else peak_memory_mib(model, x, device)
    for _ in range(job["warmup"]):
        iteration(model, x)
    if compiled and device.type == "cuda":  # on CPU compilation's own peak hides it
        memory = peak_memory_mib(model, x, device)
    run = captured(model, x) if graphed else (lambda: iteration(model, x))
    walls, cpus = [], []
    for _ in range(job["repeats"]):
        if not graphed:
            model.zero_grad(set_to_none=True)
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "model": job["model"],
        "size": job["name"],
        "shape": size._asdict(),
        "walls": walls,
        "cpus": cpus,
        "peak_memory_mib": memory,
        "matmul_gflop_forward": matmul_flops(job["model"], size) / 1e9,
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of one model at one size: their timings pooled, the
    largest peak memory."""
    walls = [w for run in runs for w in run.pop("walls")]
    cpus = [c for run in runs for c in run.pop("cpus")]
    memories = [run["peak_memory_mib"] for run in runs if run["peak_memory_mib"] is not None]
    return {
        **runs[0],
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "cpu_s_median": statistics.median(cpus),
        "peak_memory_mib": max(memories) if memories else None,
        "rounds": len(runs),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each HM-RNN row against the LSTM row of the same size."""
    lstm = {row["size"]: row for row in rows if row["model"] == "lstm"}
    out = []
    for row in rows:
        base = lstm.get(row["size"])
        if row["model"] == "lstm" or base is None:
            continue
        out.append(
            {
                "size": row["size"],
                "model": row["model"],
                "wall_ratio_median": row["wall_s_median"] / base["wall_s_median"],
                "wall_ratio_min": row["wall_s_min"] / base["wall_s_min"],
                "cpu_ratio_median": row["cpu_s_median"] / base["cpu_s_median"],
                "memory_ratio": None
                if row["peak_memory_mib"] is None
                else row["peak_memory_mib"] / max(base["peak_memory_mib"], 1e-9),
                "matmul_ratio": row["matmul_gflop_forward"] / base["matmul_gflop_forward"],
            }
        )
    return out


def number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# HMRNN vs torch.nn.LSTM on {report['device_name']}",
        "",
        f"torch {report['torch']}, {report['threads']} threads, device `{report['device']}`, "
        f"{report['rounds']} rounds of {report['repeats']} timed iterations after "
        f"{report['warmup']} warm-up, pooled; "
        f"command: `{report['command']}`",
        "",
        "| size (B, T, in, hidden, L) | model | wall median s | wall min s | CPU s "
        "| peak memory MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        shape = ", ".join(str(v) for v in row["shape"].values())
        lines.append(
            f"| {row['size']} ({shape}) | {row['model']} | {row['wall_s_median']:.3f} "
            f"| {row['wall_s_min']:.3f} | {row['cpu_s_median']:.3f} "
            f"| {number(row['peak_memory_mib'], 0)} |"
        )
    lines += [
        "",
        "| size | model | time ratio (median) | time ratio (min) | CPU-time ratio "
        "| memory ratio | matmul ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["ratios"]:
        lines.append(
            f"| {r['size']} | {r['model']} / lstm | {r['wall_ratio_median']:.2f} "
            f"| {r['wall_ratio_min']:.2f} | {r['cpu_ratio_median']:.2f} "
            f"| {number(r['memory_ratio'], 2)} | {r['matmul_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="small,sensor,target", help=f"comma list of {list(SIZES)}"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--compile", action="store_true", help="add HMRNN(compile_step=True)")
    parser.add_argument(
        "--cuda-graph", action="store_true", help="add HMRNN's iteration replayed as a CUDA graph"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="processes per model and size, taking turns"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    if args.cuda_graph and torch.device(args.device).type != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    unknown = set(args.sizes.split(",")) - set(SIZES)
    if unknown:
        parser.error(f"unknown sizes {sorted(unknown)}; choose from {list(SIZES)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device(args.device)
    models = [
        m
        for m in MODELS
        if (args.compile or m != "hmrnn-compiled") and (args.cuda_graph or m != "hmrnn-graph")
    ]
    context = multiprocessing.get_context("spawn")
    rows = []
    for name in args.sizes.split(","):
        runs: dict[str, list[dict[str, Any]]] = {model: [] for model in models}
        for _ in range(args.rounds):
            for model in models:
                job = {
                    "model": model,
                    "name": name,
                    "size": tuple(SIZES[name]),
                    "device": args.device,
                    "threads": args.threads,
                    "warmup": args.warmup if model != "hmrnn-compiled" else max(args.warmup, 3),
                    "repeats": args.repeats,
                }
                with context.Pool(1) as pool:
                    runs[model].append(pool.apply(measure, (job,)))
        for model in models:
            row = pooled(runs[model])
            print(
                f"{name:>6} {model:>14}: wall {row['wall_s_median']:.3f} s (min "
                f"{row['wall_s_min']:.3f}), CPU {row['cpu_s_median']:.3f} s, "
                f"peak MiB {number(row['peak_memory_mib'], 0)}",
                flush=True,
            )
            rows.append(row)
    name = device_name(device)
    report = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "repeats": args.repeats,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "command": " ".join(["python", "benchmarks/hmrnn_vs_lstm.py", *(argv or sys.argv[1:])]),
        "results": rows,
        "ratios": ratios(rows),
    }
    for r in report["ratios"]:
        print(
            f"{r['size']:>6} {r['model']:>14} / lstm: time x{r['wall_ratio_median']:.2f} "
            f"(CPU x{r['cpu_ratio_median']:.2f}), memory ratio {number(r['memory_ratio'], 2)}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    threads = f"-{args.threads}-threads" if args.threads else ""
    stem = args.out / f"hmrnn_vs_lstm_{device.type}-{slug(name)}{threads}"
    write_atomically(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_atomically(stem.with_suffix(".md"), markdown(report))
    print(f"wrote {stem}.json and .md")
    return report


if __name__ == "__main__":
    main()
