"""A synthetic action dataset in feature space, with the structure HM-AN is about.

Each frame is a ``K × K`` grid of regions with a ``D``-dimensional feature
each, like a ResNet feature map. A video shows one actor performing its class's
ordered sequence of *sub-actions*; each sub-action lasts a random number of
frames and is a fixed pattern (a "primitive") filling that primitive's own
``A × A`` square of regions (its "home"), so the place to look moves as the
action goes on. *Distractors* -- small background actors performing random
sub-actions, one region each, outside the homes -- and Gaussian noise cover
the rest of the frame. Classes come in
pairs with the same sub-actions in opposite orders, so a model must read the
order, not only which patterns occur::

    class "p0>p1>p2":  [p0 at home(p0)] x 4..10 frames, [p1 at home(p1)] x ..., [p2 ...]
    class "p2>p1>p0":  the same patterns, reversed
    every frame:       + distractor patterns in other regions + noise

A class is named by its sequence (``p0>p1>p2``, :func:`class_name`: labels, reports and
plots show it); its videos are in a folder named without shell metacharacters and legal
on every file system (``p0-p1-p2``, :func:`class_folder`).

What a model should learn: attention on the current sub-action's home
(pooling every region mixes in the distractors), and boundaries where one
sub-action gives way to the next. The generator writes a features directory
through :func:`~examples.action_recognition.features.save_features` and
:func:`~examples.action_recognition.features.write_index`, so training reads it
exactly like real data, plus ``synthetic.json`` with the ground truth that the
evaluation uses to score attention and boundaries (:func:`read_ground_truth`).

Examples
--------
>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> spec = SyntheticSpec(videos_per_class=2, feature_dim=8)
>>> truth = generate(d, spec)
>>> len(truth.videos) == 2 * spec.num_classes, read_ground_truth(d) == truth
(True, True)
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .features import VideoEntry, feature_file, save_features, write_index

__all__ = [
    "GROUND_TRUTH_NAME",
    "GroundTruth",
    "Segment",
    "SyntheticSpec",
    "VideoTruth",
    "class_folder",
    "class_name",
    "generate",
    "read_ground_truth",
]

GROUND_TRUTH_NAME = "synthetic.json"
DATASET_NAME = "synthetic_actions"


@dataclass(frozen=True)
class SyntheticSpec:
    """The knobs of the synthetic dataset.

    Attributes
    ----------
    grid:
        ``K``: frames have ``K × K`` regions (7 as ResNet-152 at 224 px).
    feature_dim:
        ``D``, features per region.
    num_primitives:
        Distinct sub-action patterns, each with its own home square.
    actor_size:
        ``A``: the actor fills an ``A × A`` square of regions.
    subactions_per_class:
        Length of each class's sub-action sequence.
    num_classes:
        Even: classes come in pairs of one sequence and its reverse.
    videos_per_class:
        Videos per class; ``test_fraction`` of them go to the test split.
    min_len, max_len:
        Frames per sub-action, drawn uniformly in ``[min_len, max_len]``.
    num_distractors:
        Background actors per video, each in its own region outside the homes.
    signal, noise:
        Norm of a pattern, and standard deviation of the noise per feature.
    test_fraction:
        Share of each class's videos in the test split (the rest train).
    seed:
        Seed of everything (patterns, homes, classes, videos, split).
    """

    grid: int = 7
    feature_dim: int = 32
    num_primitives: int = 4
    actor_size: int = 2
    subactions_per_class: int = 3
    num_classes: int = 8
    videos_per_class: int = 200
    min_len: int = 4
    max_len: int = 10
    num_distractors: int = 2
    signal: float = 3.0
    noise: float = 0.5
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        regions = self.grid * self.grid
        if self.num_classes % 2 or self.num_classes < 2:
            raise ValueError(f"num_classes must be even and >= 2, got {self.num_classes}")
        if self.subactions_per_class < 2 or self.subactions_per_class > self.num_primitives:
            raise ValueError(
                f"subactions_per_class must be in 2..num_primitives={self.num_primitives}, "
                f"got {self.subactions_per_class}"
            )
        pairs = len(_forward_sequences(self))
        if self.num_classes // 2 > pairs:
            raise ValueError(
                f"num_classes={self.num_classes} needs {self.num_classes // 2} pairs of reversed "
                f"sequences, but {self.num_primitives} primitives give only {pairs}"
            )
        if not 1 <= self.actor_size <= self.grid:
            raise ValueError(f"actor_size must be in 1..grid={self.grid}, got {self.actor_size}")
        used = self.num_primitives * self.actor_size**2 + self.num_distractors
        if used > regions:
            raise ValueError(
                f"{self.num_primitives} homes of {self.actor_size}x{self.actor_size} regions "
                f"and {self.num_distractors} distractors need {used} regions, "
                f"more than the {regions} of the grid"
            )
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    @property
    def num_regions(self) -> int:
        """``K × K``."""
        return self.grid * self.grid


@dataclass(frozen=True)
class Segment:
    """One sub-action of a video: frames ``[start, stop)`` show ``primitive`` in ``regions``."""

    start: int
    stop: int
    primitive: int
    regions: tuple[int, ...]


@dataclass(frozen=True)
class VideoTruth:
    """The actor's segments of one video."""

    segments: tuple[Segment, ...]

    @property
    def changes(self) -> list[int]:
        """Frames where a new sub-action starts (frame 0 excluded)."""
        return [s.start for s in self.segments[1:]]

    def target_mask(self, num_regions: int) -> npt.NDArray[np.bool_]:
        """``(frames, num_regions)``: True where the actor's pattern is, at each frame."""
        mask = np.zeros((self.segments[-1].stop, num_regions), dtype=bool)
        for s in self.segments:
            mask[s.start : s.stop, list(s.regions)] = True
        return mask


