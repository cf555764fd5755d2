"""Fixtures for the action-recognition data tests: tiny media files and dataset layouts.

Media are generated in ``tmp_path``: short videos encoded with PyAV (MPEG-4 in
AVI), folders of JPEG frames, and Norpix SEQ files written here byte by byte
(see :func:`seq_bytes`). Each frame is a flat colour that depends on its index,
so tests can tell frames apart after decoding.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

FRAME_SIZE = (32, 24)  # width, height of generated frames


def frame_colour(index: int) -> tuple[int, int, int]:
    """The flat RGB colour of generated frame ``index``."""
    return (20 * index % 256, 255 - 20 * index % 256, 128)


def frame_image(index: int) -> Image.Image:
    """Generated frame ``index`` as a PIL image."""
    return Image.new("RGB", FRAME_SIZE, frame_colour(index))


def jpeg_bytes(index: int) -> bytes:
    """Generated frame ``index`` encoded as JPEG."""
    buffer = io.BytesIO()
    frame_image(index).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_video(path: Path, num_frames: int) -> Path:
    """Encode ``num_frames`` generated frames as an MPEG-4 AVI at 10 fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(frame_image(index)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_frames(folder: Path, num_frames: int, pattern: str = "frame{}.jpg") -> Path:
    """Write ``num_frames`` generated JPEG frames into ``folder`` (names unpadded)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_frames):
        (folder / pattern.format(index)).write_bytes(jpeg_bytes(index))
    return folder


def seq_bytes(jpegs: list[bytes], gap: int = 8, image_format: int = 201) -> bytes:
    """A Norpix SEQ file of JPEG frames.

    Header (1024 bytes, little endian): magic 0xFEED; "Norpix seq" in UTF-16;
    version 3 at 28; header size 1024 at 32; description at 36; width, height,
    bit depth, real bit depth, image bytes, image format, frame count, 0, true
    image size at 548; fps (float64) at 584. Each record: uint32 size
    (JPEG + 4), the JPEG, an 8-byte timestamp, then ``gap - 8`` zero bytes.
    """
    width, height = FRAME_SIZE
    header = bytearray(1024)
    struct.pack_into("<I", header, 0, 0xFEED)
    header[4:24] = "Norpix seq".encode("utf-16-le")
    struct.pack_into("<iI", header, 28, 3, 1024)
    fields = (width, height, 24, 8, width * height * 3, image_format, len(jpegs), 0, 0)
    struct.pack_into("<9I", header, 548, *fields)
    struct.pack_into("<d", header, 584, 25.0)
    records = bytearray()
    for index, jpeg in enumerate(jpegs):
        records += struct.pack("<I", len(jpeg) + 4) + jpeg
        records += struct.pack("<IHH", 1_300_000_000 + index, 40 * index, 0)
        records += bytes(gap - 8)
    return bytes(header + records)


def write_seq(path: Path, num_frames: int, gap: int = 8) -> Path:
    """Write a SEQ file of ``num_frames`` generated frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(seq_bytes([jpeg_bytes(i) for i in range(num_frames)], gap=gap))
    return path


def write_corrupt(path: Path) -> Path:
    """A file that no decoder accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a video " * 200)
    return path


@dataclass
class Layout:
    """A generated dataset: where it is and what the extraction must find."""

    dataset: str
    root: Path
    splits: Path
    classes: list[str]
    frames: dict[str, int]  # id -> frame count of every good video
    roles: dict[str, dict[str, str]]  # id -> {split id: role} of every good video
    corrupt: str  # id of the one corrupt video
    problems: set[str] = field(default_factory=set)  # ids with listing problems


@pytest.fixture
def hmdb51_layout(tmp_path: Path) -> Layout:
    """HMDB51: 2 classes, 4 videos, 3 official-format splits, a corrupt and a missing video."""
    root, splits = tmp_path / "hmdb51", tmp_path / "hmdb51" / "testTrainMulti_7030_splits"
    videos = {
        "brush_hair": {"v_a": (3, "1 2 0"), "v_b": (5, "2 1 1")},
        "fall_floor": {"v_c": (4, "1 1 2"), "v_d": (0, "2 2 1")},
    }
    splits.mkdir(parents=True)
    frames, roles = {}, {}
    for class_name, clips in videos.items():
        for clip, (count, tags) in clips.items():
            video_id = f"{class_name}/{clip}"
            if count:
                write_video(root / class_name / f"{clip}.avi", count)
                frames[video_id] = count
                roles[video_id] = {
                    str(k + 1): {"0": "unused", "1": "train", "2": "test"}[t]
                    for k, t in enumerate(tags.split())
                }
            else:
                write_corrupt(root / class_name / f"{clip}.avi")
        for k in range(3):
            lines = [f"{clip}.avi {tags.split()[k]} " for clip, (_, tags) in clips.items()]
            if class_name == "fall_floor":
                lines.append("v_gone.avi 1 ")
            (splits / f"{class_name}_test_split{k + 1}.txt").write_text("\n".join(lines) + "\n")
    return Layout(
        "hmdb51", root, splits, ["brush_hair", "fall_floor"], frames, roles,
        corrupt="fall_floor/v_d", problems={"fall_floor/v_gone"},
    )  # fmt: skip


@pytest.fixture
def ucf_sports_layout(tmp_path: Path) -> Layout:
    """UCF Sports: 2 classes over 3 viewpoint folders, JPEG folders and one AVI, a corrupt JPEG."""
    root = tmp_path / "ucf"
    frames = {
        "Golf-Swing-Back/001": 4,
        "Golf-Swing-Front/001": 3,
        "Golf-Swing-Front/002": 3,
        "Walk-Front/001": 5,
        "Walk-Front/002": 2,
    }
    for video_id, count in frames.items():
        if video_id == "Walk-Front/002":
            write_video(root / video_id / "clip.avi", count)
        else:
            write_frames(root / video_id, count)
    write_frames(root / "Walk-Front/003", 2)
    (root / "Walk-Front/003/frame1.jpg").write_bytes(jpeg_bytes(1)[:40])
    (root / "Walk-Front/004/gt").mkdir(parents=True)
    splits = tmp_path / "ucf_split.txt"
    return Layout(
        "ucf_sports", root, splits, ["Golf-Swing", "Walk"], frames, {},
        corrupt="Walk-Front/003", problems={"Walk-Front/004"},
    )  # fmt: skip


@pytest.fixture
def olympic_sports_layout(tmp_path: Path) -> Layout:
    """Olympic Sports: 2 classes, SEQ clips (one with padded records) and an AVI, a corrupt SEQ."""
    root = tmp_path / "olympic"
    write_seq(root / "bowling" / "b1.seq", 3)
    write_seq(root / "bowling" / "b2.seq", 4, gap=16)
    write_video(root / "vault" / "v1.avi", 5)
    write_corrupt(root / "vault" / "v2.seq")
    write_seq(root / "vault" / "v3.seq", 2)
    splits = tmp_path / "olympic_splits"
    splits.mkdir()
    (splits / "train.txt").write_text("bowling/b1\nvault/v1.seq\nvault/v2\n")
    (splits / "test.txt").write_text("# official test list\nbowling/b2\nvault/v_missing\n")
    frames = {"bowling/b1": 3, "bowling/b2": 4, "vault/v1": 5}
    roles = {i: {"1": "test" if i == "bowling/b2" else "train"} for i in frames}
    return Layout(
        "olympic_sports", root, splits, ["bowling", "vault"], frames, roles,
        corrupt="vault/v2", problems={"vault/v3", "vault/v_missing"},
    )  # fmt: skip


LAYOUTS = ["hmdb51_layout", "ucf_sports_layout", "olympic_sports_layout"]


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> Layout:
    """Each of the three dataset layouts in turn."""
    result: Layout = request.getfixturevalue(request.param)
    return result


class Media:
    """The generators above, for tests (served by the ``media`` fixture, not imported)."""

    frame_colour = staticmethod(frame_colour)
    jpeg_bytes = staticmethod(jpeg_bytes)
    seq_bytes = staticmethod(seq_bytes)
    write_video = staticmethod(write_video)
    write_frames = staticmethod(write_frames)
    write_seq = staticmethod(write_seq)
    write_corrupt = staticmethod(write_corrupt)


@pytest.fixture
def media() -> type[Media]:
    """Generators of tiny media files."""
    return Media
