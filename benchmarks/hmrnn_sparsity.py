"""Inference time of ``HMRNN`` against the boundary rate, beside ``torch.nn.LSTM``.

Under ``torch.no_grad()`` with hard boundaries, rows in COPY (the layer's own
boundary at ``t-1`` and the one below at ``t`` both 0) keep their state, so the
fused step computes only their boundary logit (one dot product) instead of the
whole gate product, and rows in FLUSH skip the forget gate's columns. Here every
layer's boundary is forced to fire at a chosen rate ``r`` (the boundary row of the
weights set to 0, its bias to ``logit(r)``, Gumbel-sigmoid draws), so every layer
FLUSHes on a share ``r`` of its steps and layers 2..L COPY on ``(1 - r)²``. Each
rate is timed with the skipping on and off (``HMRNN.skip_copy_rows``), in one
process beside the LSTM, in alternation.

Example (from the repository root)::

    python benchmarks/hmrnn_sparsity.py --threads 1 --out benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stochrnn import HMRNN
from stochrnn.hmrnn import native

RATES = (0.1, 0.3, 0.6, 1.0)


def forced_rate(rnn: HMRNN, rate: float) -> None:
    """Every layer's boundary fires with probability ``rate`` whatever its input."""
    logit = 30.0 if rate >= 1.0 else math.log(rate / (1.0 - rate))
    with torch.no_grad():
        for cell in rnn.layers:
            cell.weight[-1].zero_()
            cell.bias[-1] = logit


def product_work(rnn: HMRNN, boundaries: torch.Tensor, inputs: int) -> float:
    """Multiply-adds of the gate products with the native kernel's skipping, over those of
    ``nn.LSTM`` of the same sizes: per layer and step, a row not in COPY or FLUSH reads
    all ``4H + 1`` columns of its ``(K + 1)``-row weights, a FLUSH row all but the forget
    gate's ``H``, a COPY row one dot product of ``H``."""
    z = boundaries.transpose(0, 1)  # (T, B, L)
    prev = torch.cat([torch.zeros_like(z[:1]), z[:-1]])  # each layer's boundary at t-1
    work = lstm = 0.0
    sizes = list(rnn.hidden_sizes)
    for l, hidden in enumerate(sizes):
        width = (inputs if l == 0 else sizes[l - 1]) + hidden
        depth = width + (sizes[l + 1] if l + 1 < len(sizes) else 0) + 1
        below = torch.ones_like(z[..., 0]) if l == 0 else z[..., l - 1]
        flush = prev[..., l] == 1
        copy = (prev[..., l] == 0) & (below == 0)
        full = ~flush & ~copy
        work += depth * (4 * hidden + 1) * float(full.sum())
        work += depth * (3 * hidden + 1) * float(flush.sum()) + hidden * float(copy.sum())
        lstm += width * 4 * hidden * z[..., 0].numel()
    return work / lstm


def timed(fn: Any) -> float:
    """Process CPU time of one call: steadier than wall time on a shared machine (with
    several threads it sums them, for both models alike)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64,60,512,512,3", help="B,T,input,hidden,layers")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, steps, inputs, hidden, layers = (int(v) for v in args.size.split(","))
    native.kernels()
    torch.manual_seed(0)
    x = torch.randn(batch, steps, inputs)
    lstm = torch.nn.LSTM(inputs, hidden, layers, batch_first=True)
    rnn = HMRNN(inputs, hidden, layers)
    rows = []
    with torch.no_grad():
        for _ in range(2):
            lstm(x)
            rnn(x)
        for rate in RATES:
            forced_rate(rnn, rate)
            rnn.skip_copy_rows = True
            boundaries = rnn(x).boundaries
            copy = 1.0 - (boundaries[..., :-1] > 0).float().mean().item()
            work = product_work(rnn, boundaries, inputs)
            times: dict[str, list[float]] = {"lstm": [], "skip": [], "full": []}
            for _ in range(args.repeats):  # alternate, so that load hits all alike
                times["lstm"].append(timed(lambda: lstm(x)))
                rnn.skip_copy_rows = True
                times["skip"].append(timed(lambda: rnn(x)))
                rnn.skip_copy_rows = False
                times["full"].append(timed(lambda: rnn(x)))
            median = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "rate": rate,
                "copy_share_layers_2_to_L": (1.0 - rate) ** 2,
                "boundary_zero_share_measured": copy,
                "product_work_over_lstm": work,
                "lstm_s": median["lstm"],
                "hmrnn_skip_s": median["skip"],
                "hmrnn_full_s": median["full"],
                "skip_over_lstm": median["skip"] / median["lstm"],
                "full_over_lstm": median["full"] / median["lstm"],
            }
            rows.append(row)
            print(
                f"rate {rate:.1f}: lstm {row['lstm_s']:.3f} CPU s, hmrnn skipping "
                f"{row['hmrnn_skip_s']:.3f} s (x{row['skip_over_lstm']:.2f}), not skipping "
                f"{row['hmrnn_full_s']:.3f} s (x{row['full_over_lstm']:.2f})",
                flush=True,
            )
    report = {
        "size": {"batch": batch, "steps": steps, "input": inputs, "hidden": hidden},
        "layers": layers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_kernels": native.kernels() is not None,
        "command": " ".join(["python", "benchmarks/hmrnn_sparsity.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    lines = [
        f"# HMRNN inference against the boundary rate (B={batch}, T={steps}, in={inputs}, "
        f"hidden={hidden}, {layers} layers)",
        "",
        f"torch {report['torch']}, {report['threads']} threads, process CPU time, median of "
        f"{args.repeats}, under `torch.no_grad()`; command: `{report['command']}`",
        "",
        "| boundary rate | COPY share of layers 2..L | products' work / LSTM's | nn.LSTM s "
        "| HMRNN s (work skipped) "
        "| ratio | HMRNN s (nothing skipped) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']:.0%} | {r['copy_share_layers_2_to_L']:.2f} "
            f"| {r['product_work_over_lstm']:.2f} | {r['lstm_s']:.3f} "
            f"| {r['hmrnn_skip_s']:.3f} | {r['skip_over_lstm']:.2f} | {r['hmrnn_full_s']:.3f} "
            f"| {r['full_over_lstm']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"hmrnn_sparsity_cpu-{report['threads']}-threads"
    for suffix, text in (
        (".json", json.dumps(report, indent=2) + "\n"),
        (".md", "\n".join(lines) + "\n"),
    ):
        with tempfile.NamedTemporaryFile("w", dir=args.out, delete=False, suffix=".tmp") as tmp:
            tmp.write(text)
        os.replace(tmp.name, stem.with_suffix(suffix))
    print(f"wrote {stem}.json and .md")
    return report


if __name__ == "__main__":
    main()
