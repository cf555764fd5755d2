"""Inference time of ``HMRNN`` against the boundary rate, beside ``torch.nn.LSTM``.

Under ``torch.no_grad()`` with hard boundaries, rows in COPY (the layer's own
boundary at ``t-1`` and the one below at ``t`` both 0) keep their state, so the
fused step computes only their boundary logit (one dot product) instead of the
whole gate product; rows in FLUSH skip the forget gate's columns, and rows in
UPDATE below the top layer the weights that multiply the (zero) input from the
layer above. The boundaries are forced to fire at chosen rates (a layer's boundary row of the
weights set to 0, its bias to ``logit(r)``, Gumbel-sigmoid draws), in two
scenarios:

* ``layer 1``: layer 1 fires at rate ``r``, the layers above at a fixed rate
  (``--upper-rate``, 30%: where trained models settled on real data with the
  prior's target at 0.3, the default before 2026-12-03; with the default 0.5
  they settle near 50%: ``--upper-rate 0.5``). Layer 2 then receives input
  (UPDATE) on a share ``r`` of the steps on which it does not FLUSH, and COPYs
  on the rest: the HM-RNN paper's computational argument.
* ``every layer``: every layer fires at rate ``r``, so every layer FLUSHes on a
  share ``r`` of its steps and layers 2..L COPY on ``(1 - r)²``. Here the work
  is flat from 60% to 100% (FLUSH rows are cheaper than UPDATE rows, and at
  100% every row FLUSHes): the forget gate's weights, read for the UPDATE rows
  at 60%, are not read at all at 100%.

Each rate is timed with the skipping on and off (``HMRNN.skip_copy_rows``), in
one process beside the LSTM, in alternation. Two models of the cost go beside
the times: the products' multiply-adds and the weights read per step, each over
the LSTM's.

Example (from the repository root)::

    python benchmarks/hmrnn_sparsity.py --threads 1 --out benchmarks/results/

Results go to ``<out>/hmrnn_sparsity_cpu-<cpu>-<N>-threads[-<size>].json`` and ``.md``
(the size, ``B x T x in x hidden x layers``, when not the default).
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
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmrnn_vs_lstm import device_name, slug  # beside this script

from stochrnn import HMRNN
from stochrnn.hmrnn import native

RATES = (0.1, 0.3, 0.6, 1.0)
DEFAULT_SIZE = "64,60,512,512,3"
SCENARIOS = ("layer 1", "every layer")


def forced_rates(rnn: HMRNN, rates: list[float]) -> None:
    """Layer ``l``'s boundary fires with probability ``rates[l]`` whatever its input."""
    with torch.no_grad():
        for cell, rate in zip(rnn.layers, rates, strict=True):
            cell.weight[-1].zero_()
            cell.bias[-1] = 30.0 if rate >= 1.0 else math.log(rate / (1.0 - rate))


def _operations(rnn: HMRNN, boundaries: Tensor) -> list[dict[str, Tensor]]:
    """Per layer, the (T, B) masks of its rows by what the native inference kernel computes
    for them: ``flush`` (its own boundary fired at ``t-1``), ``copy`` (neither it nor the one
    below), ``update`` (the one below fired, it did not; below the top layer: these read
    the weights without the layer above's part, whose input is 0 for them) and ``full``
    (UPDATE rows of the top layer)."""
    z = boundaries.transpose(0, 1)  # (T, B, L)
    prev = torch.cat([torch.zeros_like(z[:1]), z[:-1]])  # each layer's boundary at t-1
    masks = []
    layers = len(rnn.hidden_sizes)
    for l in range(layers):
        below = torch.ones_like(z[..., 0]) if l == 0 else z[..., l - 1]
        flush = prev[..., l] == 1
        copy = (prev[..., l] == 0) & (below == 0)
        update = ~flush & ~copy
        none = torch.zeros_like(update)
        top = l == layers - 1
        masks.append(
            {
                "flush": flush,
                "copy": copy,
                "update": none if top else update,
                "full": update if top else none,
            }
        )
    return masks


def _widths(rnn: HMRNN, inputs: int) -> list[tuple[int, int, int]]:
    """Per layer: its hidden size, the width of what it reads from below (the input or
    the layer below) and from above (0 for the top layer)."""
    sizes = list(rnn.hidden_sizes)
    return [
        (hidden, inputs if l == 0 else sizes[l - 1], sizes[l + 1] if l + 1 < len(sizes) else 0)
        for l, hidden in enumerate(sizes)
    ]


