"""The extraction CLI end to end on tiny versions of the three dataset layouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.action_recognition import extract
from examples.action_recognition.backbones import FrameEncoder, load_backbone, tiny_backbone
from examples.action_recognition.datasets import list_dataset
from examples.action_recognition.features import read_failures, read_index

TINY = "examples.action_recognition.backbones:tiny_backbone"
TINY_SHAPE = (4, 8)  # tiny_backbone(): 2 x 2 regions, 8 channels


def run_cli(layout, out: Path, *extra: str) -> int:
    """Run ``extract.main`` in-process with the tiny backbone."""
    argv = ["--dataset", layout.dataset, "--root", str(layout.root), "--splits", str(layout.splits)]
    argv += ["--out", str(out), "--backbone", TINY, "--batch-size", "2", "--workers", "0"]
    return extract.main([*argv, "--no-progress", *extra])


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (but the lock) by relative path, with its bytes."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_extracts_every_good_video_with_its_frames_labels_and_splits(layout, tmp_path):
    out = tmp_path / "out"
    assert run_cli(layout, out) == 0
    index = read_index(out)
    assert index.dataset == layout.dataset
    assert index.classes == layout.classes
    assert index.feature_shape == TINY_SHAPE
    assert {v.id: v.num_frames for v in index.videos} == layout.frames
    for video in index.videos:
        array = np.load(out / video.file)
        assert array.dtype == np.float16 and array.shape == (video.num_frames, *TINY_SHAPE)
        assert index.classes[video.label] == video.class_name
        assert video.id.startswith(video.class_name)
        if layout.roles:
            assert video.splits == layout.roles[video.id]
        else:  # UCF Sports: the drawn split, read back from the file it was written to
            assert set(video.splits) == {"1"} and video.splits["1"] in ("train", "test")
    assert set(read_failures(out)) == {layout.corrupt} | layout.problems


def test_features_are_the_backbone_on_the_resized_normalised_frames(ucf_sports_layout, tmp_path):
    out = tmp_path / "out"
    run_cli(ucf_sports_layout, out)
    features = np.load(out / "features" / "Golf-Swing-Back" / "001.npy")
    # The frames are flat colours: every region holds the backbone applied to that colour.
    from PIL import Image

    frames = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
            for p in sorted((ucf_sports_layout.root / "Golf-Swing-Back" / "001").glob("*.jpg"))
        ]
    )
    expected = FrameEncoder(tiny_backbone())(frames)
    np.testing.assert_array_equal(features, expected)


def test_failures_name_the_cause_and_the_rest_goes_on(hmdb51_layout, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        run_cli(hmdb51_layout, out)
    failures = read_failures(out)
    assert "Invalid data" in failures["fall_floor/v_d"]
    assert "not found" in failures["fall_floor/v_gone"]
    assert "fall_floor/v_d" in caplog.text
    assert len(read_index(out).videos) == 3


def test_a_second_run_extracts_nothing_and_changes_no_byte(olympic_sports_layout, tmp_path):
    out = tmp_path / "out"
    run_cli(olympic_sports_layout, out)
    before = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")}
    listing = list_dataset(
        "olympic_sports", olympic_sports_layout.root, olympic_sports_layout.splits
    )
    encoder = FrameEncoder(tiny_backbone())
    summary = extract.extract(listing, out, encoder, batch_size=2)
    assert (summary.videos, summary.frames) == (0, 0)
    assert snapshot(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_resume_extracts_only_what_is_missing(hmdb51_layout, tmp_path):
    out = tmp_path / "out"
    run_cli(hmdb51_layout, out)
    full = snapshot(out)
    (out / "features" / "brush_hair" / "v_b.npy").unlink()
    listing = list_dataset("hmdb51", hmdb51_layout.root, hmdb51_layout.splits)
    summary = extract.extract(listing, out, FrameEncoder(tiny_backbone()), batch_size=2)
    assert (summary.videos, summary.frames) == (1, 5)
    assert snapshot(out) == full


def test_two_shards_together_equal_one_run(layout, tmp_path):
    run_cli(layout, tmp_path / "whole")
    run_cli(layout, tmp_path / "sharded", "--shard", "1/2")
    partial = read_index(tmp_path / "sharded")
    assert 0 < len(partial.videos) < len(layout.frames)
    run_cli(layout, tmp_path / "sharded", "--shard", "0/2")
    assert snapshot(tmp_path / "sharded") == snapshot(tmp_path / "whole")


def test_decoding_workers_give_the_same_directory(olympic_sports_layout, tmp_path):
    run_cli(olympic_sports_layout, tmp_path / "inline")
    run_cli(olympic_sports_layout, tmp_path / "workers", "--workers", "2")
    assert snapshot(tmp_path / "workers") == snapshot(tmp_path / "inline")


def test_frame_sampling_option(olympic_sports_layout, tmp_path):
    run_cli(olympic_sports_layout, tmp_path / "out", "--frames", "uniform:2")
    assert {v.num_frames for v in read_index(tmp_path / "out").videos} == {2}


def test_module_entry_point_runs(ucf_sports_layout, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "examples.action_recognition.extract"]
    command += ["--dataset", "ucf_sports", "--root", str(ucf_sports_layout.root), "--out", str(out)]
    command += ["--backbone", "tiny", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(read_index(out).videos) == len(ucf_sports_layout.frames)
    assert (out / extract.UCF_SPLIT_NAME).is_file()
    assert "extract: 100%" in result.stderr  # the tqdm bar


def test_resnet152_without_torchvision_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="needs torchvision: pip install torchvision"):
        load_backbone("resnet152", random_weights=True)


def test_resnet152_without_weights_asks_for_the_file_or_random_weights(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", object())
    with pytest.raises(ValueError, match="needs --weights FILE"):
        load_backbone("resnet152")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights file .*nope\.pt does not exist"):
        load_backbone("tiny", weights=tmp_path / "nope.pt")


def test_weights_file_is_loaded_into_an_imported_backbone(tmp_path):
    state = {k: torch.ones_like(v) for k, v in tiny_backbone().state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    backbone = load_backbone(TINY, weights=tmp_path / "w.pt")
    assert all(bool((v == 1).all()) for v in backbone.state_dict().values())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nodots", "expected a backbone"),
        ("examples.action_recognition.backbones:nothing", "no callable 'nothing'"),
        ("examples.action_recognition.backbones:IMAGENET_MEAN", "no callable"),
    ],
)
def test_bad_backbone_specs_are_explained(spec, message):
    with pytest.raises(ValueError, match=message):
        load_backbone(spec)


def test_a_backbone_that_does_not_give_feature_maps_is_refused():
    with pytest.raises(ValueError, match=r"\(N, C, h, w\) with N=1, got \(1, 3\)"):
        FrameEncoder(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()))


def test_features_of_another_backbone_in_the_same_directory_are_refused(hmdb51_layout, tmp_path):
    out = tmp_path / "out"
    run_cli(hmdb51_layout, out)
    listing = list_dataset("hmdb51", hmdb51_layout.root, hmdb51_layout.splits)
    with pytest.raises(ValueError, match=r"has \(4, 8\) features per frame but the backbone gives"):
        extract.extract(listing, out, FrameEncoder(tiny_backbone(channels=3)))


@pytest.mark.parametrize("spec", ["2/2", "1", "a/3", "-1/2"])
def test_bad_shard_specs_are_refused(spec):
    with pytest.raises(ValueError, match="0 <= I < N"):
        extract.parse_shard(spec)
