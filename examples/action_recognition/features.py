"""Per-frame feature files, their index, and the clip dataset that reads them back.

On-disk format of a features directory ``DIR`` (written by
:mod:`examples.action_recognition.extract`, and by anything else that wants to
feed the training code, e.g. a synthetic generator)::

    DIR/index.json          {"dataset": str, "classes": [names in label order],
                             "feature_shape": [h*w, C], "dtype": "float16", "splits": ["1", ...],
                             "videos": [{"id": str, "label": int, "class_name": str,
                                         "file": "features/<id>.npy", "num_frames": int,
                                         "splits": {"1": "train" | "test" | "unused", ...}}]}
    DIR/features/<id>.npy   float16 array (frames, h*w, C); region r = row * w + col
    DIR/failures.txt        one line per video that is not in the index: "<id>\\t<reason>"

Every file is written to a temporary name in the same folder and then renamed,
so a reader never sees half a file and a crash never leaves one behind.

:class:`ClipDataset` serves clips of ``clip_len`` frames from such a directory,
memory-mapped (a dataset larger than RAM works) or, with ``device=``, from one
copy of the whole split kept on that device.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "FAILURES_NAME",
    "FEATURE_DTYPE",
    "INDEX_NAME",
    "SPLIT_ROLES",
    "ClipDataset",
    "FeatureIndex",
    "VideoEntry",
    "feature_file",
    "read_failures",
    "read_index",
    "save_features",
    "write_failures",
    "write_index",
]

INDEX_NAME = "index.json"
FAILURES_NAME = "failures.txt"
FEATURE_DTYPE = "float16"
#: What a video can be in one split.
SPLIT_ROLES = ("train", "test", "unused")

ClipMode = Literal["random", "blocks"]


@dataclass(frozen=True)
class VideoEntry:
    """One video of a features directory.

    Attributes
    ----------
    id:
        Unique name of the video (the extractor uses its path under the dataset
        root, without extension, e.g. ``"brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"``).
    label:
        Class index, ``classes[label] == class_name``.
    class_name:
        Class name.
    file:
        Path of the feature array relative to the directory, ``"features/<id>.npy"``.
    num_frames:
        Number of frames (first dimension of the array), at least 1.
    splits:
        Role of the video in each split: ``{"1": "train", "2": "test", ...}``.
    """

    id: str
    label: int
    class_name: str
    file: str
    num_frames: int
    splits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureIndex:
    """The parsed ``index.json`` of a features directory (see the module docstring).

    Attributes
    ----------
    dataset:
        Dataset name, e.g. ``"hmdb51"``.
    classes:
        Class names in label order.
    feature_shape:
        ``(h*w, C)`` of every frame.
    splits:
        Split ids, e.g. ``["1", "2", "3"]``.
    videos:
        One :class:`VideoEntry` per extracted video.
    """

    dataset: str
    classes: list[str]
    feature_shape: tuple[int, int]
    splits: list[str]
    videos: list[VideoEntry]


def feature_file(video_id: str) -> str:
    """Relative path of a video's feature array inside a features directory.

    Examples
    --------
    >>> feature_file("walk/clip_01")
    'features/walk/clip_01.npy'
    """
    return f"features/{video_id}.npy"


@contextmanager
def _atomic_open(path: Path, mode: str) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_features(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one video's ``(frames, h*w, C)`` features as float16 ``.npy``, atomically.

    The array goes to a temporary file in the same folder, then ``os.replace``
    renames it, so ``path`` either does not exist or holds the whole array.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> save_features(f"{d}/features/v.npy", np.ones((3, 4, 2), dtype=np.float32))
    >>> np.load(f"{d}/features/v.npy").dtype, np.load(f"{d}/features/v.npy").shape
    (dtype('float16'), (3, 4, 2))
    """
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"expected features of shape (frames>=1, h*w, C), got {array.shape}")
    with _atomic_open(Path(path), "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=FEATURE_DTYPE))


def _split_sort_key(split_id: str) -> tuple[int, str]:
    return (int(split_id), "") if split_id.isdigit() else (1 << 30, split_id)


def _as_entry(video: VideoEntry | Mapping[str, Any]) -> VideoEntry:
    if isinstance(video, VideoEntry):
        return video
    return VideoEntry(
        id=str(video["id"]),
        label=int(video["label"]),
        class_name=str(video["class_name"]),
        file=str(video["file"]),
        num_frames=int(video["num_frames"]),
        splits={str(k): str(v) for k, v in dict(video["splits"]).items()},
    )


def _check_entries(classes: Sequence[str], videos: Sequence[VideoEntry]) -> None:
    seen: set[str] = set()
    for video in videos:
        if video.id in seen:
            raise ValueError(f"video id {video.id!r} appears twice in the index")
        seen.add(video.id)
        if not 0 <= video.label < len(classes):
            raise ValueError(
                f"video {video.id!r}: label {video.label} outside 0..{len(classes) - 1}"
            )
        if classes[video.label] != video.class_name:
            raise ValueError(
                f"video {video.id!r}: class_name {video.class_name!r} but label {video.label} "
                f"is {classes[video.label]!r}"
            )
        if video.num_frames < 1:
            raise ValueError(
                f"video {video.id!r}: expected num_frames >= 1, got {video.num_frames}"
            )
        for split_id, role in video.splits.items():
            if role not in SPLIT_ROLES:
                raise ValueError(
                    f"video {video.id!r}: split {split_id!r} role must be one of {SPLIT_ROLES}, "
                    f"got {role!r}"
                )


def write_index(
    out_dir: str | os.PathLike[str],
    dataset: str,
    classes: Sequence[str],
    videos: Sequence[VideoEntry | Mapping[str, Any]],
    feature_shape: Sequence[int],
) -> Path:
    """Write ``out_dir/index.json`` atomically and return its path.

    ``videos`` are :class:`VideoEntry` objects or mappings with the same keys.
    The index's ``splits`` is the sorted union of the videos' split ids.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> v = VideoEntry("a/x", 1, "b", "features/a/x.npy", 5, {"1": "test"})
    >>> _ = write_index(d, "toy", ["a", "b"], [v], (49, 8))
    >>> read_index(d).videos[0] == v
    True
    """
    entries = [_as_entry(v) for v in videos]
    if len(feature_shape) != 2:
        raise ValueError(f"expected feature_shape (h*w, C), got {tuple(feature_shape)}")
    _check_entries(classes, entries)
    splits = sorted({s for v in entries for s in v.splits}, key=_split_sort_key)
    document = {
        "dataset": dataset,
        "classes": list(classes),
        "feature_shape": [int(n) for n in feature_shape],
        "dtype": FEATURE_DTYPE,
        "splits": splits,
        "videos": [asdict(v) for v in entries],
    }
    path = Path(out_dir) / INDEX_NAME
    with _atomic_open(path, "w") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")
    return path


def read_index(directory: str | os.PathLike[str]) -> FeatureIndex:
    """Read and check ``directory/index.json``.

    Raises
    ------
    FileNotFoundError
        When the directory has no index.
    ValueError
        When the index is inconsistent (a label outside the classes, a class
        name that does not match its label, a dtype other than float16, ...).
    """
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX_NAME} in {directory}: is it a features directory?")
    document = json.loads(path.read_text())
    if document.get("dtype", FEATURE_DTYPE) != FEATURE_DTYPE:
        raise ValueError(f"{path}: expected dtype {FEATURE_DTYPE!r}, got {document['dtype']!r}")
    shape = tuple(int(n) for n in document["feature_shape"])
    if len(shape) != 2:
        raise ValueError(f"{path}: expected feature_shape [h*w, C], got {list(shape)}")
    classes = [str(c) for c in document["classes"]]
    videos = [_as_entry(v) for v in document["videos"]]
    _check_entries(classes, videos)
    return FeatureIndex(
        dataset=str(document["dataset"]),
        classes=classes,
        feature_shape=(shape[0], shape[1]),
        splits=[str(s) for s in document["splits"]],
        videos=videos,
    )