def _plans(rows: dict[str, Tensor]) -> Tensor:
    """Per step, whether the kernel computes the UPDATE rows apart (all gates, without the
    layer above's weights; when they outnumber the FLUSH rows) or with the others (all but
    the forget gate, over all the weights; then their forget gate without the layer
    above's)."""
    updates, flushes = rows["update"].sum(1), rows["flush"].sum(1)
    return (flushes == 0) | (updates > flushes)


def product_work(rnn: HMRNN, boundaries: Tensor, inputs: int) -> float:
    """Multiply-adds of the gate products with the native kernel's skipping, over those of
    ``nn.LSTM`` of the same sizes: per layer and step, with ``K + 1`` rows of weights
    (``K'`` before the layer above's) and ``4H + 1`` columns, a FLUSH row reads all but
    the forget gate's ``H`` columns, an UPDATE row below the top layer all columns of the
    first ``K'`` rows (or, see ``_plans``, all rows but for its forget gate), a COPY row
    one dot product of ``H``, any other row everything."""
    work = lstm = 0.0
    for rows, (hidden, below, above) in zip(
        _operations(rnn, boundaries), _widths(rnn, inputs), strict=True
    ):
        depth = below + hidden + above + 1
        apart = _plans(rows)
        updates = rows["update"].sum(1).double()
        work += depth * (4 * hidden + 1) * float(rows["full"].sum())
        work += (depth - above) * (4 * hidden + 1) * float(updates[apart].sum())
        together = updates[~apart].sum()
        work += (depth * (3 * hidden + 1) + (depth - above) * hidden) * float(together)
        work += depth * (3 * hidden + 1) * float(rows["flush"].sum())
        work += hidden * float(rows["copy"].sum())
        lstm += (below + hidden) * 4 * hidden * rows["flush"].numel()
    return work / lstm


def weights_read(rnn: HMRNN, boundaries: Tensor, inputs: int) -> float:
    """Weights read by the gate products, over ``nn.LSTM``'s: its recurrent ``4H x H`` at
    every step, its input weights once (its input product runs over all steps at once).
    Per layer and step the kernel reads the ``[i, o, g, logit]`` columns of all its
    weights if it has rows not in COPY (but for UPDATE rows computed apart), the forget
    gate's if it has rows in neither COPY nor FLUSH (the first ``K'`` rows only for
    UPDATE rows), all columns of the first ``K'`` rows for UPDATE rows computed apart, and
    the logit's recurrent weights for COPY rows."""
    read = lstm = 0.0
    for rows, (hidden, below, above) in zip(
        _operations(rnn, boundaries), _widths(rnn, inputs), strict=True
    ):
        depth = below + hidden + above + 1
        apart = _plans(rows)
        present = {name: mask.any(dim=1) for name, mask in rows.items()}  # per step
        update_apart, update_with = present["update"] & apart, present["update"] & ~apart
        read += (depth - above) * (4 * hidden + 1) * float(update_apart.sum())
        others = present["flush"] | present["full"] | update_with
        read += depth * (3 * hidden + 1) * float(others.sum())
        read += (depth - above) * hidden * float(update_with.sum())
        read += depth * hidden * float(present["full"].sum())
        read += hidden * float(present["copy"].sum())
        lstm += rows["flush"].shape[0] * 4 * hidden * hidden + 4 * hidden * below
    return read / lstm


