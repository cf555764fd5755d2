"""The synthetic dataset's files have portable names; its classes keep readable names."""

from __future__ import annotations

import re
from pathlib import Path

from examples.action_recognition.features import read_index
from examples.action_recognition.synthetic import generate
from tests.example.tiny_data import TINY

#: Letters, digits, ``.``, ``_`` and ``-``: no shell metacharacter (``>`` redirects, ``|``
#: pipes, ``*`` globs, ...) and nothing that Windows forbids in a file name.
PORTABLE = re.compile(r"[A-Za-z0-9._-]+")


def test_every_path_written_is_portable(tmp_path: Path) -> None:
    generate(tmp_path, TINY)
    paths = [path.relative_to(tmp_path) for path in tmp_path.rglob("*")]
    assert any(path.suffix == ".npy" for path in paths)
    odd = [str(path) for path in paths if not all(PORTABLE.fullmatch(p) for p in path.parts)]
    assert not odd, f"names with characters other than letters, digits, . _ -: {odd}"


def test_classes_are_named_by_their_readable_sequence(tmp_path: Path) -> None:
    from examples.action_recognition.synthetic import class_folder, class_name

    truth = generate(tmp_path, TINY)
    index = read_index(tmp_path)
    assert index.classes == [class_name(sequence) for sequence in truth.sequences]
    assert all(">" in name for name in index.classes)
    for video in index.videos:
        folder = class_folder(truth.sequences[video.label])
        assert video.id.startswith(folder + "/"), (video.id, folder)
