"""UCF Sports (Rodriguez et al., 2008): 150 videos, 10 classes, a seeded random 75/25 split.

Layout accepted (``root`` is the folder holding the class folders, e.g. the
archive's ``ucf action``)::

    root/<Class>[-Front|-Side|-Back]/<NNN>/*.jpg     frames, in natural name order
    root/<Class>[-Front|-Side|-Back]/<NNN>/<any>.avi used only when NNN/ has no image

Viewpoint folders merge into their class (``Golf-Swing-Back``,
``Golf-Swing-Front`` and ``Golf-Swing-Side`` are all ``Golf-Swing``; a suffix is
a viewpoint only when it is exactly ``-Front``, ``-Side`` or ``-Back``, so
``Swing-SideAngle`` stays a class). Other files and subfolders of ``NNN/``
(e.g. ``gt/`` annotations) are ignored; a ``NNN/`` with neither image frames
nor a video file goes to ``problems``. Labels index the sorted classes of the
folders and of the split file.

The dataset has no official split; the paper draws 75 % train / 25 % test at
random. :func:`draw_split` draws it stratified by class with a seeded numpy
generator (per class, ``round(n / 4)`` test videos) and :func:`write_split_file`
saves it, so every machine uses the same one. Split file format, one video per
line, ``#`` comments and blank lines ignored::

    <id> train|test          e.g. "Diving-Side/001 test"

:func:`list_videos` reads the file when it exists and otherwise draws the split
with seed 0 and writes the file; videos on disk but not in the file, and in
the file but not on disk, go to ``problems``.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from . import IMAGE_SUFFIXES, VIDEO_SUFFIXES, DatasetListing, VideoSource

__all__ = [
    "SPLIT_ID",
    "TEST_FRACTION",
    "class_of",
    "draw_split",
    "list_videos",
    "read_split_file",
    "write_split_file",
]

#: The one split of UCF Sports.
SPLIT_ID = "1"
#: Fraction of each class drawn into the test set.
TEST_FRACTION = 0.25
_VIEWPOINT = re.compile(r"^(?P<cls>.+)-(Front|Side|Back)$")


def class_of(folder: str) -> str:
    """The class of a top-level folder: its name without a viewpoint suffix.

    Examples
    --------
    >>> class_of("Golf-Swing-Front"), class_of("Swing-SideAngle"), class_of("Diving-Side")
    ('Golf-Swing', 'Swing-SideAngle', 'Diving')
    """
    match = _VIEWPOINT.match(folder)
    return match["cls"] if match else folder


def _source_of(video_dir: Path) -> Path | None:
    """The frame folder itself when it holds images, else its video file, else None."""
    files = sorted(p for p in video_dir.iterdir() if p.is_file())
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return video_dir
    return next((p for p in files if p.suffix.lower() in VIDEO_SUFFIXES), None)


def draw_split(
    labels: Mapping[str, str], seed: int = 0, test_fraction: float = TEST_FRACTION
) -> dict[str, str]:
    """Draw a stratified train/test split: ``{id: "train" | "test"}``.

    Per class (``labels`` maps id to class), the ids are sorted, permuted by
    ``numpy.random.default_rng(seed)`` (classes in sorted order), and the first
    ``floor(n * test_fraction + 0.5)`` go to test.

    Examples
    --------
    >>> split = draw_split({f"a/{i}": "a" for i in range(8)} | {"b/0": "b"}, seed=0)
    >>> sorted(split.values()).count("test"), split["b/0"]
    (2, 'train')
    """
    rng = np.random.default_rng(seed)
    split: dict[str, str] = {}
    for class_name in sorted(set(labels.values())):
        ids = sorted(i for i, c in labels.items() if c == class_name)
        num_test = math.floor(len(ids) * test_fraction + 0.5)
        for position, index in enumerate(rng.permutation(len(ids))):
            split[ids[index]] = "test" if position < num_test else "train"
    return split


def write_split_file(path: Path, split: Mapping[str, str], seed: int) -> None:
    """Write ``split`` in the format of the module docstring, sorted by id (temp file + rename)."""
    lines = [
        f"# UCF Sports {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split, stratified, seed {seed}"
    ]
    lines += [f"{video_id} {split[video_id]}" for video_id in sorted(split)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as tmp:
        tmp.write("\n".join(lines) + "\n")
    os.replace(tmp.name, path)


def read_split_file(path: Path) -> dict[str, str]:
    """Read a split file: ``{id: "train" | "test"}``.

    Raises
    ------
    ValueError
        On a line that is not ``<id> train|test``, naming the file and line.
    """
    split: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("train", "test"):
            raise ValueError(f"{path}:{number}: expected '<id> train|test', got {line.strip()!r}")
        split[fields[0]] = fields[1]
    return split


def _video_dirs(root: Path) -> Iterable[Path]:
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        yield from sorted(p for p in folder.iterdir() if p.is_dir())


def list_videos(root: Path, splits: Path | None = None, seed: int = 0) -> DatasetListing:
    """List UCF Sports under ``root`` with the split of file ``splits``.

    ``splits`` is read when it exists; otherwise the split is drawn with
    ``seed`` and written there (see the module docstring).
    """
    if splits is None:
        raise ValueError(
            "UCF Sports has no official split: give a split file path "
            "(read when it exists, drawn and written there otherwise)"
        )
    sources: dict[str, tuple[str, Path]] = {}
    problems: dict[str, str] = {}
    for video_dir in _video_dirs(root):
        video_id = f"{video_dir.parent.name}/{video_dir.name}"
        source = _source_of(video_dir)
        if source is None:
            problems[video_id] = f"{video_dir} has no image frames and no video file"
        else:
            sources[video_id] = (class_of(video_dir.parent.name), source)
    if not splits.exists():
        write_split_file(splits, draw_split({i: c for i, (c, _) in sources.items()}, seed), seed)
    split = read_split_file(splits)
    classes = sorted({c for c, _ in sources.values()} | {class_of(i.split("/")[0]) for i in split})
    videos: list[VideoSource] = []
    for video_id in sorted(sources.keys() | split.keys()):
        if video_id not in sources:
            problems.setdefault(video_id, f"listed in {splits} but not found under {root}")
        elif video_id not in split:
            problems[video_id] = f"on disk but not listed in {splits}"
        else:
            class_name, path = sources[video_id]
            videos.append(
                VideoSource(
                    video_id,
                    class_name,
                    classes.index(class_name),
                    path,
                    {SPLIT_ID: split[video_id]},
                )
            )
    return DatasetListing("ucf_sports", classes, videos, problems)
