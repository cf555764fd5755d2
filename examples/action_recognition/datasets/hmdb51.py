"""HMDB51 (Kuehne et al., 2011): 51 classes, three official 70/30 splits.

Layout accepted (``root`` is the folder that holds the class folders, e.g. the
extracted ``hmdb51_org``)::

    root/<class>/<video>.avi                      one folder per class (51)
    splits/<class>_test_split<k>.txt              k = 1, 2, 3

``splits`` defaults to ``root/testTrainMulti_7030_splits`` (the official
archive's folder name). Each split file lists the videos of one class, one per
line: ``<video>.avi <tag>`` with tag 1 = train, 2 = test, 0 = unused (extra
whitespace is ignored). Class names may contain underscores (``brush_hair``);
the file name is matched as ``(.+)_test_split(\\d+)\\.txt``.

Labels index the sorted class names -- those of the split files and of the
folders holding videos -- so they do not shift when a class folder is
missing. A video is listed only if it is on
disk *and* named in every split's file for its class; the others go to
``problems``: listed but missing (``"listed in <file> but not found under
<root>"``), or on disk but not listed in some split (a class folder that no
split file names has all its videos there).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import VIDEO_SUFFIXES, DatasetListing, VideoSource

__all__ = ["DEFAULT_SPLITS_DIR", "SPLIT_TAGS", "list_videos", "read_split_files"]

#: Folder of the official split files, relative to the root, used when none is given.
DEFAULT_SPLITS_DIR = "testTrainMulti_7030_splits"
#: The tags of the official split files.
SPLIT_TAGS = {"0": "unused", "1": "train", "2": "test"}
_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")


def read_split_files(splits_dir: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Parse every ``<class>_test_split<k>.txt``: ``{(class, video file): {k: role}}``.

    Raises
    ------
    FileNotFoundError
        When the folder has no split file.
    ValueError
        On a line that is not ``<video> <0|1|2>``, naming the file and line.
    """
    roles: dict[tuple[str, str], dict[str, str]] = {}
    files = [(p, _SPLIT_FILE.match(p.name)) for p in sorted(splits_dir.glob("*.txt"))]
    matched = [(path, match) for path, match in files if match is not None]
    if not matched:
        raise FileNotFoundError(
            f"no <class>_test_split<k>.txt files in {splits_dir} (HMDB51's official splits)"
        )
    for path, match in matched:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in SPLIT_TAGS:
                raise ValueError(
                    f"{path}:{number}: expected '<video>.avi 0|1|2', got {line.strip()!r}"
                )
            key = (match["cls"], fields[0])
            roles.setdefault(key, {})[match["split"]] = SPLIT_TAGS[fields[1]]
    return roles


def list_videos(root: Path, splits: Path | None = None) -> DatasetListing:
    """List HMDB51 under ``root`` with the official split files in ``splits``.

    See the module docstring for the formats. Every returned video has a role
    in every split found (``"1"``, ``"2"``, ``"3"`` for the official files).
    """
    splits_dir = root / DEFAULT_SPLITS_DIR if splits is None else splits
    roles = read_split_files(splits_dir)
    split_ids = sorted({s for r in roles.values() for s in r}, key=int)
    on_disk = {
        (d.name, f.name): f
        for d in root.iterdir()
        if d.is_dir()
        for f in d.iterdir()
        if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES
    }
    classes = sorted({c for c, _ in on_disk} | {c for c, _ in roles})
    videos: list[VideoSource] = []
    problems: dict[str, str] = {}
    for key in sorted(on_disk.keys() | roles.keys()):
        class_name, file_name = key
        video_id = f"{class_name}/{Path(file_name).stem}"
        listed = roles.get(key, {})
        if key not in on_disk:
            problems[video_id] = (
                f"listed in the split files of {splits_dir} but not found under {root}"
            )
        elif sorted(listed, key=int) != split_ids:
            missing = [s for s in split_ids if s not in listed]
            problems[video_id] = f"on disk but not listed in split(s) {', '.join(missing)}"
        else:
            videos.append(
                VideoSource(video_id, class_name, classes.index(class_name), on_disk[key], listed)
            )
    return DatasetListing("hmdb51", classes, videos, problems)
