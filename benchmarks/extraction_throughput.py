"""Frames/s of the feature extraction: the backbone alone, and end to end from generated videos.

Generates ``--videos`` synthetic videos of ``--frames`` frames at ``--size``
in the UCF Sports layout (``<Class>/<NNN>/``): JPEG frame folders
(``--source frames``, Pillow only) or one MPEG-4 AVI each (``--source video``,
needs PyAV). Then, for each precision (``fp32``, and ``amp`` = autocast float16
on CUDA):

* **backbone**: :class:`FrameEncoder` on a ``(batch, 224, 224, 3)`` uint8
  batch already in host memory (normalisation, transfer, backbone, float16
  copy back), after warm-up;
* **end to end**: :func:`examples.action_recognition.extract.extract` on the
  generated dataset (decoding in ``--workers`` processes, resize to 224 x 224,
  backbone, ``.npy`` writes) into a fresh directory.

Needs only torch, numpy, Pillow (and torchvision for ``resnet152``; PyAV for
``--source video``). On a GPU machine, from the repository root::

    PYTHONPATH=. python benchmarks/extraction_throughput.py --backbone resnet152 --random-weights \\
        --device cuda --workers 8

Here, on a CPU, as a smoke run::

    PYTHONPATH=. python benchmarks/extraction_throughput.py --backbone tiny --videos 4 --frames 32

Random weights give the speed of real weights (same architecture), not their
features. Results go to
``benchmarks/results/extraction_throughput_<backbone>_<device>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from examples.action_recognition.backbones import FrameEncoder, load_backbone
from examples.action_recognition.datasets import list_dataset
from examples.action_recognition.extract import extract

RESULTS = Path(__file__).parent / "results"
CLASSES = ("Run-Side", "Walk-Front")


def synthetic_frames(number: int, frames: int, width: int, height: int) -> np.ndarray:
    """Frames of a smooth moving pattern plus noise (JPEG/MPEG-4 sizes like real footage)."""
    rng = np.random.default_rng(number)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        phase = 0.15 * t + number
        base = 127 + 60 * np.sin(x / 17 + phase)[..., None] * np.cos(y / 23 - phase)[..., None]
        noise = rng.normal(0, 12, (height, width, 3))
        clip[t] = np.clip(base + noise + [0, 30, -30], 0, 255).astype(np.uint8)
    return clip


def write_dataset(root: Path, source: str, videos: int, frames: int, size: tuple[int, int]) -> None:
    """``videos`` videos split over two classes, as JPEG folders or AVI files."""
    for number in range(videos):
        folder = root / CLASSES[number % 2] / f"{number:03d}"
        folder.mkdir(parents=True)
        clip = synthetic_frames(number, frames, *size)
        if source == "frames":
            for t, frame in enumerate(clip):
                Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=90)
        else:
            import av

            with av.open(str(folder / "clip.avi"), "w") as container:
                stream = container.add_stream("mpeg4", rate=25)
                stream.width, stream.height = size
                stream.pix_fmt = "yuv420p"
                for frame in clip:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode(None))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backbone(encoder: FrameEncoder, batch_size: int, repeats: int) -> dict[str, float]:
    """Frames/s of the encoder on one host uint8 batch, after two warm-up calls."""
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
    for _ in range(2):
        encoder(batch)
    _synchronize(encoder.device)
    started = time.perf_counter()
    for _ in range(repeats):
        encoder(batch)
    _synchronize(encoder.device)
    seconds = time.perf_counter() - started
    frames = batch_size * repeats
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds}


def time_extraction(
    root: Path, splits: Path, encoder: FrameEncoder, batch_size: int, workers: int
) -> dict[str, float]:
    """Frames/s and videos/s of one extraction run into a fresh directory."""
    listing = list_dataset("ucf_sports", root, splits)
    with tempfile.TemporaryDirectory() as out:
        summary = extract(listing, Path(out), encoder, batch_size=batch_size, workers=workers)
    if summary.failures:
        raise RuntimeError(f"extraction failed on generated videos: {summary.failures}")
    return {
        "videos": summary.videos,
        "frames": summary.frames,
        "seconds": summary.seconds,
        "frames_per_s": summary.frames / summary.seconds,
        "videos_per_s": summary.videos / summary.seconds,
    }


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name in lower case with dashes."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_results(setup: dict[str, Any], rows: list[dict[str, Any]], stem: Path) -> None:
    """``stem.json`` with everything, ``stem.md`` with a table."""
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(
        json.dumps({"setup": setup, "results": rows}, indent=1) + "\n"
    )
    lines = [
        "# Feature extraction throughput",
        "",
        f"`{setup['command']}` on {setup['machine']} ({setup['device']}): backbone "
        f"`{setup['backbone']}`, {setup['videos']} generated videos x {setup['frames']} frames "
        f"at {setup['size'][0]}x{setup['size'][1]} ({setup['source']}), batch "
        f"{setup['batch_size']}, {setup['workers']} decoding workers.",
        "",
        "| precision | stage | frames/s | videos/s |",
        "|---|---|---|---|",
    ]
    for row in rows:
        videos = f"{row['videos_per_s']:.2f}" if "videos_per_s" in row else ""
        lines.append(
            f"| {row['precision']} | {row['stage']} | {row['frames_per_s']:.0f} | {videos} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--random-weights", action="store_true", help="resnet152 without weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "amp"), default=None)
    parser.add_argument("--source", choices=("frames", "video"), default="frames")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated videos")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10, help="timed backbone calls")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    precisions = args.precision or (["fp32", "amp"] if device.type == "cuda" else ["fp32"])
    width, height = (int(n) for n in args.size.split("x"))
    backbone = load_backbone(args.backbone, args.weights, args.random_weights)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root, splits = Path(tmp) / "ucf", Path(tmp) / "split.txt"
        started = time.perf_counter()
        write_dataset(root, args.source, args.videos, args.frames, (width, height))
        print(f"generated {args.videos} videos in {time.perf_counter() - started:.1f} s")
        for precision in precisions:
            encoder = FrameEncoder(backbone, device, amp=precision == "amp")
            stages = {
                "backbone": time_backbone(encoder, args.batch_size, args.repeats),
                "end to end": time_extraction(root, splits, encoder, args.batch_size, args.workers),
            }
            for stage, result in stages.items():
                rows.append({"precision": precision, "stage": stage, **result})
                print(f"{precision:>5} {stage:>10}: {result['frames_per_s']:8.1f} frames/s")

    setup = {
        "command": "PYTHONPATH=. python benchmarks/extraction_throughput.py "
        + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "device": device_slug(device),
        "backbone": args.backbone,
        "feature_shape": list(encoder.feature_shape),
        "source": args.source,
        "videos": args.videos,
        "frames": args.frames,
        "size": [width, height],
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    if not args.no_save:
        backbone_slug = re.sub(r"[^a-z0-9]+", "-", args.backbone.lower()).strip("-")
        stem = RESULTS / f"extraction_throughput_{backbone_slug}_{device_slug(device)}"
        write_results(setup, rows, stem)
        print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