@dataclass(frozen=True)
class GroundTruth:
    """Contents of ``synthetic.json``: the spec, the homes, the classes' sequences, the videos."""

    spec: SyntheticSpec
    home_regions: tuple[tuple[int, ...], ...]
    sequences: tuple[tuple[int, ...], ...]
    videos: dict[str, VideoTruth]


def _forward_sequences(spec: SyntheticSpec) -> list[tuple[int, ...]]:
    """Every ordered choice of sub-actions, one of each pair ``(s, reversed(s))``."""
    orders = itertools.permutations(range(spec.num_primitives), spec.subactions_per_class)
    return [order for order in orders if order < order[::-1]]


def _class_sequences(spec: SyntheticSpec, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``num_classes`` sequences: random pairs of one sequence and its reverse."""
    forward = _forward_sequences(spec)
    chosen = [forward[i] for i in rng.permutation(len(forward))[: spec.num_classes // 2]]
    return [s for f in chosen for s in (f, f[::-1])]


def _home_squares(spec: SyntheticSpec, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """One ``A × A`` square of regions per primitive, no two overlapping (drawn at random)."""
    size, corners = spec.actor_size, spec.grid - spec.actor_size + 1
    taken: set[int] = set()
    squares: list[tuple[int, ...]] = []
    for corner in rng.permutation(corners * corners):
        row, col = divmod(int(corner), corners)
        square = tuple((row + i) * spec.grid + col + j for i in range(size) for j in range(size))
        if taken.isdisjoint(square):
            squares.append(square)
            taken.update(square)
        if len(squares) == spec.num_primitives:
            return squares
    raise ValueError(
        f"cannot place {spec.num_primitives} disjoint {size}x{size} homes on a "
        f"{spec.grid}x{spec.grid} grid"
    )


def _segments(
    primitives: list[int],
    home: list[tuple[int, ...]] | int,
    spec: SyntheticSpec,
    rng: np.random.Generator,
) -> list[Segment]:
    segments, start = [], 0
    for primitive in primitives:
        length = int(rng.integers(spec.min_len, spec.max_len + 1))
        regions = home[primitive] if isinstance(home, list) else (home,)
        segments.append(Segment(start, start + length, primitive, regions))
        start += length
    return segments


def _render(
    frames: int,
    actors: list[list[Segment]],
    patterns: npt.NDArray[np.float64],
    spec: SyntheticSpec,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    video = rng.normal(0.0, spec.noise, size=(frames, spec.num_regions, spec.feature_dim))
    for segments in actors:
        for s in segments:
            stop = min(s.stop, frames)
            video[s.start : stop, list(s.regions)] += patterns[s.primitive]
    return video.astype(np.float32)


def class_name(sequence: Sequence[int]) -> str:
    """The name of the class of a sub-action sequence, as labels, reports and plots show it.

    Examples
    --------
    >>> class_name((0, 2, 1))
    'p0>p2>p1'
    """
    return ">".join(f"p{p}" for p in sequence)


def class_folder(sequence: Sequence[int]) -> str:
    """The folder of a class's videos: its sub-actions joined by ``-``, a name with no
    shell metacharacter (``>`` is a redirection) and legal on every file system.

    Examples
    --------
    >>> class_folder((0, 2, 1))
    'p0-p2-p1'
    """
    return "-".join(f"p{p}" for p in sequence)


def generate(out_dir: str | os.PathLike[str], spec: SyntheticSpec | None = None) -> GroundTruth:
    """Write the synthetic dataset to ``out_dir`` (a features directory) and return its truth.

    Split ``"1"`` holds every video, ``test_fraction`` of each class as
    ``"test"`` and the rest as ``"train"``. Deterministic given ``spec.seed``.
    """
    spec = SyntheticSpec() if spec is None else spec
    rng = np.random.default_rng(spec.seed)
    out = Path(out_dir)
    patterns = rng.normal(size=(spec.num_primitives, spec.feature_dim))
    patterns *= spec.signal / np.linalg.norm(patterns, axis=1, keepdims=True)
    home = _home_squares(spec, rng)
    others = np.setdiff1d(np.arange(spec.num_regions), [r for square in home for r in square])
    sequences = _class_sequences(spec, rng)
    classes = [class_name(sequence) for sequence in sequences]
    num_test = max(1, round(spec.test_fraction * spec.videos_per_class))
    entries: list[VideoEntry] = []
    truths: dict[str, VideoTruth] = {}
    for label, sequence in enumerate(sequences):
        test = set(rng.choice(spec.videos_per_class, num_test, replace=False).tolist())
        for n in range(spec.videos_per_class):
            video_id = f"{class_folder(sequence)}/v{n:03d}"
            actor = _segments(list(sequence), home, spec, rng)
            frames = actor[-1].stop
            background = []
            for region in rng.choice(others, spec.num_distractors, replace=False):
                count = -(-frames // spec.min_len)
                randoms = [int(p) for p in rng.integers(0, spec.num_primitives, count)]
                background.append(_segments(randoms, int(region), spec, rng))
            save_features(
                out / feature_file(video_id),
                _render(frames, [actor, *background], patterns, spec, rng),
            )
            role = "test" if n in test else "train"
            entries.append(
                VideoEntry(
                    video_id, label, classes[label], feature_file(video_id), frames, {"1": role}
                )
            )
            truths[video_id] = VideoTruth(tuple(actor))
    truth = GroundTruth(spec, tuple(home), tuple(sequences), truths)
    _write_ground_truth(out, truth)
    write_index(out, DATASET_NAME, classes, entries, (spec.num_regions, spec.feature_dim))
    return truth


def _write_ground_truth(out: Path, truth: GroundTruth) -> None:
    document = {
        "spec": asdict(truth.spec),
        "home_regions": [list(square) for square in truth.home_regions],
        "sequences": [list(s) for s in truth.sequences],
        "videos": {
            video_id: [asdict(s) for s in v.segments] for video_id, v in truth.videos.items()
        },
    }
    tmp = out / f".{GROUND_TRUTH_NAME}.tmp"
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(tmp, out / GROUND_TRUTH_NAME)


def read_ground_truth(features_dir: str | os.PathLike[str]) -> GroundTruth | None:
    """The truth written by :func:`generate`, or ``None`` for a directory without it."""
    path = Path(features_dir) / GROUND_TRUTH_NAME
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    return GroundTruth(
        spec=SyntheticSpec(**document["spec"]),
        home_regions=tuple(tuple(square) for square in document["home_regions"]),
        sequences=tuple(tuple(s) for s in document["sequences"]),
        videos={
            video_id: VideoTruth(
                tuple(Segment(**{**s, "regions": tuple(s["regions"])}) for s in segments)
            )
            for video_id, segments in document["videos"].items()
        },
    )
