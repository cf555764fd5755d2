"""Dataset listings: layouts, labels, official split formats, and reported problems.

The listings only look at names, so the media here are empty files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from examples.action_recognition.datasets import hmdb51, list_dataset, olympic_sports, ucf_sports


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def test_hmdb51_listing_from_the_fixture_layout(hmdb51_layout):
    listing = list_dataset("hmdb51", hmdb51_layout.root)  # default splits folder under the root
    assert listing.classes == ["brush_hair", "fall_floor"]
    roles = {v.id: v.splits for v in listing.videos}
    assert roles == {
        **hmdb51_layout.roles,
        "fall_floor/v_d": {"1": "test", "2": "test", "3": "train"},
    }
    assert [v.label for v in listing.videos] == [0, 0, 1, 1]
    assert set(listing.problems) == hmdb51_layout.problems


def test_hmdb51_reports_videos_missing_from_some_split(tmp_path):
    for name in ("a/x.avi", "a/y.avi", "b/z.avi"):
        touch(tmp_path / "root" / name)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "a_test_split1.txt").write_text("x.avi 1\ny.avi 2\n")
    (splits / "a_test_split2.txt").write_text("x.avi 2\n")
    listing = hmdb51.list_videos(tmp_path / "root", splits)
    assert [v.id for v in listing.videos] == ["a/x"]
    assert listing.problems == {
        "a/y": "on disk but not listed in split(s) 2",
        "b/z": "on disk but not listed in split(s) 1, 2",
    }


def test_hmdb51_labels_do_not_shift_when_a_class_folder_is_missing(tmp_path):
    touch(tmp_path / "root" / "b" / "y.avi")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "a_test_split1.txt").write_text("x.avi 1\n")
    (splits / "b_test_split1.txt").write_text("y.avi 2\n")
    listing = hmdb51.list_videos(tmp_path / "root", splits)
    assert listing.classes == ["a", "b"]
    assert [(v.id, v.label) for v in listing.videos] == [("b/y", 1)]
    assert list(listing.problems) == ["a/x"]


def test_hmdb51_bad_split_line_names_file_and_line(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a_test_split1.txt").write_text("x.avi 1\nx.avi 3\n")
    with pytest.raises(ValueError, match=r"a_test_split1.txt:2: expected '<video>.avi 0\|1\|2'"):
        hmdb51.read_split_files(tmp_path / "s")


def test_hmdb51_without_split_files_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no <class>_test_split<k>.txt files"):
        hmdb51.list_videos(tmp_path)


def test_ucf_sports_merges_viewpoints_but_not_swing_sideangle(tmp_path):
    root = tmp_path / "ucf"
    for folder in ("Golf-Swing-Back", "Golf-Swing-Side", "Swing-SideAngle", "Diving-Side"):
        touch(root / folder / "001" / "a.jpg")
    listing = ucf_sports.list_videos(root, tmp_path / "split.txt")
    assert listing.classes == ["Diving", "Golf-Swing", "Swing-SideAngle"]
    assert {v.id: v.class_name for v in listing.videos}["Golf-Swing-Side/001"] == "Golf-Swing"


def test_ucf_sports_prefers_frames_over_the_video_and_uses_the_video_alone(tmp_path):
    root = tmp_path / "ucf"
    touch(root / "Run-Side" / "001" / "f1.jpg")
    touch(root / "Run-Side" / "001" / "clip.avi")
    touch(root / "Run-Side" / "002" / "clip.avi")
    touch(root / "Run-Side" / "002" / "gt" / "box.txt")
    paths = {v.id: v.path for v in ucf_sports.list_videos(root, tmp_path / "s.txt").videos}
    assert paths == {
        "Run-Side/001": root / "Run-Side/001",
        "Run-Side/002": root / "Run-Side/002/clip.avi",
    }


def test_ucf_sports_split_is_stratified_written_and_reread(tmp_path):
    root = tmp_path / "ucf"
    sizes = {"Kicking-Front": 8, "Kicking-Side": 4, "Lifting": 6, "Walk-Front": 2}
    for folder, count in sizes.items():
        for n in range(count):
            touch(root / folder / f"{n:03d}" / "a.jpg")
    split_file = tmp_path / "split.txt"
    listing = ucf_sports.list_videos(root, split_file)
    test_per_class = Counter(v.class_name for v in listing.videos if v.splits["1"] == "test")
    # round(n / 4) per class: Kicking 12 -> 3, Lifting 6 -> 2 (6/4 = 1.5 rounds up), Walk 2 -> 1
    assert test_per_class == {"Kicking": 3, "Lifting": 2, "Walk": 1}
    assert split_file.read_text().startswith("# UCF Sports 75%/25% split, stratified, seed 0\n")
    written = split_file.read_bytes()
    again = ucf_sports.list_videos(root, split_file)
    assert again.videos == listing.videos and split_file.read_bytes() == written


def test_ucf_sports_split_depends_on_the_seed_only():
    labels = {f"c{c}/{n:03d}": f"c{c}" for c in range(3) for n in range(8)}
    assert ucf_sports.draw_split(labels, seed=1) == ucf_sports.draw_split(
        dict(reversed(labels.items())), seed=1
    )
    assert ucf_sports.draw_split(labels, seed=1) != ucf_sports.draw_split(labels, seed=2)


def test_ucf_sports_reports_videos_missing_from_the_split_file_and_from_disk(tmp_path):
    root = tmp_path / "ucf"
    touch(root / "Walk-Front" / "001" / "a.jpg")
    touch(root / "Walk-Front" / "002" / "a.jpg")
    (root / "Walk-Front" / "003").mkdir()
    split_file = tmp_path / "split.txt"
    split_file.write_text("Walk-Front/001 train  # comment\nWalk-Front/009 test\n")
    listing = ucf_sports.list_videos(root, split_file)
    assert [v.id for v in listing.videos] == ["Walk-Front/001"]
    assert set(listing.problems) == {"Walk-Front/002", "Walk-Front/003", "Walk-Front/009"}
    assert "no image frames and no video file" in listing.problems["Walk-Front/003"]


def test_ucf_sports_needs_a_split_file_path(tmp_path):
    with pytest.raises(ValueError, match="give a split file path"):
        list_dataset("ucf_sports", tmp_path)


@pytest.mark.parametrize("form", ["flat", "per_class"])
def test_olympic_sports_accepts_both_list_forms(form, tmp_path):
    root = tmp_path / "olympic"
    for clip in ("bowling/b1.seq", "bowling/b2.seq", "vault/v1.avi", "vault/v1.seq"):
        touch(root / clip)
    if form == "flat":
        (root / "train.txt").write_text("bowling/b1\nvault/v1.seq\n")
        (root / "test.txt").write_text("bowling/b2.seq\n")
    else:
        (root / "train").mkdir()
        (root / "test").mkdir()
        (root / "train" / "bowling.txt").write_text("b1\n")
        (root / "train" / "vault.txt").write_text("v1\n")
        (root / "test" / "bowling.txt").write_text("b2\n")
    listing = olympic_sports.list_videos(root)
    assert listing.classes == ["bowling", "vault"]
    assert {v.id: (v.label, v.splits["1"], v.path.suffix) for v in listing.videos} == {
        "bowling/b1": (0, "train", ".seq"),
        "bowling/b2": (0, "test", ".seq"),
        "vault/v1": (1, "train", ".seq"),
    }
    assert listing.problems == {}


def test_olympic_sports_reports_problems(olympic_sports_layout, tmp_path):
    (olympic_sports_layout.splits / "test.txt").write_text(
        "bowling/b2\nvault/v1\nvault/v_missing\n"
    )
    listing = olympic_sports.list_videos(olympic_sports_layout.root, olympic_sports_layout.splits)
    assert listing.problems == {
        "vault/v1": "listed 2 times (train, test)",
        "vault/v3": "on disk but in neither the train nor the test list",
        "vault/v_missing": f"listed in the splits but not found under {olympic_sports_layout.root}",
    }


def test_olympic_sports_flat_list_needs_class_slash_clip(tmp_path):
    (tmp_path / "train.txt").write_text("b1\n")
    with pytest.raises(ValueError, match=r"expected '<class>/<clip>' lines, got 'b1'"):
        olympic_sports.read_split_lists(tmp_path)


def test_olympic_sports_without_lists_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no train.txt and no train/<class>.txt"):
        olympic_sports.list_videos(tmp_path)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match=r"expected a dataset in .* got 'kinetics'"):
        list_dataset("kinetics", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        list_dataset("hmdb51", tmp_path / "nowhere")
