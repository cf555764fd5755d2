"""Extract per-frame backbone features of a dataset into a features directory.

Usage::

    python -m examples.action_recognition.extract --dataset hmdb51 --root data/hmdb51_org \\
        --splits data/testTrainMulti_7030_splits --out features/hmdb51 \\
        --backbone resnet152 --weights resnet152-394f9c45.pth --device cuda

Each video of the dataset (:mod:`.datasets`) is decoded (:mod:`.decode`:
frames resized to 224 x 224, sampled by ``--frames``), sent through the
backbone (:mod:`.backbones`, ImageNet-normalised) in chunks of at most
``--batch-size`` frames, and saved as ``OUT/features/<id>.npy``, float16
``(frames, h*w, C)``, written to a temporary name then renamed. The format of
``OUT`` is in :mod:`.features`.

Resuming: a video whose ``.npy`` exists is done and skipped, so re-running
after a crash loses at most the videos in flight. Videos that failed before are
tried again.

Sharding: ``--shard I/N`` (0 <= I < N) takes the videos at positions ``I, I+N,
I+2N, ...`` of the id-sorted listing, so N processes (one per GPU) share the
work. At the end of every run, under an exclusive lock on ``OUT/.lock``,
``index.json`` and ``failures.txt`` are rebuilt from *all* the ``.npy`` files
present, not only this run's: whichever shard finishes last writes the index of
the whole dataset, and N shards together give exactly the directory of one
unsharded run. (Re-running without ``--shard`` afterwards extracts nothing and
rewrites the same index.)

``failures.txt`` lists every video of the dataset that is not in the index
with the reason: decoding failures (corrupt or unreadable inputs, logged and
skipped) and listing problems (a video in a split file but missing on disk,
on disk but in no split file).

Decoding runs in ``--workers`` DataLoader processes, overlapping the backbone.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .backbones import FrameEncoder, load_backbone
from .datasets import DATASETS, DatasetListing, VideoSource, list_dataset
from .decode import DecodeError, FrameSampling, read_frames
from .features import (
    VideoEntry,
    feature_file,
    read_failures,
    save_features,
    write_failures,
    write_index,
)

__all__ = ["ExtractionSummary", "extract", "main", "parse_shard", "rebuild_outputs"]

log = logging.getLogger(__name__)

#: Split file drawn for UCF Sports when ``--splits`` is not given, relative to ``--out``.
UCF_SPLIT_NAME = "ucf_sports_split.txt"


@dataclass(frozen=True)
class ExtractionSummary:
    """What one run did: videos and frames extracted, seconds spent, failures of this run."""

    videos: int
    frames: int
    seconds: float
    failures: dict[str, str]


@dataclass(frozen=True)
class _Chunk:
    """At most ``batch_size`` decoded frames of the video at ``position`` of the work list."""

    position: int
    frames: np.ndarray | None  # (n, 224, 224, 3) uint8; None for an empty last chunk or an error
    last: bool
    error: str | None = None


class _VideoChunks(IterableDataset[_Chunk]):
    """Decoded frames of the work list, chunk by chunk; DataLoader workers take every k-th video."""

    def __init__(self, paths: Sequence[Path], sampling: FrameSampling, batch_size: int) -> None:
        self.paths = list(paths)
        self.sampling = sampling
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[_Chunk]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for position in range(first, len(self.paths), step):
            yield from self._chunks(position)

    def _chunks(self, position: int) -> Iterator[_Chunk]:
        buffer: list[np.ndarray] = []
        try:
            for frame in read_frames(self.paths[position], self.sampling):
                buffer.append(frame)
                if len(buffer) == self.batch_size:
                    yield _Chunk(position, np.stack(buffer), last=False)
                    buffer = []
        except DecodeError as error:
            yield _Chunk(position, None, last=True, error=str(error))
            return
        yield _Chunk(position, np.stack(buffer) if buffer else None, last=True)


def _progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar (tqdm imported only here), or None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="extract", dynamic_ncols=True)


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse ``"I/N"`` with ``0 <= I < N``.

    Examples
    --------
    >>> parse_shard("1/4")
    (1, 4)
    """
    index, _, count = spec.partition("/")
    if index.isdigit() and count.isdigit() and 0 <= int(index) < int(count):
        return int(index), int(count)
    raise ValueError(f"expected --shard I/N with 0 <= I < N, got {spec!r}")