def read_failures(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``directory/failures.txt`` as ``{video id: reason}`` (empty when absent)."""
    path = Path(directory) / FAILURES_NAME
    if not path.is_file():
        return {}
    failures: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            video_id, _, reason = line.partition("\t")
            failures[video_id] = reason
    return failures


def write_failures(directory: str | os.PathLike[str], failures: Mapping[str, str]) -> Path:
    """Write ``{video id: reason}`` to ``directory/failures.txt``, sorted by id, atomically.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = write_failures(d, {"b": "no frames", "a": "bad\\nheader"})
    >>> read_failures(d)
    {'a': 'bad header', 'b': 'no frames'}
    """
    path = Path(directory) / FAILURES_NAME
    with _atomic_open(path, "w") as handle:
        for video_id in sorted(failures):
            reason = " ".join(failures[video_id].split())
            handle.write(f"{video_id}\t{reason}\n")
    return path


@dataclass(frozen=True)
class _Clip:
    video: int  # index into ClipDataset.videos
    start: int  # first frame (blocks mode; random mode draws it per epoch)


class ClipDataset(Dataset[dict[str, torch.Tensor]]):
    """Clips of ``clip_len`` frames from one split of a features directory.

    Parameters
    ----------
    features_dir:
        A directory in the format of this module (``index.json`` + ``features/``).
    split:
        ``"train"``, ``"test"`` or ``"unused"``: which videos of the split to serve.
    split_id:
        Which split, e.g. ``"1"`` (HMDB51 has ``"1"``, ``"2"``, ``"3"``).
    clip_len:
        Frames per clip, ``T`` (the paper uses 60; 30 for its LSTM baseline).
    mode:
        ``"random"``: one item per video, a window of ``T`` consecutive frames
        starting at a frame drawn uniformly from ``0 .. max(0, n - T)``, from a
        numpy generator seeded with ``(seed, epoch, index)``, so an epoch is
        reproducible and each epoch differs (call :meth:`set_epoch`).
        ``"blocks"``: one item per consecutive block ``[kT, (k+1)T)`` covering
        each whole video, ``ceil(n / T)`` items per video, for evaluation.
        In both modes frames past the end of a video are zeros with ``mask``
        False.
    seed:
        Seed of the random windows.
    device:
        ``None``: memory-map the ``.npy`` files (``numpy.load(mmap_mode="r")``),
        so only the clips being read occupy RAM; works with DataLoader workers.
        A device (e.g. ``"cuda"``): load every video of the split once onto it
        and serve slices from there. That needs :attr:`nbytes` bytes of device
        memory, ``sum(num_frames) * h*w * C * 2`` -- at the paper's shape
        (49 x 2048) 200,704 bytes per frame, about 20 GB per 100,000 frames.
        Use it with ``num_workers=0``.

    Each item is a dict: ``features`` (T, h*w, C) float16, ``mask`` (T,) bool
    (True on real frames), ``label`` int64 0-dim, ``video`` int64 0-dim (index
    of the video in :attr:`videos`, to average the blocks of a video).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> save_features(f"{d}/features/v.npy", np.ones((5, 4, 3)))
    >>> v = VideoEntry("v", 0, "walk", "features/v.npy", 5, {"1": "test"})
    >>> _ = write_index(d, "toy", ["walk"], [v], (4, 3))
    >>> blocks = ClipDataset(d, split="test", clip_len=3, mode="blocks")
    >>> len(blocks), blocks[1]["features"].shape, blocks[1]["mask"].tolist()
    (2, torch.Size([3, 4, 3]), [True, True, False])
    """

    def __init__(
        self,
        features_dir: str | os.PathLike[str],
        split: str = "train",
        split_id: str = "1",
        clip_len: int = 60,
        mode: ClipMode = "random",
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if clip_len < 1:
            raise ValueError(f"expected clip_len >= 1, got {clip_len}")
        if mode not in ("random", "blocks"):
            raise ValueError(f"expected mode 'random' or 'blocks', got {mode!r}")
        if split not in SPLIT_ROLES:
            raise ValueError(f"expected split in {SPLIT_ROLES}, got {split!r}")
        self.root = Path(features_dir)
        self.index = read_index(self.root)
        if split_id not in self.index.splits:
            raise ValueError(f"split_id {split_id!r} not in the index's splits {self.index.splits}")
        self.videos = [v for v in self.index.videos if v.splits.get(split_id) == split]
        if not self.videos:
            raise ValueError(f"no {split!r} videos in split {split_id!r} of {self.root}")
        self.split = split
        self.split_id = split_id
        self.clip_len = clip_len
        self.mode: ClipMode = mode
        self.seed = seed
        self.epoch = 0
        self.clips = self._make_clips()
        self.labels = [self.videos[c.video].label for c in self.clips]
        self._mapped: dict[int, np.ndarray] = {}
        self._on_device: list[torch.Tensor] | None = None
        if device is not None:
            self._on_device = [
                torch.from_numpy(self._read(i, 0, v.num_frames)).to(device)
                for i, v in enumerate(self.videos)
            ]

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return self.index.classes

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset (not only those present in this split)."""
        return len(self.index.classes)

    @property
    def nbytes(self) -> int:
        """Bytes of all features of the split (what ``device=`` keeps on the device)."""
        per_frame = self.index.feature_shape[0] * self.index.feature_shape[1] * 2
        return sum(v.num_frames for v in self.videos) * per_frame

    def set_epoch(self, epoch: int) -> None:
        """Draw new random windows: items depend on ``(seed, epoch, index)``.

        Call it before iterating a DataLoader for the epoch (DataLoader workers
        copy the dataset when they start, so don't use ``persistent_workers``).
        """
        self.epoch = epoch

    def _make_clips(self) -> list[_Clip]:
        if self.mode == "random":
            return [_Clip(i, 0) for i in range(len(self.videos))]
        return [
            _Clip(i, start)
            for i, v in enumerate(self.videos)
            for start in range(0, v.num_frames, self.clip_len)
        ]

    def _array(self, video: int) -> np.ndarray:
        array = self._mapped.get(video)
        if array is None:
            entry = self.videos[video]
            array = np.load(self.root / entry.file, mmap_mode="r")
            expected = (entry.num_frames, *self.index.feature_shape)
            if array.shape != expected or array.dtype != np.float16:
                raise ValueError(
                    f"{entry.file}: expected float16 {expected} from the index, "
                    f"got {array.dtype} {array.shape}"
                )
            self._mapped[video] = array
        return array

    def _read(self, video: int, start: int, stop: int) -> np.ndarray:
        return np.array(self._array(video)[start:stop])

    def _start(self, index: int, clip: _Clip) -> int:
        if self.mode == "blocks":
            return clip.start
        room = self.videos[clip.video].num_frames - self.clip_len
        if room <= 0:
            return 0
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return int(rng.integers(0, room + 1))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip = self.clips[index]
        start = self._start(index, clip)
        stop = min(start + self.clip_len, self.videos[clip.video].num_frames)
        if self._on_device is not None:
            frames = self._on_device[clip.video][start:stop]
        else:
            frames = torch.from_numpy(self._read(clip.video, start, stop))
        length = stop - start
        if length < self.clip_len:
            padding = frames.new_zeros((self.clip_len - length, *frames.shape[1:]))
            frames = torch.cat([frames, padding])
        mask = torch.arange(self.clip_len, device=frames.device) < length
        return {
            "features": frames,
            "mask": mask,
            "label": torch.tensor(self.labels[index], dtype=torch.int64, device=frames.device),
            "video": torch.tensor(clip.video, dtype=torch.int64, device=frames.device),
        }

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each DataLoader worker, not pickled as arrays.
        state = self.__dict__.copy()
        state["_mapped"] = {}
        return state
