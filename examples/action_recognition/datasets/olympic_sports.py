"""Olympic Sports (Niebles et al., 2010): 16 classes, official train/test lists; mAP metric.

Layout accepted (``root`` holds the class folders)::

    root/<class>/<clip>.seq      Norpix SEQ of JPEG frames (the original release), or
    root/<class>/<clip>.avi      a converted video (any of VIDEO_SUFFIXES); a .seq wins

A class folder is any folder of ``root`` holding at least one clip; labels
index the sorted classes of the folders and of the lists. The official lists
are read from ``splits`` (default: ``root``) in either of two forms:

* ``train.txt`` and ``test.txt``, one clip per line as ``<class>/<clip>``;
* ``train/<class>.txt`` and ``test/<class>.txt``, one clip per line as
  ``<clip>`` (or ``<class>/<clip>``).

A clip name may carry its extension (``.seq``, ``.avi``, ...), which is
ignored; blank lines and text after ``#`` are ignored. Clips on disk but in no
list, in a list but not on disk, or in both lists go to ``problems``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import VIDEO_SUFFIXES, DatasetListing, VideoSource

__all__ = ["CLIP_SUFFIXES", "SPLIT_ID", "list_videos", "read_split_lists"]

#: The one split of Olympic Sports.
SPLIT_ID = "1"
#: File suffixes read as clips, in order of preference for one clip name.
CLIP_SUFFIXES = (".seq", *VIDEO_SUFFIXES)


def _clip_id(class_name: str, entry: str) -> str:
    """``<class>/<clip>`` for a list entry ``<clip>`` or ``<class>/<clip>``, extension dropped."""
    path = Path(entry)
    name = path.stem if path.suffix.lower() in CLIP_SUFFIXES else path.name
    return f"{path.parent.as_posix() if path.parent != Path('.') else class_name}/{name}"


def _entries(path: Path) -> Iterator[str]:
    for line in path.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            yield entry


def read_split_lists(splits: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read the train/test lists in ``splits``: ``({clip id: role}, {clip id: problem})``.

    Raises
    ------
    FileNotFoundError
        When ``splits`` holds neither ``train.txt``/``test.txt`` nor
        ``train/``/``test/`` folders of per-class lists.
    ValueError
        When a line of ``train.txt``/``test.txt`` is not ``<class>/<clip>``.
    """
    listed: dict[str, list[str]] = {}
    for role in ("train", "test"):
        flat, per_class = splits / f"{role}.txt", splits / role
        if flat.is_file():
            for entry in _entries(flat):
                if "/" not in entry:
                    raise ValueError(f"{flat}: expected '<class>/<clip>' lines, got {entry!r}")
                listed.setdefault(_clip_id("", entry), []).append(role)
        elif per_class.is_dir():
            for class_file in sorted(per_class.glob("*.txt")):
                for entry in _entries(class_file):
                    listed.setdefault(_clip_id(class_file.stem, entry), []).append(role)
        else:
            raise FileNotFoundError(
                f"no {role}.txt and no {role}/<class>.txt lists in {splits} (Olympic Sports splits)"
            )
    roles = {i: r[0] for i, r in listed.items() if len(r) == 1}
    problems = {
        i: f"listed {len(r)} times ({', '.join(r)})" for i, r in listed.items() if len(r) > 1
    }
    return roles, problems


def _clips(root: Path) -> dict[str, Path]:
    """``{<class>/<clip>: file}`` for every clip under ``root``, preferring .seq files."""
    clips: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CLIP_SUFFIXES]
        for path in sorted(files, key=lambda p: (CLIP_SUFFIXES.index(p.suffix.lower()), p.name)):
            clips.setdefault(f"{folder.name}/{path.stem}", path)
    return clips


def list_videos(root: Path, splits: Path | None = None) -> DatasetListing:
    """List Olympic Sports under ``root`` with the official lists in ``splits`` (default ``root``).

    See the module docstring for the formats.
    """
    roles, problems = read_split_lists(root if splits is None else splits)
    clips = _clips(root)
    classes = sorted({i.split("/", 1)[0] for i in clips.keys() | roles.keys()})
    videos: list[VideoSource] = []
    for video_id in sorted(clips.keys() | roles.keys() | problems.keys()):
        if video_id in problems:
            continue
        if video_id not in clips:
            problems[video_id] = f"listed in the splits but not found under {root}"
        elif video_id not in roles:
            problems[video_id] = "on disk but in neither the train nor the test list"
        else:
            class_name = video_id.split("/", 1)[0]
            videos.append(
                VideoSource(
                    video_id,
                    class_name,
                    classes.index(class_name),
                    clips[video_id],
                    {SPLIT_ID: roles[video_id]},
                )
            )
    return DatasetListing("olympic_sports", classes, videos, problems)
