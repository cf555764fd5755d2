"""Decoding video files, JPEG folders and Norpix SEQ files; frame sampling."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from examples.action_recognition.decode import (
    DecodeError,
    FrameSampling,
    count_frames,
    read_frames,
    read_seq_header,
    seq_frame_spans,
)

# Generated frames are flat colours; JPEG/MPEG-4 round trips move a channel by a few levels.
COLOUR_TOLERANCE = 6


def assert_colours(frames, indices, media):
    assert len(frames) == len(indices)
    for frame, index in zip(frames, indices, strict=True):
        assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
        centre = frame[112, 112].astype(int)
        assert np.abs(centre - media.frame_colour(index)).max() <= COLOUR_TOLERANCE, (index, centre)


@pytest.mark.parametrize("kind", ["video", "folder", "seq"])
def test_every_kind_of_input_gives_its_frames_in_order(kind, tmp_path, media):
    path = {
        "video": lambda: media.write_video(tmp_path / "v.avi", 6),
        "folder": lambda: media.write_frames(tmp_path / "f", 6),
        "seq": lambda: media.write_seq(tmp_path / "s.seq", 6),
    }[kind]()
    assert count_frames(path) == 6
    assert_colours(list(read_frames(path)), range(6), media)


def test_frame_folders_are_read_in_natural_order(tmp_path, media):
    folder = media.write_frames(tmp_path / "f", 12, pattern="img_{}.jpg")
    (folder / "notes.txt").write_text("ignored")
    assert_colours(list(read_frames(folder)), range(12), media)


@pytest.mark.parametrize(
    ("spec", "indices"),
    [("all", range(7)), ("stride:3", [0, 3, 6]), ("uniform:2", [1, 5]), ("uniform:9", range(7))],
)
def test_frame_sampling(spec, indices, tmp_path, media):
    path = media.write_video(tmp_path / "v.avi", 7)
    assert_colours(list(read_frames(path, FrameSampling.parse(spec))), list(indices), media)


@pytest.mark.parametrize("spec", ["some", "stride:0", "uniform:", "all:2", "stride:x"])
def test_bad_sampling_specs_are_refused(spec):
    with pytest.raises(ValueError, match="expected frames 'all', 'stride:K' or 'uniform:N'"):
        FrameSampling.parse(spec)


def test_seq_header_fields(media):
    data = media.seq_bytes([media.jpeg_bytes(0), media.jpeg_bytes(1)])
    header = read_seq_header(data)
    assert (header.width, header.height, header.num_frames) == (32, 24, 2)
    assert (header.version, header.image_format, header.bit_depth, header.fps) == (3, 201, 24, 25.0)


@pytest.mark.parametrize("gap", [8, 16])
def test_seq_frames_are_found_from_the_record_sizes(gap, media):
    jpegs = [media.jpeg_bytes(i) for i in range(3)]
    data = media.seq_bytes(jpegs, gap=gap)
    spans = seq_frame_spans(data, read_seq_header(data))
    assert [data[a:b] for a, b in spans] == jpegs


def test_seq_frames_are_found_by_markers_when_a_record_size_is_wrong(media):
    jpegs = [media.jpeg_bytes(i) for i in range(3)]
    data = bytearray(media.seq_bytes(jpegs))
    struct.pack_into("<I", data, 1024, 10**9)  # first record's size points past the file
    spans = seq_frame_spans(bytes(data), read_seq_header(bytes(data)))
    assert [data[a:b] for a, b in spans] == jpegs


def test_seq_with_an_unsupported_image_format_is_refused(tmp_path, media):
    path = tmp_path / "raw.seq"
    path.write_bytes(media.seq_bytes([media.jpeg_bytes(0)], image_format=100))
    with pytest.raises(DecodeError, match=r"raw.seq: SEQ image format 100 is not supported"):
        list(read_frames(path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("short.seq", b"\xed\xfe\x00\x00", "shorter than a SEQ header"),
        ("magic.seq", bytes(2048), "not a Norpix SEQ file: magic 0x0"),
        ("garbage.avi", b"not a video " * 200, "Invalid data"),
        ("empty.avi", b"", "Invalid data|End of file"),
    ],
)
def test_unreadable_files_raise_decode_error_naming_the_file(name, content, message, tmp_path):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DecodeError, match=rf"{name}: .*({message})"):
        list(read_frames(tmp_path / name))


def test_a_truncated_jpeg_frame_is_a_decode_error(tmp_path, media):
    folder = media.write_frames(tmp_path / "f", 3)
    (folder / "frame1.jpg").write_bytes(media.jpeg_bytes(1)[:40])
    with pytest.raises(DecodeError, match=r"f: frame 1: Truncated"):
        list(read_frames(folder))


@pytest.mark.parametrize("name", ["gone.seq", "gone", "gone.avi"])
def test_a_missing_input_is_a_decode_error(name, tmp_path):
    with pytest.raises(DecodeError, match=name):
        list(read_frames(tmp_path / name))


def test_an_input_without_frames_is_a_decode_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError, match="empty: no frames"):
        list(read_frames(tmp_path / "empty"))
