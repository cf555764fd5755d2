"""Training clips/s of the five HM-AN variants, and the share of time spent waiting for data.

Writes a temporary features directory of random float16 features through
:mod:`examples.action_recognition.features` (``--videos`` videos of
``--frames`` frames, ``--regions x --features``), then runs the real training
loop (:func:`examples.action_recognition.train.train`: data loader, forward,
loss, backward, Adam step, NaN check, logging) for ``--warmup + --iterations``
iterations per variant, and reads its ``metrics.csv``: clips/s and the share
of each iteration spent waiting for the next batch (``data_wait``), over the
iterations after the warm-up. Settings not given here are those of
``configs/hmdb51/<variant>.toml`` (batch 64, 60 frames, 30 for the LSTM
baseline, 3 layers, mixed precision on CUDA).

The paper's scale, on a GPU machine, from the repository root::

    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda

(batch 64, 60 frames, 49 x 2048 features, hidden 1024; the temporary features
take ``videos x frames x 200 kB``, 0.8 GB by default). A reduced scale on a CPU::

    PYTHONPATH=. python benchmarks/train_throughput.py --scale cpu

Results go to ``<out>/train_throughput_<device>.md`` and ``.json``, ``--out``
``benchmarks/results`` by default (``--no-save`` to only print). The feature files
were just written, so the data loader reads them from the page cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples.action_recognition.config import VARIANTS, Config, load_config
from examples.action_recognition.features import (
    VideoEntry,
    feature_file,
    save_features,
    write_index,
)
from examples.action_recognition.train import METRICS_NAME, train

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).parents[1] / "examples" / "action_recognition" / "configs" / "hmdb51"

#: name: (regions, features, hidden, batch, HM-AN clip frames, videos, frames per video)
SCALES = {
    "paper": (49, 2048, 1024, 64, 60, 64, 64),
    "cpu": (49, 256, 128, 16, 30, 32, 32),
}


def write_random_features(
    directory: Path, videos: int, frames: int, shape: tuple[int, int]
) -> None:
    """``videos`` videos of random float16 features, all in the training split of split 1."""
    rng = np.random.default_rng(0)
    entries = []
    for n in range(videos):
        video_id = f"v{n:04d}"
        array = rng.standard_normal((frames, *shape), dtype=np.float32)
        save_features(directory / feature_file(video_id), array)
        entries.append(VideoEntry(video_id, n % 2, f"c{n % 2}", feature_file(video_id), frames,
                                  {"1": "train"}))  # fmt: skip
    write_index(directory, "random", ["c0", "c1"], entries, shape)


def scaled(config: Config, scale: tuple[int, ...], iterations: int, workers: int) -> Config:
    """``config`` at ``scale`` (hidden, batch, frames), run for ``iterations``, logged every one."""
    _, _, hidden, batch, frames, _, _ = scale
    clip = frames // 2 if config.variant == "lstm_soft" else frames
    return replace(
        config,
        data=replace(config.data, clip_len=clip, eval_clip_len=clip, num_workers=workers),
        model=replace(config.model, hidden_size=hidden),
        optim=replace(config.optim, batch_size=batch),
        train=replace(
            config.train, iterations=iterations, log_every=1, checkpoint_every=iterations
        ),
    )


def measure(config: Config, features: Path, run: Path, device: str, warmup: int) -> dict[str, Any]:
    """Train, then summarise ``metrics.csv`` over the iterations after ``warmup``."""
    train(config, features, run, device=device, progress=False)
    with (run / METRICS_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))[warmup:]
    seconds = [config.optim.batch_size / float(r["clips_per_s"]) for r in rows]
    waits = [float(r["data_wait"]) * s for r, s in zip(rows, seconds, strict=True)]
    return {
        "variant": config.variant,
        "clip_frames": config.data.clip_len,
        "iterations": len(rows),
        "clips_per_s": config.optim.batch_size * len(rows) / sum(seconds),
        "seconds_per_iteration": sum(seconds) / len(rows),
        "data_wait_share": sum(waits) / sum(seconds),
    }


def device_slug(device: str) -> str:
    if device.startswith("cuda"):
        return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", choices=sorted(SCALES), default=None,
                        help="default: paper on CUDA, cpu otherwise")  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=10, help="measured iterations")
    parser.add_argument("--warmup", type=int, default=3, help="iterations not measured")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the tables")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scale_name = args.scale or ("paper" if args.device.startswith("cuda") else "cpu")
    scale = SCALES[scale_name]
    regions, size, hidden, batch, frames, videos, video_frames = scale
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        features = Path(tmp) / "features"
        write_random_features(features, videos, video_frames, (regions, size))
        for variant in args.variants:
            config = scaled(
                load_config(CONFIGS / f"{variant}.toml"),
                scale,
                args.warmup + args.iterations,
                args.workers,
            )
            row = measure(config, features, Path(tmp) / variant, args.device, args.warmup)
            rows.append(row)
            print(
                f"{variant:>22}: {row['clips_per_s']:8.1f} clips/s, "
                f"{row['seconds_per_iteration']:.3f} s/iteration, "
                f"waiting for data {100 * row['data_wait_share']:.1f}%",
                flush=True,
            )
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    )
    setup = {
        "device": device_name,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
        "scale": scale_name,
        "batch": batch,
        "frames": frames,
        "regions_x_features": f"{regions} x {size}",
        "hidden": hidden,
        "layers": 3,
        "workers": args.workers,
        "amp": args.device.startswith("cuda"),
    }
    if args.no_save:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"train_throughput_{device_slug(args.device)}"
    stem.with_suffix(".json").write_text(
        json.dumps({"setup": setup, "results": rows}, indent=1) + "\n"
    )
    command = " ".join(["PYTHONPATH=. python benchmarks/train_throughput.py", *sys.argv[1:]])
    lines = [
        "# Training throughput",
        "",
        f"`{command}` on {device_name} ({setup['machine']}): batch {batch}, "
        f"{frames} frames per clip ({frames // 2} for the LSTM baseline), "
        f"{regions} x {size} features, 3 layers of {hidden}, {args.workers} loader workers, "
        f"mixed precision {'on' if setup['amp'] else 'off'}; {args.iterations} iterations "
        f"measured after {args.warmup} of warm-up.",
        "",
        "| Variant | Clips/s | s/iteration | Waiting for data |",
        "|---|---|---|---|",
        *(
            f"| {r['variant']} | {r['clips_per_s']:.1f} | {r['seconds_per_iteration']:.3f} | "
            f"{100 * r['data_wait_share']:.1f}% |"
            for r in rows
        ),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
