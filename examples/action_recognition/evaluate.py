"""Evaluate trained runs the way the paper does, and write a report with tables and figures.

::

    python -m examples.action_recognition.evaluate --run RUN_DIR
    python -m examples.action_recognition.evaluate --run RUNS/soft --run RUNS/lstm_soft \\
        --out REPORT_DIR

Each run's test videos are cut into consecutive blocks of ``eval_clip_len``
frames; the per-step class probabilities are averaged over each block's real
frames, and the blocks' averages over the video (Section IV.A). Then:
accuracy, mean class accuracy, per-class average precision and its mean (the
Olympic Sports metric), the confusion matrix; for the HM-AN variants, the
hierarchy on the test blocks, per layer (:func:`stochrnn.hierarchy_stats`:
firing rate, UPDATE/COPY/FLUSH shares, share of frames with input from below,
segment lengths, and whether the layer is cut off). On the synthetic dataset
(:mod:`.synthetic`), also the share of attention on the actor and how the
boundaries of each layer line up with the sub-action changes.

Written to ``--out`` (default: the run directory when there is one run)::

    report.md          tables as the paper's Tables I-III, the figures below
    evaluation.json    every number of the report, plus each video's prediction
    plots/             training_cost.png, confusion_<run>.png,
                       attention_<run>.png, boundaries_<run>.png

The model draws its hard attention and its boundaries at test time as in
training (stochastic), from a generator seeded with 0, so an evaluation is
reproducible.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from stochrnn import HierarchyMeter, HierarchyStats

from . import plots
from .config import Config, load_config
from .features import ClipDataset
from .metrics import (
    BoundaryAlignment,
    accuracy,
    attention_on_target,
    average_blocks,
    boundary_alignment,
    confusion_matrix,
    mean_class_accuracy,
    per_class_average_precision,
)
from .model import build_model
from .synthetic import read_ground_truth
from .train import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, load_checkpoint, read_run

__all__ = [
    "PAPER_RESULTS",
    "VARIANT_NAMES",
    "RunEvaluation",
    "evaluate_run",
    "main",
    "write_report",
]

#: How the paper names the variants (Tables I-III).
VARIANT_NAMES = {
    "lstm_soft": "Baseline (LSTM + soft attention)",
    "soft": "Soft Attention",
    "reinforce_hard": "REINFORCE-Hard Attention",
    "gumbel_hard": "Constant-Gumbel-Hard Attention",
    "adaptive_gumbel_hard": "Adaptive-Gumbel-Hard Attention",
}

#: The paper's results, in %: (metric, {variant: value}) per dataset (Tables I-III; Olympic
#: Sports mAP as stated in Section IV.B.2.b).
PAPER_RESULTS: dict[str, tuple[str, dict[str, float]]] = {
    "ucf_sports": (
        "accuracy",
        {
            "lstm_soft": 70.0,
            "soft": 81.1,
            "reinforce_hard": 82.0,
            "gumbel_hard": 76.0,
            "adaptive_gumbel_hard": 82.0,
        },
    ),
    "olympic_sports": (
        "mAP",
        {
            "lstm_soft": 73.7,
            "soft": 82.4,
            "reinforce_hard": 77.1,
            "gumbel_hard": 82.3,
            "adaptive_gumbel_hard": 82.7,
        },
    ),
    "hmdb51": (
        "accuracy",
        {
            "lstm_soft": 41.3,
            "soft": 43.8,
            "reinforce_hard": 41.5,
            "gumbel_hard": 44.0,
            "adaptive_gumbel_hard": 44.2,
        },
    ),
}

#: A boundary within this many frames of a sub-action change counts as on it.
BOUNDARY_TOLERANCE = 1


@dataclass
class VideoTrace:
    """One test video as the model saw it, block after block (for the figures)."""

    video_id: str
    energy: npt.NDArray[np.float64]  # (T, N) feature norm per region
    attention: npt.NDArray[np.float64]  # (T, N)
    boundaries: npt.NDArray[np.float64] | None  # (T, L)


@dataclass
class RunEvaluation:
    """Everything measured on one run.

    Attributes
    ----------
    name:
        How the run appears in the report (the paper's name of its variant).
    scores:
        ``(V, C)`` test-time averaged class probabilities of the test videos.
    labels:
        ``(V,)`` their labels; ``video_ids`` their ids.
    average_precision:
        ``(C,)`` per class (NaN for a class without test videos).
    attention_on_target:
        Mean attention on the actor's regions (synthetic data only, else ``None``).
    boundaries:
        Per layer, how its boundaries meet the sub-action changes (synthetic
        HM-AN runs only, else ``None``).
    hierarchy:
        Per layer, the hierarchy on the test blocks (HM-AN runs only, else ``None``).
    """

    name: str
    run_dir: Path
    config: Config
    dataset: str
    classes: list[str]
    video_ids: list[str]
    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    accuracy: float
    mean_class_accuracy: float
    average_precision: npt.NDArray[np.float64]
    mean_average_precision: float
    confusion: npt.NDArray[np.int64]
    attention_on_target: float | None
    boundaries: list[BoundaryAlignment] | None
    hierarchy: HierarchyStats | None
    example: VideoTrace
    example_target: npt.NDArray[np.bool_] | None
    example_changes: list[int] | None
    training: dict[str, Any]


def _training_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / METRICS_NAME
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no rows")
    return {
        "iterations": [int(r["iteration"]) for r in rows],
        "cross_entropy": [float(r["cross_entropy"]) for r in rows],
        "final_cross_entropy": float(rows[-1]["cross_entropy"]),
        "clips_per_s": float(np.mean([float(r["clips_per_s"]) for r in rows])),
        "data_wait": float(np.mean([float(r["data_wait"]) for r in rows])),
    }


@torch.no_grad()
def _predict(
    run_dir: Path,
    config: Config,
    dataset: ClipDataset,
    device: torch.device,
    batch_size: int,
) -> tuple[npt.NDArray[np.float64], list[int], dict[int, VideoTrace], HierarchyStats | None]:
    """Block scores ``(M, C)``, each block's video, every video's trace, the hierarchy."""
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
    model = build_model(config, dataset.num_classes, dataset.index.feature_shape).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    torch.manual_seed(0)
    block_scores: list[npt.NDArray[np.float64]] = []
    block_video: list[int] = []
    parts: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    meter, measured = HierarchyMeter(), False
    position = 0
    for batch in loader:
        features = batch["features"].to(device).float()
        mask = batch["mask"].to(device)
        out = model(features, mask)
        if out.boundaries is not None:
            meter.update(out.boundaries, mask)
            measured = True
        steps = mask.unsqueeze(-1).float()
        probs = (out.logits.float().softmax(-1) * steps).sum(1) / steps.sum(1).clamp(min=1)
        block_scores.append(probs.cpu().double().numpy())
        for row in range(len(features)):
            video = int(batch["video"][row])
            block_video.append(video)
            length = int(mask[row].sum())
            boundaries = None if out.boundaries is None else out.boundaries[row, :length]
            parts.setdefault(video, []).append(
                (
                    dataset.clips[position].start,
                    plots.feature_energy(features[row, :length].cpu().numpy()),
                    out.attention[row, :length].float().cpu().numpy(),
                    None if boundaries is None else boundaries.float().cpu().numpy(),
                )
            )
            position += 1
    traces = {}
    for video, blocks in parts.items():
        blocks.sort(key=lambda block: block[0])
        z = [b[3] for b in blocks]
        traces[video] = VideoTrace(
            dataset.videos[video].id,
            np.concatenate([b[1] for b in blocks]),
            np.concatenate([b[2] for b in blocks]),
            None if z[0] is None else np.concatenate(z),  # type: ignore[arg-type]
        )
    hierarchy = meter.compute() if measured else None
    return np.concatenate(block_scores), block_video, traces, hierarchy


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    features: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    name: str | None = None,
) -> RunEvaluation:
    """Evaluate the last checkpoint of ``run_dir`` on its features' test split.

    ``features`` overrides the directory recorded in ``run.json``; ``name`` the
    run's name in the report (default: the paper's name of its variant).
    """
    run = Path(run_dir)
    info = read_run(run)
    config = load_config(run / CONFIG_NAME)
    features_dir = Path(features or info.features)
    dataset = ClipDataset(
        features_dir,
        split="test",
        split_id=config.data.split,
        clip_len=config.data.eval_clip_len,
        mode="blocks",
    )
    if dataset.classes != info.classes:
        raise ValueError(f"{features_dir} has other classes than the run was trained on")
    block_scores, block_video, traces, hierarchy = _predict(
        run, config, dataset, torch.device(device), batch_size
    )
    videos, scores = average_blocks(block_scores, block_video)
    labels = np.array([dataset.videos[v].label for v in videos], dtype=np.int64)
    ap = per_class_average_precision(scores, labels)
    truth = read_ground_truth(features_dir)
    example = traces[int(videos[0])]
    on_target = alignment = target = changes = None
    if truth is not None:
        ids = [dataset.videos[v].id for v in videos]
        masks = {i: truth.videos[i].target_mask(dataset.index.feature_shape[0]) for i in ids}
        on_target = float(
            np.mean(
                [
                    attention_on_target(traces[v].attention, masks[i])
                    for v, i in zip(videos, ids, strict=True)
                ]
            )
        )
        target, changes = masks[example.video_id], truth.videos[example.video_id].changes
        if example.boundaries is not None:
            layers = example.boundaries.shape[1]
            alignment = [
                boundary_alignment(
                    [traces[v].boundaries[:, layer] for v in videos],  # type: ignore[index]
                    [truth.videos[i].changes for i in ids],
                    BOUNDARY_TOLERANCE,
                )
                for layer in range(layers)
            ]
    return RunEvaluation(
        name=name or VARIANT_NAMES[config.variant],
        run_dir=run,
        config=config,
        dataset=dataset.index.dataset,
        classes=dataset.classes,
        video_ids=[dataset.videos[v].id for v in videos],
        labels=labels,
        scores=scores,
        accuracy=accuracy(scores, labels),
        mean_class_accuracy=mean_class_accuracy(scores, labels),
        average_precision=ap,
        mean_average_precision=float(np.nanmean(ap)),
        confusion=confusion_matrix(scores, labels),
        attention_on_target=on_target,
        boundaries=alignment,
        hierarchy=hierarchy,
        example=example,
        example_target=target,
        example_changes=changes,
        training=_training_summary(run),
    )


# --------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _results_table(runs: Sequence[RunEvaluation]) -> list[str]:
    paper = PAPER_RESULTS.get(runs[0].dataset)
    header = ["Method", "Accuracy", "Mean class accuracy", "mAP"]
    if paper:
        header.append(f"Paper ({paper[0]})")
    rows = []
    for r in runs:
        row = [
            r.name,
            _pct(r.accuracy),
            _pct(r.mean_class_accuracy),
            _pct(r.mean_average_precision),
        ]
        if paper:
            value = paper[1].get(r.config.variant)
            row.append("–" if value is None else f"{value:.1f}%")
        rows.append(row)
    return _table(header, rows)


def _synthetic_table(runs: Sequence[RunEvaluation]) -> list[str]:
    regions = runs[0].example.attention.shape[1]
    target = runs[0].example_target
    actor = 1 if target is None else int(target.sum(axis=1).max())
    layers = max((len(r.boundaries) for r in runs if r.boundaries), default=0)
    header = ["Method", "Attention on the actor"]
    header += [
        f"Layer {l + 1} boundaries: precision / recall (chance precision)" for l in range(layers)
    ]
    rows = []
    for r in runs:
        row = [r.name, _pct(r.attention_on_target)]
        for l in range(layers):
            if r.boundaries is None:
                row.append("–")
            else:
                b = r.boundaries[l]
                row.append(
                    f"{_pct(b.precision)} / {_pct(b.recall)} ({_pct(b.chance_precision)}), "
                    f"{b.rate:.2f} per frame"
                )
        rows.append(row)
    note = (
        f"Attention on the actor: mean attention weight on the {actor} regions where the current "
        f"sub-action is (uniform attention: {_pct(actor / regions)}). A boundary counts as "
        f"on a sub-action change when within {BOUNDARY_TOLERANCE} frame of it; chance "
        "precision is what boundaries at random frames would score. The recurrent state "
        "starts afresh at each test block."
    )
    return [*_table(header, rows), "", note]


def _hierarchy_table(runs: Sequence[RunEvaluation]) -> list[str]:
    header = [
        "Method",
        "Layer",
        "Fires per frame",
        "UPDATE / COPY / FLUSH",
        "Input from below",
        "Segment length: mean (10% / 50% / 90%)",
        "Cut off",
    ]
    rows = []
    for r in runs:
        if r.hierarchy is None:
            continue
        for layer in r.hierarchy.layers:
            quantiles = " / ".join(f"{length:g}" for _, length in layer.segment_quantiles)
            rows.append(
                [
                    r.name,
                    str(layer.layer),
                    f"{layer.firing_rate:.3f}",
                    f"{_pct(layer.update_share)} / {_pct(layer.copy_share)} / "
                    f"{_pct(layer.flush_share)}",
                    _pct(layer.input_share),
                    f"{layer.segment_mean:.1f} ({quantiles})",
                    "**yes**" if layer.cut_off else "no",
                ]
            )
    note = (
        "Over the real frames of the test blocks (each block starts from a fresh state). "
        "A layer FLUSHes after its own boundary, else UPDATEs when the layer below fired, "
        "else COPYs; it gets input from below only on the frames where the layer below "
        "fired (always, for layer 1). A layer is cut off when that happens on fewer than "
        "1% of the frames, or a layer below it is cut off: then the layers above it never "
        "see the input (`stochrnn.hierarchy_stats`)."
    )
    return [*_table(header, rows), "", note]


def _per_class_table(runs: Sequence[RunEvaluation]) -> list[str]:
    rows = [
        [name, *(_pct(r.average_precision[c]) for r in runs)]
        for c, name in enumerate(runs[0].classes)
    ]
    rows.append(["**mAP**", *(f"**{_pct(r.mean_average_precision)}**" for r in runs)])
    return _table(["Class", *(r.name for r in runs)], rows)


def _training_table(runs: Sequence[RunEvaluation]) -> list[str]:
    rows = [
        [
            r.name,
            str(r.training["iterations"][-1]),
            f"{r.training['final_cross_entropy']:.2f}",
            f"{r.training['clips_per_s']:.1f}",
            _pct(r.training["data_wait"]),
        ]
        for r in runs
    ]
    header = ["Method", "Iterations", "Final cross-entropy", "Clips/s", "Waiting for data"]
    return _table(header, rows)


def _figures(runs: Sequence[RunEvaluation], out: Path) -> list[str]:
    dataset = runs[0].dataset
    lines = ["## Figures", ""]
    curves = {r.name: (r.training["iterations"], r.training["cross_entropy"]) for r in runs}
    path = plots.plot_training_cost(
        curves, out / "plots" / "training_cost.png", f"Training cost, {dataset}"
    )
    lines += [f"![training cost]({path.relative_to(out)})", ""]
    for r in runs:
        slug = _slug(r.name)
        path = plots.plot_confusion(
            r.confusion, r.classes, out / "plots" / f"confusion_{slug}.png", f"{r.name}, {dataset}"
        )
        lines += [f"![confusion matrix of {r.name}]({path.relative_to(out)})", ""]
        trace = r.example
        shown = np.unique(np.linspace(0, len(trace.attention) - 1, 8).round().astype(int))
        path = plots.plot_attention(
            trace.energy,
            trace.attention,
            out / "plots" / f"attention_{slug}.png",
            f"{r.name}: attention (red) on test video {trace.video_id}"
            + (", actor outlined in green" if r.example_target is not None else ""),
            [int(s) for s in shown],
            r.example_target,
        )
        lines += [f"![attention of {r.name}]({path.relative_to(out)})", ""]
        if trace.boundaries is not None:
            path = plots.plot_boundaries(
                trace.boundaries,
                out / "plots" / f"boundaries_{slug}.png",
                r.example_changes,
                f"{r.name}: boundaries on test video {trace.video_id}",
            )
            lines += [f"![boundaries of {r.name}]({path.relative_to(out)})", ""]
    return lines


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _evaluation_json(runs: Sequence[RunEvaluation]) -> dict[str, Any]:
    return {
        "runs": [
            {
                "name": r.name,
                "run_dir": str(r.run_dir),
                "variant": r.config.variant,
                "dataset": r.dataset,
                "accuracy": r.accuracy,
                "mean_class_accuracy": r.mean_class_accuracy,
                "mean_average_precision": _json_number(r.mean_average_precision),
                "average_precision": {
                    c: _json_number(ap)
                    for c, ap in zip(r.classes, r.average_precision, strict=True)
                },
                "confusion": r.confusion.tolist(),
                "attention_on_target": r.attention_on_target,
                "boundaries": None if r.boundaries is None else [vars(b) for b in r.boundaries],
                "hierarchy": None
                if r.hierarchy is None
                else [layer.as_dict() for layer in r.hierarchy.layers],
                "predictions": [
                    {"video": v, "label": int(y), "predicted": int(s.argmax())}
                    for v, y, s in zip(r.video_ids, r.labels, r.scores, strict=True)
                ],
            }
            for r in runs
        ]
    }


def write_report(runs: Sequence[RunEvaluation], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.md``, ``evaluation.json`` and ``plots/`` for ``runs`` into ``out_dir``."""
    if not runs:
        raise ValueError("no runs to report")
    datasets = {r.dataset for r in runs}
    if len(datasets) > 1:
        raise ValueError(f"runs on different datasets cannot share a report: {sorted(datasets)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = runs[0]
    lines = [
        f"# HM-AN on {first.dataset}",
        "",
        f"Test split {first.config.data.split}: {len(first.labels)} videos, "
        f"{len(first.classes)} classes. Per-step predictions averaged over each block of "
        "frames and the blocks over the video (paper, Section IV.A).",
        "",
        "## Results (as the paper's Tables I and III; mAP as its Table II)",
        "",
        *_results_table(runs),
        "",
    ]
    if any(r.attention_on_target is not None for r in runs):
        lines += [
            "## Attention and boundaries against the ground truth",
            "",
            *_synthetic_table(runs),
            "",
        ]
    if any(r.hierarchy is not None for r in runs):
        lines += ["## The hierarchy, per layer", "", *_hierarchy_table(runs), ""]
    lines += [
        "## Average precision per class (as the paper's Table II)",
        "",
        *_per_class_table(runs),
        "",
    ]
    lines += ["## Training", "", *_training_table(runs), ""]
    lines += _figures(runs, out)
    text = "\n".join(lines)
    (out / "evaluation.json").write_text(json.dumps(_evaluation_json(runs), indent=1) + "\n")
    path = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.action_recognition.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run", action="append", required=True, help="run directory (repeatable)")
    parser.add_argument("--out", help="report directory (default: the run, when only one)")
    parser.add_argument("--features", help="features directory (default: the run's own)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="test blocks per batch")
    args = parser.parse_args(argv)
    if args.out is None and len(args.run) > 1:
        parser.error("--out is required with several --run")
    try:
        runs = [
            evaluate_run(
                run, features=args.features, device=args.device, batch_size=args.batch_size
            )
            for run in args.run
        ]
        path = write_report(runs, args.out or args.run[0])
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for r in runs:
        print(f"{r.name}: accuracy {_pct(r.accuracy)}, mAP {_pct(r.mean_average_precision)}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
