"""Frames of a video file, a folder of images, or a Norpix SEQ file, resized for the backbone.

Three kinds of input, told apart by the path:

* a folder: its image files (``.jpg``, ``.jpeg``, ``.png``) in natural name
  order (``f2`` before ``f10``), read with Pillow;
* a ``.seq`` file: a Norpix StreamPix sequence of JPEG frames, read with Pillow
  (see :func:`read_seq_header` and :func:`seq_frame_spans` for what is supported);
* any other file: a video, decoded with PyAV (imported only then), first video
  stream, frames in presentation order.

:func:`read_frames` yields each kept frame as an RGB ``uint8`` array of
``(size, size, 3)``, resized with Pillow's bilinear filter (the paper resizes
to 224 x 224 without cropping). Which frames are kept is a
:class:`FrameSampling`: all, every K-th, or N spread uniformly. An input that
cannot be read raises :class:`DecodeError` naming the file and the cause.
"""

from __future__ import annotations

import io
import mmap
import struct
import sys
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .datasets import IMAGE_SUFFIXES, natural_key

__all__ = [
    "SEQ_HEADER_SIZE",
    "SEQ_JPEG_FORMATS",
    "DecodeError",
    "FrameSampling",
    "SeqHeader",
    "count_frames",
    "read_frames",
    "read_seq_header",
    "seq_frame_spans",
]

#: Bytes of a Norpix SEQ header; the first frame record starts here.
SEQ_HEADER_SIZE = 1024
#: SEQ ``imageFormat`` codes of JPEG-compressed frames (102: grey, 201: colour).
SEQ_JPEG_FORMATS = (102, 201)
_SEQ_MAGIC = 0xFEED
_SEQ_NAME = "Norpix seq"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"

ImageLoader = Callable[[], Image.Image]