def _done_videos(
    out_dir: Path, videos: Sequence[VideoSource], feature_shape: tuple[int, int]
) -> dict[str, int]:
    """``{id: num_frames}`` of the videos whose feature file exists; checks their shape."""
    done: dict[str, int] = {}
    for video in videos:
        path = out_dir / feature_file(video.id)
        if path.is_file():
            shape = np.load(path, mmap_mode="r").shape
            if tuple(shape[1:]) != feature_shape:
                raise ValueError(
                    f"{path} has {tuple(shape[1:])} features per frame but the backbone gives "
                    f"{feature_shape}: use another --out for another backbone"
                )
            done[video.id] = int(shape[0])
    return done


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    with open(out_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rebuild_outputs(
    out_dir: Path,
    listing: DatasetListing,
    feature_shape: tuple[int, int],
    attempted: set[str],
    failed: Mapping[str, str],
) -> None:
    """Rewrite ``index.json`` and ``failures.txt`` from all feature files in ``out_dir``.

    Failures are the listing's problems, this run's failures (``failed``
    among the ``attempted`` ids), and earlier failures of videos that this
    run did not attempt and that are still not done (another shard's).
    """
    with _locked(out_dir):
        done = _done_videos(out_dir, listing.videos, feature_shape)
        entries = [
            VideoEntry(v.id, v.label, v.class_name, feature_file(v.id), done[v.id], v.splits)
            for v in listing.videos
            if v.id in done
        ]
        listed = {v.id for v in listing.videos}
        earlier = {
            i: reason
            for i, reason in read_failures(out_dir).items()
            if i in listed and i not in done and i not in attempted
        }
        write_index(out_dir, listing.name, listing.classes, entries, feature_shape)
        write_failures(out_dir, {**listing.problems, **earlier, **failed})


def extract(
    listing: DatasetListing,
    out_dir: Path,
    encoder: FrameEncoder,
    sampling: FrameSampling | None = None,
    batch_size: int = 64,
    shard: tuple[int, int] = (0, 1),
    workers: int = 0,
    progress: bool = False,
) -> ExtractionSummary:
    """Extract the features of this shard's videos that are not done yet, then rebuild the index.

    See the module docstring for resuming and sharding.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = listing.videos[shard[0] :: shard[1]]
    done = _done_videos(out_dir, mine, encoder.feature_shape)
    work = [v for v in mine if v.id not in done]
    log.info(
        "%s: %d videos in shard %d/%d, %d done, %d to extract; %d unusable in the listing",
        listing.name, len(mine), *shard, len(done), len(work), len(listing.problems),
    )  # fmt: skip
    chunks = _VideoChunks([v.path for v in work], sampling or FrameSampling(), batch_size)
    loader = DataLoader(chunks, batch_size=None, num_workers=min(workers, len(work)))
    pending: dict[int, list[np.ndarray]] = {}
    failures: dict[str, str] = {}
    frames = videos = 0
    started = time.perf_counter()
    bar = _progress_bar(len(work), progress)
    for chunk in loader:
        video = work[chunk.position]
        if chunk.error is not None:
            log.warning("skipping %s: %s", video.id, chunk.error)
            failures[video.id] = chunk.error
            pending.pop(chunk.position, None)
        else:
            parts = pending.setdefault(chunk.position, [])
            if chunk.frames is not None:
                parts.append(encoder(chunk.frames))
            if chunk.last:
                features = np.concatenate(pending.pop(chunk.position))
                save_features(out_dir / feature_file(video.id), features)
                videos += 1
                frames += len(features)
        if chunk.last and bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{frames / (time.perf_counter() - started):.0f} frames/s")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    rebuild_outputs(out_dir, listing, encoder.feature_shape, {v.id for v in work}, failures)
    log.info(
        "extracted %d videos, %d frames in %.1f s (%.1f videos/s, %.0f frames/s); %d failed",
        videos, frames, seconds, videos / max(seconds, 1e-9), frames / max(seconds, 1e-9),
        len(failures),
    )  # fmt: skip
    return ExtractionSummary(videos, frames, seconds, failures)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.action_recognition.extract",
        description="Extract per-frame backbone features (e.g. ResNet-152 7x7x2048) of a dataset.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, type=Path, help="folder of the class folders")
    parser.add_argument(
        "--splits",
        type=Path,
        help="split files: hmdb51: folder of <class>_test_split<k>.txt "
        "(default ROOT/testTrainMulti_7030_splits); olympic_sports: folder of train.txt/test.txt "
        f"or train/, test/ (default ROOT); ucf_sports: split file, drawn (seed 0) and written "
        f"when missing (default OUT/{UCF_SPLIT_NAME})",
    )
    parser.add_argument("--out", required=True, type=Path, help="features directory")
    parser.add_argument(
        "--backbone",
        default="resnet152",
        help="resnet152 (torchvision), tiny (demo), or package.module:factory",
    )
    parser.add_argument("--weights", type=Path, help="state dict file loaded into the backbone")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run resnet152 without weights (throughput tests only)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    parser.add_argument("--amp", action="store_true", help="run the backbone under autocast")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="frames per backbone call (bounds memory)"
    )
    parser.add_argument("--shard", default="0/1", type=parse_shard, help="I/N: this run's share")
    parser.add_argument(
        "--frames",
        default="all",
        type=FrameSampling.parse,
        help="all, stride:K (every K-th frame) or uniform:N (N frames spread evenly)",
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding processes (0: inline)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the extraction CLI (see the module docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    splits = args.splits
    if splits is None and args.dataset == "ucf_sports":
        splits = args.out / UCF_SPLIT_NAME
    listing = list_dataset(args.dataset, args.root, splits)
    for video_id, reason in listing.problems.items():
        log.warning("not extracted: %s: %s", video_id, reason)
    backbone = load_backbone(args.backbone, args.weights, args.random_weights)
    encoder = FrameEncoder(backbone, torch.device(args.device), amp=args.amp)
    extract(
        listing,
        args.out,
        encoder,
        sampling=args.frames,
        batch_size=args.batch_size,
        shard=args.shard,
        workers=args.workers,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
