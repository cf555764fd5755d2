"""The built-in demo: all five variants on a synthetic action dataset, on a CPU, in minutes.

::

    python -m examples.action_recognition.demo [--out DIR] [--device cpu]
        [--seed N] [--iterations N] [--no-progress]

1. writes the synthetic dataset of :mod:`.synthetic` (actors performing
   ordered sub-actions in moving 2×2 "home" regions among distractors) as a
   features directory, ``DIR/features``;
2. trains the five variants with ``configs/demo/<variant>.toml`` and the
   controls of :data:`CONTROLS` with ``configs/demo/<control>.toml`` into
   ``DIR/runs/<name>`` (a run already there is resumed, so a finished one
   is not trained again, and one trained for fewer than ``--iterations`` is
   trained on);
3. evaluates them together into ``DIR/report.md`` and ``DIR/plots/``: the
   accuracy table, the share of attention on the actor, how the boundaries meet
   the sub-action changes, each layer's hierarchy (firing rate, operations,
   input from below, segments, cut off or not), the training curves, confusion
   matrices, attention maps and boundaries through time.

The controls show what the learnt hierarchy adds: the soft HM-AN with every
boundary forced to 1, the same wiring with every layer UPDATEing at every step
(a stacked LSTM), and the LSTM baseline at HM-AN's clip length (the baseline
itself reads clips half as long, as in the paper).

``--seed N`` draws the data and every run from seed ``N`` instead of 0; each
seed needs its own ``--out`` (the scores of this small demo move with the
seed: see the example's README).

The demo's models are small (hidden 64) and their per-step work is tiny, so
they run on one CPU thread: more threads only add synchronisation (and on a
busy machine, a lot of it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .config import VARIANTS, load_config
from .evaluate import evaluate_run, write_report
from .synthetic import SyntheticSpec, generate, read_ground_truth
from .train import CHECKPOINT_NAME, train

__all__ = ["CONFIG_DIR", "CONTROLS", "main", "run_demo"]

#: Where the demo's config files are.
CONFIG_DIR = Path(__file__).parent / "configs" / "demo"

#: The controls (config file stem: name in the report), trained after the five variants.
CONTROLS: dict[str, str] = {
    "soft_always": "Control: Soft Attention, every boundary 1",
    "soft_update": "Control: Soft Attention, every layer UPDATEs (stacked LSTM)",
    "lstm_soft_clip32": "Control: Baseline at HM-AN's clip length (32 frames)",
}


def run_demo(
    out_dir: str | Path,
    *,
    device: str = "cpu",
    variants: Sequence[str] = VARIANTS,
    controls: Sequence[str] = tuple(CONTROLS),
    spec: SyntheticSpec | None = None,
    seed: int | None = None,
    iterations: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate the data, train ``variants`` and ``controls``, write the report; returns its path.

    ``seed`` replaces the seed of the data (``spec.seed``) and of every config;
    ``iterations`` the configs' ``train.iterations`` (None: as in the files).
    """
    out = Path(out_dir)
    features = out / "features"
    spec = SyntheticSpec() if spec is None else spec
    spec = spec if seed is None else replace(spec, seed=seed)
    existing = read_ground_truth(features)
    if existing is not None and existing.spec != spec and (out / "runs").is_dir():
        raise ValueError(
            f"{out} holds a demo trained on other data (seed {existing.spec.seed}); "
            "give this one another output directory"
        )
    generate(features, spec)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown controls {unknown} (expected some of {list(CONTROLS)})")
    runs = []
    for name in (*variants, *controls):
        run_dir = out / "runs" / name
        config = load_config(CONFIG_DIR / f"{name}.toml")
        if seed is not None:
            config = replace(config, seed=seed)
        if iterations is not None:
            config = replace(config, train=replace(config.train, iterations=iterations))
        resume = (run_dir / CHECKPOINT_NAME).exists()
        train(config, features, run_dir, device=device, resume=resume, progress=progress)
        runs.append(run_dir)
    evaluations = [evaluate_run(run, device=device, name=CONTROLS.get(run.name)) for run in runs]
    return write_report(evaluations, out)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.action_recognition.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="hman_demo", help="output directory (default hman_demo)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the data and of every run (default 0)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="training iterations (default 400)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    if args.device == "cpu":
        torch.set_num_threads(1)
    start = time.perf_counter()
    report = run_demo(
        args.out,
        device=args.device,
        seed=args.seed,
        iterations=args.iterations,
        progress=not args.no_progress,
    )
    print(report.read_text().split("## Average precision per class")[0].rstrip())
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s. Report: {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
