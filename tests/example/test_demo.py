"""The built-in demo end to end on a tiny dataset: seed and iterations options, resuming, CLI."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from examples.action_recognition import demo
from examples.action_recognition.config import (
    LEARNT_BOUNDARY_KEYS,
    VARIANTS,
    config_to_dict,
    load_config,
)
from examples.action_recognition.evaluate import VARIANT_NAMES
from examples.action_recognition.synthetic import read_ground_truth
from examples.action_recognition.train import CONFIG_NAME, METRICS_NAME
from tests.example.tiny_data import TINY


def _digests(out: Path) -> dict[str, str]:
    return {
        v: hashlib.sha256((out / "runs" / v / METRICS_NAME).read_bytes()).hexdigest()
        for v in (*VARIANTS, *demo.CONTROLS)
    }


def test_demo_seeds_data_and_runs_and_resumes_finished_runs(tmp_path: Path) -> None:
    report = demo.run_demo(tmp_path, spec=TINY, seed=3, iterations=2, progress=False)
    text = report.read_text()
    for variant in VARIANTS:
        assert f"| {VARIANT_NAMES[variant]} |" in text
    for name in (*VARIANTS, *demo.CONTROLS):
        config = load_config(tmp_path / "runs" / name / CONFIG_NAME)
        assert (config.seed, config.train.iterations) == (3, 2)
    for name in demo.CONTROLS.values():
        assert f"| {name} |" in text
    truth = read_ground_truth(tmp_path / "features")
    assert truth is not None and truth.spec.seed == 3
    before = _digests(tmp_path)
    demo.run_demo(tmp_path, spec=TINY, seed=3, iterations=2, progress=False)
    assert _digests(tmp_path) == before  # finished runs are evaluated again, not trained


def test_demo_without_seed_keeps_the_files_seeds(tmp_path: Path) -> None:
    demo.run_demo(
        tmp_path,
        spec=replace(TINY, seed=5),
        variants=("soft",),
        controls=(),
        iterations=1,
        progress=False,
    )
    assert load_config(tmp_path / "runs" / "soft" / CONFIG_NAME).seed == 0
    truth = read_ground_truth(tmp_path / "features")
    assert truth is not None and truth.spec.seed == 5


def test_demo_cli_refuses_zero_iterations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        demo.main(["--iterations", "0"])
    assert stop.value.code == 2
    assert "--iterations must be >= 1, got 0" in capsys.readouterr().err


def test_demo_refuses_an_output_directory_trained_on_other_data(tmp_path: Path) -> None:
    demo.run_demo(
        tmp_path, spec=TINY, variants=("soft",), controls=(), iterations=1, progress=False
    )
    before = (tmp_path / "features" / "synthetic.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds a demo trained on other data \(seed 0\)"):
        demo.run_demo(tmp_path, spec=TINY, seed=1, variants=("soft",), controls=(), progress=False)
    assert (tmp_path / "features" / "synthetic.json").read_bytes() == before


def _differences(name: str, base: str) -> dict[str, object]:
    control = config_to_dict(load_config(demo.CONFIG_DIR / f"{name}.toml"))
    variant = config_to_dict(load_config(demo.CONFIG_DIR / f"{base}.toml"))
    keys = {(t, k) for t in control if isinstance(control[t], dict) for k in control[t]}
    keys |= {(t, k) for t in variant if isinstance(variant[t], dict) for k in variant[t]}
    return {
        f"{t}.{k}": control[t].get(k)
        for t, k in sorted(keys)
        if control[t].get(k) != variant[t].get(k)
    }


def test_each_control_changes_only_what_its_name_says() -> None:
    soft = load_config(demo.CONFIG_DIR / "soft.toml")
    learnt = config_to_dict(soft)["model"].keys() & set(LEARNT_BOUNDARY_KEYS)
    assert "boundary_temperature" in learnt
    for control, boundary in (("soft_always", "always"), ("soft_update", "update")):
        expected = {"model.boundary": boundary, **{f"model.{k}": None for k in learnt}}
        assert _differences(control, "soft") == expected
    assert _differences("lstm_soft_clip32", "lstm_soft") == {
        "data.clip_len": soft.data.clip_len,
        "data.eval_clip_len": soft.data.eval_clip_len,
    }
    baseline = load_config(demo.CONFIG_DIR / "lstm_soft.toml")
    assert baseline.data.clip_len == soft.data.clip_len // 2  # the paper's half length


def test_demo_refuses_an_unknown_control(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown controls \['bogus'\]"):
        demo.run_demo(tmp_path, spec=TINY, variants=(), controls=("bogus",), progress=False)
