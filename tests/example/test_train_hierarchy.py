"""The hierarchy in training: per-layer columns in metrics.csv, the cut-off warning, the prior."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from examples.action_recognition import train as train_cli
from examples.action_recognition.config import Config, example_config, parse_config
from examples.action_recognition.model import HMAN, ActionModel, AlwaysBoundary
from examples.action_recognition.synthetic import generate
from examples.action_recognition.train import (
    HIERARCHY_COLUMNS,
    METRICS_NAME,
    CutOffWarning,
    train,
)
from tests.example.tiny_data import TINY


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("features")
    generate(directory, TINY)
    return directory


def _config(
    variant: Any = "gumbel_hard", iterations: int = 2, lr: float = 1e-3, **model: Any
) -> Config:
    document = example_config(variant)
    document["train"].update(iterations=iterations, log_every=1)
    document["optim"].update(lr=lr)
    document["model"].update(model)
    return parse_config(document)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / METRICS_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


class NeverBoundary(AlwaysBoundary):
    """A boundary that never fires: the layers above the first are cut off."""

    def sample(self, logits: Tensor, context: Tensor | None = None, **_: Any) -> Tensor:
        return torch.zeros_like(logits)


def _first_layer_never_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    build = train_cli.build_model

    def build_cut_off(*args: Any, **kwargs: Any) -> ActionModel:
        model = build(*args, **kwargs)
        assert isinstance(model, HMAN)
        model.rnn.layers[0].boundary = NeverBoundary()
        return model

    monkeypatch.setattr(train_cli, "build_model", build_cut_off)


def test_hman_rows_hold_every_layer_s_hierarchy_and_the_baseline_s_none(
    features: Path, tmp_path: Path
) -> None:
    train(_config(), features, tmp_path / "hman", progress=False)
    rows = _rows(tmp_path / "hman")
    expected = [f"layer{l}/{name}" for l in (1, 2, 3) for name in (*HIERARCHY_COLUMNS, "cut_off")]
    assert [k for k in rows[0] if k.startswith("layer")] == expected
    for row in rows:
        assert float(row["layer1/input_share"]) == 1.0
        for l in (1, 2, 3):
            shares = sum(float(row[f"layer{l}/{op}_share"]) for op in ("update", "copy", "flush"))
            assert shares == pytest.approx(1.0)
    train(_config("lstm_soft"), features, tmp_path / "lstm", progress=False)
    assert not [k for k in _rows(tmp_path / "lstm")[0] if k.startswith("layer")]


def test_a_layer_that_never_fires_cuts_the_ones_above_off_and_training_warns_once(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _first_layer_never_fires(monkeypatch)
    with pytest.warns(CutOffWarning) as caught:
        train(_config(iterations=3), features, tmp_path / "run", progress=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # layers 2 and 3, at the first row only
    assert messages[0].startswith("iteration 1: layer 2 of the HM-RNN is cut off: it got input")
    assert "on 0.00% of the real frames" in messages[0]
    assert messages[1].startswith("iteration 1: layer 3 of the HM-RNN is cut off: a layer below")
    for row in _rows(tmp_path / "run"):
        assert float(row["layer1/firing_rate"]) == 0.0
        assert float(row["layer2/input_share"]) == 0.0
        assert float(row["layer2/update_share"]) == 0.0  # it only COPYs or FLUSHes
        cut = [row[f"layer{l}/cut_off"] for l in (1, 2, 3)]
        assert cut == ["0", "1", "1"]


def test_a_connected_hierarchy_trains_without_warning(features: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CutOffWarning)
        train(_config(), features, tmp_path / "run", progress=False)
    assert all(row["layer2/cut_off"] == "0" for row in _rows(tmp_path / "run"))


@pytest.mark.filterwarnings("ignore::examples.action_recognition.train.CutOffWarning")
def test_the_prior_is_logged_and_pulls_the_rates_to_its_targets(
    features: Path, tmp_path: Path
) -> None:
    prior = {"boundary_prior_weight": 50.0, "boundary_prior_target": [0.05, 0.05, 0.05]}
    train(_config(iterations=30, lr=0.03, **prior), features, tmp_path / "prior", progress=False)
    train(_config(iterations=30, lr=0.03), features, tmp_path / "none", progress=False)
    with_prior, without = _rows(tmp_path / "prior"), _rows(tmp_path / "none")
    assert float(with_prior[0]["boundary_prior"]) > 0
    assert all(float(row["boundary_prior"]) == 0 for row in without)

    def late_rate(rows: list[dict[str, str]]) -> float:
        return sum(float(r[f"layer{l}/firing_rate"]) for r in rows[-5:] for l in (1, 2, 3)) / 15

    assert late_rate(with_prior) < 0.2 < late_rate(without)
