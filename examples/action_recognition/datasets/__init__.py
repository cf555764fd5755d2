"""What videos a dataset has, their classes and their splits.

One module per dataset (:mod:`.hmdb51`, :mod:`.ucf_sports`,
:mod:`.olympic_sports`), each with ``list_videos(root, splits=None) ->
DatasetListing``; its docstring gives the exact layout and split formats it
accepts. A video's id is its path under ``root`` without extension (e.g.
``"brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"``), so ids are unique and
name the feature files. Labels are the positions of the class names in sorted
order.

Videos that cannot be used -- listed in a split file but missing on disk, on
disk but in no split file -- are not dropped silently: they are in
``DatasetListing.problems`` (id -> reason), which the extractor writes to
``failures.txt``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "DatasetListing",
    "VideoSource",
    "list_dataset",
    "natural_key",
]

#: Names accepted by :func:`list_dataset` (and by ``extract --dataset``).
DATASETS = ("hmdb51", "ucf_sports", "olympic_sports")
#: File name suffixes read as video files (decoded with PyAV).
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".webm")
#: File name suffixes read as frames of a frame folder (decoded with Pillow).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class VideoSource:
    """One video of a dataset.

    Attributes
    ----------
    id:
        Path under the dataset root without extension; unique.
    class_name, label:
        Class and its index in :attr:`DatasetListing.classes`.
    path:
        A video file, a ``.seq`` file, or a folder of image frames.
    splits:
        Role in each split, ``{"1": "train" | "test" | "unused", ...}``.
    """

    id: str
    class_name: str
    label: int
    path: Path
    splits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetListing:
    """All usable videos of a dataset, sorted by id, and the ones that are not usable.

    Attributes
    ----------
    name:
        Dataset name (one of :data:`DATASETS`).
    classes:
        Class names in label order (sorted).
    videos:
        Usable videos, sorted by id.
    problems:
        ``{video id: reason}`` for videos left out (missing, unlisted, ...).
    """

    name: str
    classes: list[str]
    videos: list[VideoSource]
    problems: dict[str, str] = field(default_factory=dict)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the digit runs of a name by value (``frame2`` < ``frame10``).

    Examples
    --------
    >>> sorted(["f10.jpg", "f9.jpg", "f100.jpg"], key=natural_key)
    ['f9.jpg', 'f10.jpg', 'f100.jpg']
    """
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def list_dataset(name: str, root: str | Path, splits: str | Path | None = None) -> DatasetListing:
    """List the videos of dataset ``name`` under ``root`` (see each module for ``splits``)."""
    if name not in DATASETS:
        raise ValueError(f"expected a dataset in {DATASETS}, got {name!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    module = importlib.import_module(f"{__name__}.{name}")
    listing: DatasetListing = module.list_videos(root, None if splits is None else Path(splits))
    return listing
