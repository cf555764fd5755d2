"""The features directory format and ClipDataset's clip semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from examples.action_recognition.features import (
    ClipDataset,
    VideoEntry,
    read_index,
    save_features,
    write_index,
)

REGIONS, CHANNELS = 3, 2
LENGTHS = {"long": 10, "exact": 4, "short": 2}  # frames per video, with clip_len 4 below


@pytest.fixture
def features_dir(tmp_path: Path) -> Path:
    """Three train videos whose value at frame t is 100 * video + t, and one test video."""
    entries = []
    for number, (name, length) in enumerate(LENGTHS.items()):
        values = 100 * number + np.arange(length, dtype=np.float32)
        array = np.broadcast_to(values[:, None, None], (length, REGIONS, CHANNELS))
        save_features(tmp_path / "features" / f"{name}.npy", array)
        entries.append(
            VideoEntry(
                name, number % 2, "ab"[number % 2], f"features/{name}.npy", length, {"1": "train"}
            )
        )
    save_features(tmp_path / "features" / "t.npy", np.zeros((5, REGIONS, CHANNELS)))
    entries.append(VideoEntry("t", 1, "b", "features/t.npy", 5, {"1": "test"}))
    write_index(tmp_path, "toy", ["a", "b"], entries, (REGIONS, CHANNELS))
    return tmp_path


def frame_values(item: dict[str, torch.Tensor]) -> list[float]:
    """The value of each frame of a clip (all regions and channels of a frame are equal)."""
    return item["features"][:, 0, 0].float().tolist()


def test_save_features_writes_float16_and_leaves_no_temporary_file(tmp_path):
    save_features(tmp_path / "v.npy", np.full((2, 3, 4), 0.5))
    assert np.load(tmp_path / "v.npy").dtype == np.float16
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_save_features_refuses_other_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(frames>=1, h\*w, C\), got \(0, 3, 4\)"):
        save_features(tmp_path / "v.npy", np.zeros((0, 3, 4)))


def test_index_round_trip_and_split_union(features_dir):
    index = read_index(features_dir)
    assert index.dataset == "toy" and index.classes == ["a", "b"]
    assert index.feature_shape == (REGIONS, CHANNELS)
    assert index.splits == ["1"]
    assert [v.id for v in index.videos] == ["long", "exact", "short", "t"]
    assert json.loads((features_dir / "index.json").read_text())["dtype"] == "float16"


def test_index_with_a_wrong_class_name_is_refused(tmp_path):
    entry = VideoEntry("v", 0, "b", "features/v.npy", 1, {"1": "train"})
    with pytest.raises(ValueError, match="class_name 'b' but label 0 is 'a'"):
        write_index(tmp_path, "toy", ["a", "b"], [entry], (1, 1))


def test_random_clips_are_windows_of_consecutive_frames_inside_the_video(features_dir):
    dataset = ClipDataset(features_dir, clip_len=4, mode="random")
    assert len(dataset) == 3 and dataset.labels == [0, 1, 0]
    for epoch in range(5):
        dataset.set_epoch(epoch)
        values = frame_values(dataset[0])
        assert values == [values[0] + t for t in range(4)] and 0 <= values[0] <= 6
        assert dataset[0]["mask"].all()


def test_random_clips_repeat_within_an_epoch_and_change_across_epochs(features_dir):
    dataset = ClipDataset(features_dir, clip_len=4, mode="random", seed=3)
    starts = []
    for epoch in range(8):
        dataset.set_epoch(epoch)
        assert frame_values(dataset[0]) == frame_values(dataset[0])
        starts.append(frame_values(dataset[0])[0])
    # 7 possible starts: 8 epochs all on one start has probability 7**-7 for a fair draw.
    assert len(set(starts)) > 1
    again = ClipDataset(features_dir, clip_len=4, mode="random", seed=3)
    again.set_epoch(5)
    dataset.set_epoch(5)
    assert frame_values(again[0]) == frame_values(dataset[0])


def test_short_videos_are_zero_padded_and_masked_in_both_modes(features_dir):
    for mode in ("random", "blocks"):
        dataset = ClipDataset(features_dir, clip_len=4, mode=mode)
        item = dataset[len(dataset) - 1]  # the 2-frame video
        assert frame_values(item) == [200.0, 201.0, 0.0, 0.0]
        assert item["mask"].tolist() == [True, True, False, False]


def test_blocks_cover_each_whole_video_once(features_dir):
    dataset = ClipDataset(features_dir, clip_len=4, mode="blocks")
    # ceil(10/4) + ceil(4/4) + ceil(2/4) blocks
    assert len(dataset) == 3 + 1 + 1
    assert [int(dataset[i]["video"]) for i in range(5)] == [0, 0, 0, 1, 2]
    assert dataset.labels == [0, 0, 0, 1, 0]
    long_video = [
        v
        for i in range(3)
        for v, m in zip(frame_values(dataset[i]), dataset[i]["mask"], strict=True)
        if m
    ]
    assert long_video == [float(t) for t in range(10)]
    assert dataset[2]["mask"].tolist() == [True, True, False, False]


def test_item_types(features_dir):
    item = ClipDataset(features_dir, clip_len=4)[1]
    assert item["features"].dtype == torch.float16 and item["features"].shape == (4, 3, 2)
    assert item["mask"].dtype == torch.bool
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    assert item["video"].dtype == torch.int64 and int(item["video"]) == 1


def test_split_selection_and_metadata(features_dir):
    test = ClipDataset(features_dir, split="test", clip_len=4)
    assert [v.id for v in test.videos] == ["t"]
    assert test.num_classes == 2 and test.classes == ["a", "b"]
    assert test.nbytes == 5 * REGIONS * CHANNELS * 2
    with pytest.raises(ValueError, match=r"split_id '2' not in the index's splits \['1'\]"):
        ClipDataset(features_dir, split_id="2")
    with pytest.raises(ValueError, match="no 'unused' videos"):
        ClipDataset(features_dir, split="unused")


def test_device_copy_serves_the_same_items_as_the_memory_map(features_dir):
    mapped = ClipDataset(features_dir, clip_len=4, mode="blocks")
    loaded = ClipDataset(features_dir, clip_len=4, mode="blocks", device="cpu")
    for i in range(len(mapped)):
        for key, value in mapped[i].items():
            assert torch.equal(loaded[i][key], value)


def test_dataloader_workers_give_the_same_batches(features_dir):
    dataset = ClipDataset(features_dir, clip_len=4, mode="random", seed=1)
    dataset.set_epoch(2)
    inline = list(DataLoader(dataset, batch_size=2))
    workers = list(DataLoader(dataset, batch_size=2, num_workers=2))
    for a, b in zip(inline, workers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_feature_file_that_disagrees_with_the_index_is_named(features_dir):
    save_features(features_dir / "features" / "exact.npy", np.zeros((3, REGIONS, CHANNELS)))
    dataset = ClipDataset(features_dir, clip_len=4, mode="blocks")
    with pytest.raises(ValueError, match=r"exact.npy: expected float16 \(4, 3, 2\)"):
        dataset[3]