def timed(fn: Any) -> tuple[float, float]:
    """Wall time and process CPU time of one call. CPU time is steadier on a shared
    machine; with several threads it sums them (threads that wait spinning included),
    so the wall time says what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=DEFAULT_SIZE, help="B,T,input,hidden,layers")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--upper-rate",
        type=float,
        default=0.3,
        help="the firing rate of layers 2..L in the 'layer 1' scenario",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if not 0.0 < args.upper_rate <= 1.0:
        parser.error(f"--upper-rate must be in (0, 1], got {args.upper_rate}")
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
        for scenario in SCENARIOS:
            for rate in RATES:
                upper = rate if scenario == "every layer" else args.upper_rate
                forced_rates(rnn, [rate] + [upper] * (layers - 1))
                rnn.skip_copy_rows = True
                boundaries = rnn(x).boundaries
                operations = _operations(rnn, boundaries)
                copy = sum(float(rows["copy"].float().mean()) for rows in operations[1:])
                times: dict[str, list[tuple[float, float]]] = {"lstm": [], "skip": [], "full": []}
                for _ in range(args.repeats):  # alternate, so that load hits all alike
                    times["lstm"].append(timed(lambda: lstm(x)))
                    rnn.skip_copy_rows = True
                    times["skip"].append(timed(lambda: rnn(x)))
                    rnn.skip_copy_rows = False
                    times["full"].append(timed(lambda: rnn(x)))
                median = {k: statistics.median(c for _, c in v) for k, v in times.items()}
                wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
                row = {
                    "scenario": scenario,
                    "rate": rate,
                    "upper_rate": upper,
                    "copy_share_layers_2_to_L": copy / max(1, layers - 1),
                    "product_work_over_lstm": product_work(rnn, boundaries, inputs),
                    "weights_read_over_lstm": weights_read(rnn, boundaries, inputs),
                    "lstm_s": median["lstm"],
                    "hmrnn_skip_s": median["skip"],
                    "hmrnn_full_s": median["full"],
                    "skip_over_lstm": median["skip"] / median["lstm"],
                    "full_over_lstm": median["full"] / median["lstm"],
                    "lstm_wall_s": wall["lstm"],
                    "hmrnn_skip_wall_s": wall["skip"],
                    "hmrnn_full_wall_s": wall["full"],
                    "skip_over_lstm_wall": wall["skip"] / wall["lstm"],
                    "full_over_lstm_wall": wall["full"] / wall["lstm"],
                }
                rows.append(row)
                print(
                    f"{scenario}, rate {rate:.1f}: lstm {row['lstm_s']:.3f} CPU s, hmrnn "
                    f"skipping {row['hmrnn_skip_s']:.3f} s (x{row['skip_over_lstm']:.2f}), "
                    f"not skipping {row['hmrnn_full_s']:.3f} s (x{row['full_over_lstm']:.2f}); "
                    f"wall-time ratio skipping x{row['skip_over_lstm_wall']:.2f}",
                    flush=True,
                )
    report = {
        "size": {"batch": batch, "steps": steps, "input": inputs, "hidden": hidden},
        "layers": layers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device_name(torch.device("cpu")),
        "native_kernels": native.kernels() is not None,
        "command": " ".join(["python", "benchmarks/hmrnn_sparsity.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    write_report(report, args.repeats, args.out)
    return report


def write_report(report: dict[str, Any], repeats: int, out: Path) -> None:
    size = report["size"]
    lines = [
        f"# HMRNN inference against the boundary rate (B={size['batch']}, T={size['steps']}, "
        f"in={size['input']}, hidden={size['hidden']}, {report['layers']} layers)",
        "",
        f"{report['device']}, torch {report['torch']}, {report['threads']} threads, median of "
        f"{repeats}, under `torch.no_grad()`; command: `{report['command']}`. Times are "
        "process CPU time (steadier on a shared machine; with several threads the sum over "
        "them), ratios also of wall time.",
        "",
        "Scenarios: `layer 1` fires at the rate, the layers above at the rate in brackets; "
        "`every layer` fires at the rate. Work: the gate products' multiply-adds over "
        "`nn.LSTM`'s; weights read: the weights the products read over `nn.LSTM`'s "
        "(`weights_read` in the script).",
        "",
        "| scenario | boundary rate | COPY share of layers 2..L | products' work / LSTM's "
        "| weights read / LSTM's | nn.LSTM s | HMRNN s (work skipped) "
        "| ratio | wall-time ratio | HMRNN s (nothing skipped) | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        scenario = r["scenario"]
        if scenario == "layer 1":
            scenario += f" (above: {r['upper_rate']:.0%})"
        lines.append(
            f"| {scenario} | {r['rate']:.0%} | {r['copy_share_layers_2_to_L']:.2f} "
            f"| {r['product_work_over_lstm']:.2f} | {r['weights_read_over_lstm']:.2f} "
            f"| {r['lstm_s']:.3f} | {r['hmrnn_skip_s']:.3f} | {r['skip_over_lstm']:.2f} "
            f"| {r['skip_over_lstm_wall']:.2f} "
            f"| {r['hmrnn_full_s']:.3f} | {r['full_over_lstm']:.2f} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    size = report["size"]
    shape = f"{size['batch']},{size['steps']},{size['input']},{size['hidden']},{report['layers']}"
    suffix = "" if shape == DEFAULT_SIZE else "-" + shape.replace(",", "x")
    stem = out / f"hmrnn_sparsity_cpu-{slug(report['device'])}-{report['threads']}-threads{suffix}"
    for suffix, text in (
        (".json", json.dumps(report, indent=2) + "\n"),
        (".md", "\n".join(lines) + "\n"),
    ):
        with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as tmp:
            tmp.write(text)
        os.replace(tmp.name, stem.with_suffix(suffix))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