class DecodeError(Exception):
    """An input that cannot be decoded (corrupt, truncated, unsupported or empty)."""


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video to keep.

    ``"all"``; ``"stride:K"``: frames 0, K, 2K, ...; ``"uniform:N"``: N frames
    at the centres of N equal parts of the video, ``floor((i + 0.5) * n / N)``
    for ``i < N`` (all frames when the video has fewer than N).

    Examples
    --------
    >>> sorted(FrameSampling.parse("uniform:3").select(10))
    [1, 5, 8]
    >>> 4 in FrameSampling.parse("stride:2").select(None)
    True
    """

    kind: Literal["all", "stride", "uniform"] = "all"
    count: int = 1

    @classmethod
    def parse(cls, spec: str) -> FrameSampling:
        """Parse ``"all"``, ``"stride:K"`` or ``"uniform:N"`` (K, N >= 1)."""
        kind, _, value = spec.partition(":")
        if kind == "all" and not value:
            return cls()
        if kind in ("stride", "uniform") and value.isdigit() and int(value) >= 1:
            return cls("stride" if kind == "stride" else "uniform", int(value))
        raise ValueError(
            f"expected frames 'all', 'stride:K' or 'uniform:N' (K, N >= 1), got {spec!r}"
        )

    @property
    def needs_count(self) -> bool:
        """Whether :meth:`select` needs the number of frames first."""
        return self.kind == "uniform"

    def select(self, num_frames: int | None) -> Container[int]:
        """The indices of the frames to keep, of a video of ``num_frames`` frames."""
        if self.kind != "uniform":
            return range(0, sys.maxsize, self.count)
        if num_frames is None:
            raise ValueError("uniform sampling needs the number of frames")
        if num_frames <= self.count:
            return range(num_frames)
        return {int((i + 0.5) * num_frames / self.count) for i in range(self.count)}


@dataclass(frozen=True)
class SeqHeader:
    """The fields of a Norpix SEQ header that decoding needs.

    Layout (little endian): ``uint32 magic 0xFEED`` at 0; ``"Norpix seq"`` as
    UTF-16 at 4; ``int32 version`` at 28; ``uint32 header size (1024)`` at 32;
    a 512-byte description at 36; then at 548 nine ``uint32`` -- width, height,
    bit depth, real bit depth, image size in bytes, image format, number of
    frames, 0, true image size -- and a ``float64`` frame rate at 584.
    """

    version: int
    width: int
    height: int
    bit_depth: int
    image_format: int
    num_frames: int
    true_image_size: int
    fps: float


def read_seq_header(data: bytes | mmap.mmap) -> SeqHeader:
    """Parse and check the header of a SEQ file's bytes.

    Raises
    ------
    DecodeError
        When the bytes are too short, the magic number or name is wrong, or the
        frames are not JPEG (only formats :data:`SEQ_JPEG_FORMATS` are supported).
    """
    if len(data) < SEQ_HEADER_SIZE:
        raise DecodeError(f"{len(data)} bytes, shorter than a SEQ header ({SEQ_HEADER_SIZE})")
    magic = struct.unpack_from("<I", data, 0)[0]
    name = bytes(data[4:24]).decode("utf-16-le", errors="replace")
    if magic != _SEQ_MAGIC or name != _SEQ_NAME:
        raise DecodeError(f"not a Norpix SEQ file: magic {magic:#x}, name {name!r}")
    version, header_size = struct.unpack_from("<iI", data, 28)
    if header_size != SEQ_HEADER_SIZE:
        raise DecodeError(f"expected a SEQ header of {SEQ_HEADER_SIZE} bytes, got {header_size}")
    width, height, bit_depth, _, _, image_format, num_frames, _, true_size = struct.unpack_from(
        "<9I", data, 548
    )
    (fps,) = struct.unpack_from("<d", data, 584)
    if image_format not in SEQ_JPEG_FORMATS:
        raise DecodeError(
            f"SEQ image format {image_format} is not supported (JPEG: {SEQ_JPEG_FORMATS})"
        )
    return SeqHeader(version, width, height, bit_depth, image_format, num_frames, true_size, fps)


def _walk_seq_records(data: bytes | mmap.mmap, num_frames: int) -> list[tuple[int, int]] | None:
    """Frame spans from the records' sizes, or None where a record does not check out.

    Each record is ``uint32 size`` (counting these 4 bytes), the JPEG, then an
    8-byte timestamp -- 16 bytes in files whose first gap is zero-padded, which
    is detected on the first record as Dollar's ``seqIo`` does.
    """
    spans: list[tuple[int, int]] = []
    offset, gap = SEQ_HEADER_SIZE, 8
    for index in range(num_frames):
        if offset + 6 > len(data):
            return None
        (size,) = struct.unpack_from("<I", data, offset)
        start, stop = offset + 4, offset + size
        if size < 6 or stop > len(data) or data[start : start + 2] != _JPEG_SOI:
            return None
        spans.append((start, stop))
        if index == 0 and stop + 12 <= len(data):
            (after,) = struct.unpack_from("<I", data, stop + gap)
            gap = 16 if after == 0 else gap
        offset = stop + gap
    return spans


def _scan_jpegs(data: bytes | mmap.mmap) -> list[tuple[int, int]]:
    """Frame spans found by scanning for JPEG start (FF D8 FF) and end (FF D9) markers."""
    spans: list[tuple[int, int]] = []
    position = SEQ_HEADER_SIZE
    while (start := data.find(_JPEG_SOI + b"\xff", position)) >= 0:
        end = data.find(_JPEG_EOI, start + 2)
        if end < 0:
            break
        spans.append((start, end + 2))
        position = end + 2
    return spans


def seq_frame_spans(data: bytes | mmap.mmap, header: SeqHeader) -> list[tuple[int, int]]:
    """``(start, stop)`` byte offsets of each JPEG frame of a SEQ file.

    First from the records' sizes (:func:`_walk_seq_records`, the header's
    ``num_frames`` records); when a record does not check out (size past the
    end of the file, no JPEG start marker where one must be), by scanning the
    bytes after the header for JPEG start/end markers instead.
    """
    walked = _walk_seq_records(data, header.num_frames)
    return walked if walked is not None else _scan_jpegs(data)


def _seq_loaders(path: Path) -> Iterator[ImageLoader]:
    with open(path, "rb") as handle:
        if handle.seek(0, io.SEEK_END) < SEQ_HEADER_SIZE:
            raise DecodeError(f"{path}: shorter than a SEQ header ({SEQ_HEADER_SIZE} bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                header = read_seq_header(data)
            except DecodeError as error:
                raise DecodeError(f"{path}: {error}") from error
            for start, stop in seq_frame_spans(data, header):
                yield partial(Image.open, io.BytesIO(data[start:stop]))


def _folder_loaders(path: Path) -> Iterator[ImageLoader]:
    files = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    for file in files:
        yield partial(Image.open, file)


def _video_loaders(path: Path) -> Iterator[ImageLoader]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_image
    except av.error.FFmpegError as error:
        raise DecodeError(f"{path}: {error}") from error


def _loaders(path: Path) -> Iterator[ImageLoader]:
    """One loader per frame of ``path``; an unreadable input raises :class:`DecodeError`."""
    try:
        if path.is_dir():
            yield from _folder_loaders(path)
        elif path.suffix.lower() == ".seq":
            yield from _seq_loaders(path)
        else:
            yield from _video_loaders(path)
    except OSError as error:
        raise DecodeError(f"{path}: {error}") from error


def count_frames(path: str | Path) -> int:
    """Number of frames of an input (decodes a video file; cheap for folders and SEQ)."""
    return sum(1 for _ in _loaders(Path(path)))


def read_frames(
    path: str | Path, sampling: FrameSampling | None = None, size: int = 224
) -> Iterator[np.ndarray]:
    """Yield the kept frames of ``path`` as RGB ``uint8`` arrays of shape ``(size, size, 3)``.

    Raises
    ------
    DecodeError
        When the input is unreadable or corrupt (raised at the frame where it
        is found), or yields no frame.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp())
    >>> for i in range(5):
    ...     Image.new("RGB", (32, 24), (50 * i, 0, 0)).save(d / f"f{i}.jpg")
    >>> frames = list(read_frames(d, FrameSampling.parse("stride:2"), size=16))
    >>> len(frames), frames[0].shape, frames[0].dtype
    (3, (16, 16, 3), dtype('uint8'))
    """
    path = Path(path)
    sampling = sampling or FrameSampling()
    wanted = sampling.select(count_frames(path) if sampling.needs_count else None)
    kept = 0
    for index, load in enumerate(_loaders(path)):
        if index in wanted:
            try:
                image = load().convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            except OSError as error:
                raise DecodeError(f"{path}: frame {index}: {error}") from error
            kept += 1
            yield np.asarray(image)
    if kept == 0:
        raise DecodeError(f"{path}: no frames")
