"""Clips/s read from memory-mapped features at the paper's shape: is reading the limit?

Generates a temporary features directory of ``--videos`` random videos of
``--frames`` frames of ``49 x 2048`` float16 features (ResNet-152's 7 x 7 x
2048; 64 x 120 frames is 1.5 GB), then times
:class:`examples.action_recognition.features.ClipDataset` through a
``DataLoader`` (batch ``--batch-size``, shuffled) for each ``--workers`` count:
random 60-frame training clips and, once, the evaluation blocks; and, when a
GPU is present, the ``device="cuda"`` copy of the split. The files were just
written, so they are read from the page cache: the figures are the cost of the
memory map, the copy and the collation, not of the disk (a cold read is bounded
by the disk's bandwidth; divide it by the MB per clip printed).

Run from the repository root::

    PYTHONPATH=. python benchmarks/feature_loading.py            # writes benchmarks/results/
    PYTHONPATH=. python benchmarks/feature_loading.py --videos 8 --epochs 1 --no-save   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from examples.action_recognition.features import (
    ClipDataset,
    ClipMode,
    VideoEntry,
    save_features,
    write_index,
)

RESULTS = Path(__file__).parent / "results"


def make_features(directory: Path, videos: int, frames: int, regions: int, channels: int) -> None:
    """Write ``videos`` random float16 feature arrays and their index (all in split 1's train)."""
    rng = np.random.default_rng(0)
    entries = []
    for number in range(videos):
        name = f"v{number:04d}"
        array = rng.standard_normal((frames, regions, channels), dtype=np.float32)
        save_features(directory / "features" / f"{name}.npy", array)
        entries.append(
            VideoEntry(
                name, number % 2, "ab"[number % 2], f"features/{name}.npy", frames, {"1": "train"}
            )
        )
    write_index(directory, "benchmark", ["a", "b"], entries, (regions, channels))


def time_loader(
    dataset: ClipDataset, batch_size: int, workers: int, epochs: int
) -> dict[str, float]:
    """Clips/s over ``epochs`` passes after one untimed warm-up pass."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    clips = 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            started = time.perf_counter()
            clips = 0
        dataset.set_epoch(epoch)
        for batch in loader:
            clips += batch["features"].shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds}


def device_slug() -> str:
    """``cpu``, or the GPU's name in lower case with dashes."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--clip-len", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes (after one warm-up)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    clip_mb = args.clip_len * args.regions * args.channels * 2 / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        make_features(directory, args.videos, args.frames, args.regions, args.channels)
        print(
            f"wrote {args.videos} x {args.frames} frames in {time.perf_counter() - started:.1f} s"
        )
        cases: list[tuple[ClipMode, str | None, int]] = [("random", None, w) for w in args.workers]
        cases.append(("blocks", None, args.workers[-1]))
        if torch.cuda.is_available():
            cases.append(("random", "cuda", 0))
        for mode, device, workers in cases:
            dataset = ClipDataset(directory, clip_len=args.clip_len, mode=mode, device=device)
            result = time_loader(dataset, args.batch_size, workers, args.epochs)
            row = {"mode": mode, "source": device or "mmap", "workers": workers, **result}
            row["mb_per_s"] = result["clips_per_s"] * clip_mb
            rows.append(row)
            print(
                f"{mode:>6} {row['source']:>5} workers={workers}: {row['clips_per_s']:8.1f} clips/s"
                f"  ({row['mb_per_s']:7.0f} MB/s)"
            )

    setup = {
        "videos": args.videos,
        "frames": args.frames,
        "clip": [args.clip_len, args.regions, args.channels],
        "dtype": "float16",
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "clip_mb": clip_mb,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "device": device_slug(),
    }
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"feature_loading_{device_slug()}"
    stem.with_suffix(".json").write_text(
        json.dumps({"setup": setup, "results": rows}, indent=1) + "\n"
    )
    lines = [
        "# Feature loading throughput",
        "",
        f"`PYTHONPATH=. python benchmarks/feature_loading.py` on {setup['machine']} "
        f"({setup['device']}): {args.videos} videos x {args.frames} frames, clips of "
        f"{args.clip_len} x {args.regions} x {args.channels} float16 ({clip_mb:.1f} MB), "
        f"batch {args.batch_size}, {args.epochs} timed epochs after a warm-up, page cache warm.",
        "",
        "| mode | source | workers | clips/s | MB/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["mode"],
            r["source"],
            r["workers"],
            f"{r['clips_per_s']:.1f}",
            f"{r['mb_per_s']:.0f}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
