"""Training and evaluation end to end on tiny generated features: CLIs, resume, NaN stop, report."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from examples.action_recognition import evaluate
from examples.action_recognition import train as train_cli
from examples.action_recognition.config import Variant, example_config, parse_config
from examples.action_recognition.features import read_index
from examples.action_recognition.synthetic import generate
from examples.action_recognition.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    EpochBatches,
    NonFiniteError,
    load_checkpoint,
    train,
    write_config,
)
from tests.example.tiny_data import TINY

#: Columns of metrics.csv that depend only on the computation (not on the clock).
COMPUTED = ("iteration", "epoch", "lr", "loss", "cross_entropy", "surrogate", "accuracy")


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :data:`TINY` dataset, shared by the tests that do not change it."""
    directory = tmp_path_factory.mktemp("features")
    generate(directory, TINY)
    return directory


def _config(variant: Variant = "reinforce_hard", iterations: int = 2, **train: Any) -> Any:
    document = example_config(variant)
    document["train"].update(iterations=iterations, **train)
    return parse_config(document)


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / METRICS_NAME).open(newline="") as handle:
        return [{k: row[k] for k in COMPUTED} for row in csv.DictReader(handle)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_train_resume_evaluate_writes_report_and_plots(
    features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    config = tmp_path / "c.toml"
    write_config(config, _config("adaptive_gumbel_hard", iterations=2))
    args = ["--config", str(config), "--features", str(features), "--out", str(run)]
    assert train_cli.main([*args, "--no-progress"]) == 0
    assert load_checkpoint(run / CHECKPOINT_NAME)["iteration"] == 2
    write_config(config, _config("adaptive_gumbel_hard", iterations=3))
    assert train_cli.main([*args, "--no-progress", "--resume"]) == 0
    assert load_checkpoint(run / CHECKPOINT_NAME)["iteration"] == 3
    assert [r["iteration"] for r in _metrics(run)] == ["1", "2", "3"]
    assert any((run / "tensorboard").iterdir())

    assert evaluate.main(["--run", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "| Adaptive-Gumbel-Hard Attention |" in report
    assert "Attention on the actor" in report
    plots = {p.name for p in (run / "plots").iterdir()}
    assert plots == {
        "training_cost.png",
        "confusion_adaptive_gumbel_hard_attention.png",
        "attention_adaptive_gumbel_hard_attention.png",
        "boundaries_adaptive_gumbel_hard_attention.png",
    }
    results = json.loads((run / "evaluation.json").read_text())["runs"][0]
    test_videos = [v for v in read_index(features).videos if v.splits["1"] == "test"]
    assert len(results["predictions"]) == len(test_videos)
    assert 0.0 <= results["accuracy"] <= 1.0
    assert len(results["boundaries"]) == 3
    assert "## The hierarchy, per layer" in report
    hierarchy = results["hierarchy"]
    assert [layer["layer"] for layer in hierarchy] == [1, 2, 3]
    assert hierarchy[0]["input_share"] == 1.0  # layer 1 reads the frames at every step
    for layer in hierarchy:
        shares = layer["update_share"] + layer["copy_share"] + layer["flush_share"]
        assert shares == pytest.approx(1.0)
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize("variant", ["reinforce_hard", "lstm_soft"])
def test_resumed_run_equals_uninterrupted_run(
    features: Path, tmp_path: Path, variant: Variant
) -> None:
    train(_config(variant, iterations=4), features, tmp_path / "whole", progress=False)
    train(_config(variant, iterations=2), features, tmp_path / "split", progress=False)
    train(_config(variant, iterations=4), features, tmp_path / "split", resume=True, progress=False)
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "whole")
    whole = load_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME)["model"]
    split = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_resume_drops_metrics_rows_after_the_checkpoint(features: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(iterations=3, checkpoint_every=2), features, run, progress=False)
    rows = _metrics(run)
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME)
    assert checkpoint["iteration"] == 3
    # Pretend the process died after row 3 was logged but before its checkpoint:
    payload = dict(checkpoint, iteration=2)
    train_cli.save_checkpoint(run / CHECKPOINT_NAME, payload)
    train(_config(iterations=2), features, run, resume=True, progress=False)
    assert _metrics(run) == rows[:2]


def _train_two_iterations(features: Path, tmp_path: Path) -> tuple[list[str], Path]:
    run, config = tmp_path / "run", tmp_path / "c.toml"
    write_config(config, _config(iterations=2))
    args = ["--config", str(config), "--features", str(features), "--out", str(run)]
    assert train_cli.main([*args, "--no-progress"]) == 0
    write_config(config, _config(iterations=4))
    return [*args, "--no-progress", "--resume"], run / CHECKPOINT_NAME


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resume, checkpoint = _train_two_iterations(features, tmp_path)
    payload = load_checkpoint(checkpoint)
    payload["model"]["classifier.bias"][0] = float("nan")  # the weights went bad
    train_cli.save_checkpoint(checkpoint, payload)
    before = _digest(checkpoint)
    assert train_cli.main(resume) == 1
    error = capsys.readouterr().err
    assert "the loss became nan at iteration 3; stopped" in error
    assert f"The last good checkpoint is kept: {checkpoint}" in error
    assert _digest(checkpoint) == before
    assert not (checkpoint.parent / METRICS_NAME).read_text().count("\n3,")


def test_non_finite_features_stop_and_name_the_videos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "features"
    generate(data, TINY)
    resume, checkpoint = _train_two_iterations(data, tmp_path)
    before = _digest(checkpoint)
    for video in read_index(data).videos:  # the data goes bad
        path = data / video.file
        np.save(path, np.full_like(np.load(path), np.nan))
    assert train_cli.main(resume) == 1
    error = capsys.readouterr().err
    assert "non-finite features in the batch of iteration 3 (videos p" in error
    assert _digest(checkpoint) == before
    assert load_checkpoint(checkpoint)["iteration"] == 2


def test_non_finite_before_any_checkpoint_says_there_is_none(tmp_path: Path) -> None:
    data = tmp_path / "features"
    generate(data, TINY)
    for video in read_index(data).videos:
        path = data / video.file
        np.save(path, np.full_like(np.load(path), np.inf))
    with pytest.raises(NonFiniteError, match="No checkpoint was written yet"):
        train(_config(), data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_existing_run_needs_resume_and_the_same_config(features: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(iterations=1), features, run, progress=False)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(_config(iterations=1), features, run, progress=False)
    document = example_config("reinforce_hard")
    document["optim"]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"optim\.lr was 0\.001 in the checkpoint, now 0\.5"):
        train(parse_config(document), features, run, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint\.pt"):
        train(_config(), features, tmp_path / "empty", resume=True, progress=False)


def test_cli_bad_config_names_the_key(
    features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    write_config(config, _config())
    config.write_text(config.read_text().replace("[optim]", "[optim]\nmomentum = 0.9"))
    args = ["--config", str(config), "--features", str(features), "--out", str(tmp_path / "r")]
    assert train_cli.main(args) == 1
    assert "unknown config key 'optim.momentum'" in capsys.readouterr().err


def test_epoch_batches_resume_anywhere_and_shard_between_processes() -> None:
    whole = list(EpochBatches(10, 4, seed=3, start=0, stop=7))
    assert list(EpochBatches(10, 4, seed=3, start=4, stop=7)) == whole[4:]
    assert [key[0] for key in whole[2]] == [1] * 4  # 2 batches per epoch: batch 2 is epoch 1
    for iteration in range(7):
        shards = [
            next(iter(EpochBatches(10, 4, 3, iteration, iteration + 1, r, 2))) for r in (0, 1)
        ]
        assert sorted(shards[0] + shards[1]) == sorted(whole[iteration])
    epoch = [k for batch in whole[:2] for k in batch]
    assert len(set(epoch)) == 8  # no clip twice in an epoch


def test_epoch_batches_refuses_a_batch_that_does_not_split() -> None:
    with pytest.raises(ValueError, match="batch_size 5 must be divisible by the number of"):
        EpochBatches(10, 5, seed=0, start=0, stop=1, rank=0, world_size=2)
