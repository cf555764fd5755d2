"""HM-RNN boundary defaults measured on real sequence data (UCR/UEA sets bundled with sktime).

A 3-layer ``HMRNN(n_in, 64, num_layers=3)`` classifier (output mean-pooled over
the real steps, then a linear layer) against a same-size
``nn.LSTM(n_in, 64, num_layers=3)`` classifier (its top layer mean-pooled the
same way), each trained with Adam (lr 3e-3; batch 32, or 8 for training sets
under 100 series; gradient norm clipped at 1) for a fixed number of epochs, on
several seeds. The test accuracy after the last epoch is reported (no model
selection on the test set), and for every HM-RNN the per-layer hierarchy
statistics of :mod:`stochrnn.hierarchy` on the test set.

Data: the ``.ts`` files inside the sktime wheel (``pip install sktime``; never
downloaded), the official train/test splits. Every channel is z-normalised
with the mean and standard deviation of the training set's steps; a series
longer than ``--max-len`` steps is average-pooled over time by the smallest
integer factor that brings the longest series of the set under ``--max-len``
(the same factor for every series of a set); variable-length sets are padded
and masked.

Every (dataset, model, seed) run is written to its own JSON file under
``<out>/hierarchy_real_data_runs/`` as soon as it finishes, and skipped when
the script runs again, so a crash loses at most the run in progress. The
summary (``hierarchy_real_data_e<epochs>.json`` and ``.md``) is rebuilt from
the run files of that many epochs at the end, or alone with ``--summarise``.

Usage::

    pip install sktime
    OMP_NUM_THREADS=1 python benchmarks/hierarchy_real_data.py \
        --datasets ItalyPowerDemand ArrowHead --seeds 0 1 2 --epochs 60
    python benchmarks/hierarchy_real_data.py --summarise
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stochrnn import (
    HMRNN,
    BoundaryRatePrior,
    GumbelSigmoid,
    HierarchyMeter,
    StraightThrough,
)

HIDDEN = 64
LAYERS = 3
PRIOR_TARGET = (0.3, 0.1, 0.1)
PRIOR_WEIGHT = 1.0
WEAK_PRIOR_TARGET = (0.3, 0.3, 0.3)
WEAK_PRIOR_WEIGHT = 0.1
LOW_PRIOR_TARGET = (0.1, 0.1, 0.1)
HIGH_PRIOR_TARGET = (0.5, 0.5, 0.5)

#: The candidates for HMRNN's default boundary:
#: name -> (estimator factory, prior target or None, prior weight).
CANDIDATES: dict[str, tuple[Callable[[], nn.Module], tuple[float, ...] | None, float]] = {
    "hmrnn-gumbel0.3": (lambda: GumbelSigmoid(0.3), None, 0.0),
    "hmrnn-gumbel0.3+prior": (lambda: GumbelSigmoid(0.3), PRIOR_TARGET, PRIOR_WEIGHT),
    "hmrnn-st": (lambda: StraightThrough(slope_rate=0.04), None, 0.0),
    "hmrnn-st+prior": (lambda: StraightThrough(slope_rate=0.04), PRIOR_TARGET, PRIOR_WEIGHT),
    # A weak prior: negligible near its target, steep as a layer's rate nears 0 or 1.
    "hmrnn-gumbel0.3+weakprior": (lambda: GumbelSigmoid(0.3), WEAK_PRIOR_TARGET, WEAK_PRIOR_WEIGHT),
    "hmrnn-st+weakprior": (
        lambda: StraightThrough(slope_rate=0.04),
        WEAK_PRIOR_TARGET,
        WEAK_PRIOR_WEIGHT,
    ),
    # A higher temperature (smoother pathwise gradients; the same hard draws).
    "hmrnn-gumbel1+weakprior": (lambda: GumbelSigmoid(1.0), WEAK_PRIOR_TARGET, WEAK_PRIOR_WEIGHT),
    # The same weight, a higher target: more UPDATE/FLUSH steps, fewer COPY. HMRNN's
    # default prior since 2026-12-03 (the weak prior's target, 0.3, before).
    "hmrnn-gumbel0.3+weakprior0.5": (
        lambda: GumbelSigmoid(0.3),
        HIGH_PRIOR_TARGET,
        WEAK_PRIOR_WEIGHT,
    ),
    # Relaxed boundaries (no hard draw in the forward): a control for what the hard,
    # noisy boundaries cost in accuracy.
    "hmrnn-gumbel0.3soft+weakprior": (
        lambda: GumbelSigmoid(0.3, hard=False),
        WEAK_PRIOR_TARGET,
        WEAK_PRIOR_WEIGHT,
    ),
    # The same weight, a lower target: longer segments, fewer flushes of layer 1's memory.
    "hmrnn-gumbel0.3+weakprior0.1": (
        lambda: GumbelSigmoid(0.3),
        LOW_PRIOR_TARGET,
        WEAK_PRIOR_WEIGHT,
    ),
    # The weak prior with HMRNN(layer_norm=True): each layer's pre-activation normalised
    # (Chung et al.'s HM-LSTM used layer norm), on the per-step path.
    "hmrnn-gumbel0.3+weakprior+ln": (
        lambda: GumbelSigmoid(0.3),
        WEAK_PRIOR_TARGET,
        WEAK_PRIOR_WEIGHT,
    ),
}
# The weak prior with each layer's weight drawn uniform in ±g/√H, gain g (HMRNN's init_gain,
# in HMRNN_OPTIONS below; the library's default is 3, gain 1 is nn.LSTM's range and was
# the default before).
CANDIDATES.update(
    {
        f"hmrnn-gumbel0.3+weakprior+gain{g}": CANDIDATES["hmrnn-gumbel0.3+weakprior"]
        for g in (1, 2, 4)
    }
)
#: ``HMRNN`` keyword arguments other than the library's defaults, per candidate (the
#: layer-norm candidate ran at gain 1, the default before 2026-12-03).
HMRNN_OPTIONS: dict[str, dict[str, Any]] = {
    "hmrnn-gumbel0.3+weakprior+ln": {"layer_norm": True, "init_gain": 1.0},
    **{f"hmrnn-gumbel0.3+weakprior+gain{g}": {"init_gain": float(g)} for g in (1, 2, 4)},
}
#: A control: ``nn.LSTM`` with its weights (not its biases) drawn in ``±g/√H``, HMRNN's
#: default range, instead of its own ``±1/√H``.
LSTM_GAIN = {"lstm+gain3": 3.0}
#: ``HMRNN(n_in, 64, num_layers=3)`` with every library default (boundaries, prior,
#: initialisation), ``rnn.prior_loss(out, mask)`` added to the loss: what a user gets.
LIBRARY_DEFAULTS = "hmrnn"
MODELS = ("lstm", *LSTM_GAIN, LIBRARY_DEFAULTS, *CANDIDATES)


# --------------------------------------------------------------------------- data


def _data_dir() -> Path:
    try:
        import sktime.datasets
    except ImportError:  # pragma: no cover - depends on the environment
        sys.exit("this benchmark reads the UCR/UEA files bundled with sktime: pip install sktime")
    return Path(sktime.datasets.__file__).parent / "data"


def _read_split(name: str, split: str) -> tuple[list[np.ndarray], list[str]]:
    """Series as (T_i, C) float arrays and their labels, from sktime's bundled .ts file."""
    from sktime.datasets import load_from_tsfile

    path = _data_dir() / name / f"{name}_{split}.ts"
    if not path.exists():
        raise FileNotFoundError(f"{path} is not in the sktime wheel (no download is attempted)")
    frame, labels = load_from_tsfile(str(path), return_data_type="nested_univ")
    series = []
    for _, row in frame.iterrows():
        channels = [np.asarray(cell, dtype=np.float64) for cell in row]
        length = min(len(c) for c in channels)
        series.append(np.stack([c[:length] for c in channels], axis=1))
    return series, [str(label) for label in labels]


def _prepare(
    series: list[np.ndarray], factor: int, mean: np.ndarray, std: np.ndarray
) -> tuple[Tensor, Tensor]:
    """z-normalise with the training set's statistics, pool time by ``factor``, pad: (x, mask)."""
    pooled = []
    for raw in series:
        s = (np.nan_to_num(raw) - mean) / std
        steps = math.ceil(len(s) / factor)
        padded = np.zeros((steps * factor, s.shape[1]))
        padded[: len(s)] = s
        weights = np.zeros(steps * factor)
        weights[: len(s)] = 1.0
        sums = padded.reshape(steps, factor, -1).sum(axis=1)
        pooled.append(sums / weights.reshape(steps, factor).sum(axis=1, keepdims=True))
    longest = max(len(p) for p in pooled)
    x = torch.zeros(len(pooled), longest, pooled[0].shape[1])
    mask = torch.zeros(len(pooled), longest, dtype=torch.bool)
    for i, p in enumerate(pooled):
        x[i, : len(p)] = torch.from_numpy(p).float()
        mask[i, : len(p)] = True
    return x, mask


def load(name: str, max_len: int) -> dict[str, Any]:
    """Train and test tensors of one bundled set, and how it was prepared."""
    train, train_labels = _read_split(name, "TRAIN")
    test, test_labels = _read_split(name, "TEST")
    longest = max(len(s) for s in train + test)
    factor = max(1, math.ceil(longest / max_len))
    classes = sorted(set(train_labels) | set(test_labels))
    index = {c: i for i, c in enumerate(classes)}
    steps = np.nan_to_num(np.concatenate(train, axis=0))
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    x_train, m_train = _prepare(train, factor, mean, std)
    x_test, m_test = _prepare(test, factor, mean, std)
    return {
        "x_train": x_train,
        "m_train": m_train,
        "y_train": torch.tensor([index[c] for c in train_labels]),
        "x_test": x_test,
        "m_test": m_test,
        "y_test": torch.tensor([index[c] for c in test_labels]),
        "info": {
            "train": len(train),
            "test": len(test),
            "channels": int(x_train.shape[-1]),
            "classes": len(classes),
            "length_max": longest,
            "variable_length": len({len(s) for s in train + test}) > 1,
            "pool_factor": factor,
            "steps_after_pooling": int(max(x_train.shape[1], x_test.shape[1])),
        },
    }


# --------------------------------------------------------------------------- models


class Classifier(nn.Module):
    """Recurrent encoder, mean over the real steps, linear layer."""

    def __init__(self, model: str, n_in: int, n_classes: int) -> None:
        super().__init__()
        self.model = model
        self.rnn: nn.Module
        if model.startswith("lstm"):
            self.rnn = nn.LSTM(n_in, HIDDEN, num_layers=LAYERS, batch_first=True)
            if model in LSTM_GAIN:
                with torch.no_grad():
                    for name, parameter in self.rnn.named_parameters():
                        if name.startswith("weight"):  # drawn in ±1/√H: now ±g/√H
                            parameter.mul_(LSTM_GAIN[model])
            width = HIDDEN
            self.prior = None
        elif model == LIBRARY_DEFAULTS:
            self.rnn = HMRNN(n_in, HIDDEN, num_layers=LAYERS)
            width = self.rnn.output_size
            self.prior = None  # the HMRNN's own: see prior_loss
        else:
            factory, target, weight = CANDIDATES[model]
            self.rnn = HMRNN(
                n_in,
                HIDDEN,
                num_layers=LAYERS,
                boundary=[factory() for _ in range(LAYERS)],
                **HMRNN_OPTIONS.get(model, {}),
            )
            width = self.rnn.output_size
            self.prior = None if target is None else BoundaryRatePrior(list(target), weight)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
        if isinstance(self.rnn, HMRNN):
            out = self.rnn(x, mask=mask)
            hidden = out.output
        else:
            out = None
            hidden = self.rnn(x)[0]  # right padding: real steps never see the padding
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(pooled), out

    def prior_loss(self, out: Any, mask: Tensor) -> Tensor | None:
        """The boundary prior's term of the loss (``None`` without a prior)."""
        if self.model == LIBRARY_DEFAULTS:
            assert isinstance(self.rnn, HMRNN)
            return self.rnn.prior_loss(out, mask)  # as a user's training loop adds it
        if self.prior is None:
            return None
        return self.prior(out, self.rnn.boundaries, mask)

    def epoch_end(self) -> None:
        """Advance the straight-through slope schedules (once per epoch, Chung et al.)."""
        if isinstance(self.rnn, HMRNN):
            for est in {id(e): e for e in self.rnn.boundaries}.values():
                step = getattr(est, "step", None)
                if callable(step):
                    step()


def _batches(n: int, size: int, generator: torch.Generator | None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(size))


def _trim(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the time steps padded in every row of the batch."""
    steps = int(mask.sum(1).max())
    return x[:, :steps], mask[:, :steps]


def evaluate(clf: Classifier, data: dict[str, Any], batch: int) -> dict[str, Any]:
    clf.eval()
    correct = 0
    meter = HierarchyMeter()
    rate_sums: list[float] = []
    count = 0
    with torch.no_grad():
        for idx in _batches(len(data["y_test"]), batch, None):
            x, mask = _trim(data["x_test"][idx], data["m_test"][idx])
            logits, out = clf(x, mask)
            correct += int((logits.argmax(-1) == data["y_test"][idx]).sum())
            if out is not None:
                meter.update(out, mask)
                rates = BoundaryRatePrior(0.5).rates(out, clf.rnn.boundaries, mask)
                real = int(mask.sum())
                rate_sums = [
                    s + r * real
                    for s, r in zip(rate_sums or [0.0] * len(rates), rates.tolist(), strict=True)
                ]
                count += real
    result: dict[str, Any] = {"test_accuracy": correct / len(data["y_test"])}
    if count:
        stats = meter.compute()
        result["hierarchy"] = [layer.as_dict() for layer in stats.layers]
        result["firing_rates"] = list(stats.firing_rates)
        result["cut_off"] = list(stats.cut_off)
        result["mean_boundary_probability"] = [s / count for s in rate_sums]
        result["hierarchy_text"] = str(stats)
    return result


def train_one(
    data: dict[str, Any], model: str, seed: int, epochs: int, batch: int
) -> dict[str, Any]:
    torch.manual_seed(seed)
    info = data["info"]
    clf = Classifier(model, info["channels"], info["classes"])
    optimiser = torch.optim.Adam(clf.parameters(), lr=3e-3)
    shuffle = torch.Generator().manual_seed(seed)
    start = time.time()
    last_loss = math.nan
    for _ in range(epochs):
        clf.train()
        losses = []
        for idx in _batches(len(data["y_train"]), batch, shuffle):
            x, mask = _trim(data["x_train"][idx], data["m_train"][idx])
            logits, out = clf(x, mask)
            loss = nn.functional.cross_entropy(logits, data["y_train"][idx])
            total = loss
            prior = None if out is None else clf.prior_loss(out, mask)
            if prior is not None:
                total = total + prior
            optimiser.zero_grad()
            total.backward()
            nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
            optimiser.step()
            losses.append(float(loss.detach()))
        last_loss = statistics.fmean(losses)
        clf.epoch_end()
    train_seconds = time.time() - start
    result = evaluate(clf, data, 256)
    if isinstance(clf.rnn, HMRNN):
        # the same trained model, its boundaries taken at their most likely value (a 1
        # where the probability exceeds 1/2) instead of drawn: eval_mode="mode"
        for est in clf.rnn.boundaries:
            est.eval_mode = "mode"
        result["mode"] = evaluate(clf, data, 256)
    result.update(train_loss=last_loss, train_seconds=round(train_seconds, 1))
    return result


# --------------------------------------------------------------------------- runs and summary


def _git_state() -> str:
    """The commit of the working tree, with ``+dirty:<paths>`` for uncommitted library files."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "stochrnn"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.split()
    except OSError:
        return "unknown"
    changed = [p for p in dirty if p.startswith("stochrnn/")]
    return head + ("+dirty:" + ",".join(changed) if changed else "")


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _spread(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(out_dir: Path, epochs: int) -> dict[str, Any]:
    """Rebuild the summary from the run files trained for ``epochs`` epochs."""
    files = sorted((out_dir / "hierarchy_real_data_runs").glob(f"*__e{epochs}__b*.json"))
    runs = [json.loads(p.read_text()) for p in files]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["model"]), []).append(run)
    rows = []
    for (dataset, model), group in sorted(
        groups.items(),
        key=lambda kv: (kv[0][0], MODELS.index(kv[0][1]) if kv[0][1] in MODELS else 99),
    ):
        acc = [r["test_accuracy"] for r in group]
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "seeds": sorted(r["seed"] for r in group),
            "accuracy_mean": statistics.fmean(acc),
            "accuracy_std": _spread(acc),
            "accuracy_min": min(acc),
            "accuracy_max": max(acc),
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in group),
        }
        if "firing_rates" in group[0]:
            layers = len(group[0]["firing_rates"])
            row["firing_rates_mean"] = [
                statistics.fmean(r["firing_rates"][l] for r in group) for l in range(layers)
            ]
            row["input_share_mean"] = [
                statistics.fmean(r["hierarchy"][l]["input_share"] for r in group)
                for l in range(layers)
            ]
            row["runs_with_cut_off"] = sum(bool(r["cut_off"]) for r in group)
            row["cut_off_per_seed"] = {str(r["seed"]): r["cut_off"] for r in group}
        modes = [r["mode"] for r in group if "mode" in r]
        if len(modes) == len(group):  # the same models, boundaries at their most likely value
            row["mode_accuracy_mean"] = statistics.fmean(m["test_accuracy"] for m in modes)
            row["mode_accuracy_std"] = _spread([m["test_accuracy"] for m in modes])
            row["mode_runs_with_cut_off"] = sum(bool(m["cut_off"]) for m in modes)
        rows.append(row)
    lstm = {row["dataset"]: row["accuracy_mean"] for row in rows if row["model"] == "lstm"}
    for row in rows:
        if row["dataset"] in lstm:
            row["gap_to_lstm"] = row["accuracy_mean"] - lstm[row["dataset"]]
    infos = {run["dataset"]: run["data"] for run in runs}
    settings: dict[str, Any] = {}
    for run in runs:  # runs made before a candidate was added lack its settings
        settings.update(run["settings"])
    per_run = [
        {
            "dataset": run["dataset"],
            "model": run["model"],
            "seed": run["seed"],
            "test_accuracy": run["test_accuracy"],
            "train_loss": run["train_loss"],
            "firing_rates": run.get("firing_rates"),
            "input_shares": [layer["input_share"] for layer in run.get("hierarchy", [])] or None,
            "mean_boundary_probability": run.get("mean_boundary_probability"),
            "cut_off": run.get("cut_off"),
            "git": run["settings"].get("git"),
        }
        for run in runs
    ]
    summary = {"settings": settings, "datasets": infos, "rows": rows, "runs": per_run}
    _write_json(out_dir / f"hierarchy_real_data_e{epochs}.json", summary)
    (out_dir / f"hierarchy_real_data_e{epochs}.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# HM-RNN boundary defaults on real data (UCR/UEA sets bundled with sktime)",
        "",
        "Generated by `benchmarks/hierarchy_real_data.py`. Test accuracy after the last "
        "epoch, mean ± standard deviation over seeds (min–max in brackets); Δ = mean minus "
        "the LSTM's mean, in points. Firing rate and input share: per layer (1/2/3), mean "
        "over seeds, on the test set. Cut off: number of seeds in which some layer receives "
        "input from below on < 1% of steps (or sits above such a layer).",
        "",
        f"Settings: `{json.dumps(summary['settings'])}`",
        "",
        "Models: `lstm` = `nn.LSTM(n_in, 64, num_layers=3)`; `hmrnn` = "
        "`HMRNN(n_in, 64, num_layers=3)` with every library default, its "
        "`rnn.prior_loss(out, mask)` added to the loss; `hmrnn-*` = "
        "`HMRNN(n_in, 64, num_layers=3)` with boundaries `gumbel0.3` = `GumbelSigmoid(0.3)` "
        "(the default), `st` = `StraightThrough(slope_rate=0.04)` (Chung et al.'s "
        "annealing, stepped each epoch); `+prior` adds "
        f"`BoundaryRatePrior({list(summary['settings'].get('prior_target', []))}, "
        f"weight={summary['settings'].get('prior_weight')})`, `+weakprior` adds "
        f"`BoundaryRatePrior({list(summary['settings'].get('weak_prior_target', []))}, "
        f"weight={summary['settings'].get('weak_prior_weight')})` to the loss, "
        "`+weakprior0.1` and `+weakprior0.5` the same weight with target "
        f"`{list(summary['settings'].get('low_prior_target', []))}` and "
        f"`{list(summary['settings'].get('high_prior_target', []))}`; `gumbel1` = "
        "`GumbelSigmoid(1.0)`; `gumbel0.3soft` = `GumbelSigmoid(0.3, hard=False)` (relaxed "
        "boundaries; firing rates and cut-offs count a boundary above 1/2); `+ln`: "
        "`HMRNN(..., layer_norm=True, init_gain=1)`; `+gain1`, `+gain2`, `+gain4`: "
        "`HMRNN(..., init_gain=g)` (the weights drawn uniform in ±g/√H; the default, "
        "3 since 2026-12-03, before then 1); `lstm+gain3`: the LSTM with its weights drawn "
        "in ±3/√H (a control).",
        "",
        "| dataset | train/test | classes | channels | steps (pool) | batch |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in sorted(summary["datasets"].items()):
        var = ", variable" if info["variable_length"] else ""
        lines.append(
            f"| {name} | {info['train']}/{info['test']} | {info['classes']} | "
            f"{info['channels']} | {info['steps_after_pooling']} "
            f"(×{info['pool_factor']} of {info['length_max']}{var}) | {info.get('batch', '')} |"
        )
    lines += [
        "",
        "| dataset | model | seeds | test accuracy | Δ vs LSTM | firing rate 1/2/3 "
        "| input share 1/2/3 | cut off | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        rates = "/".join(f"{r:.2f}" for r in row.get("firing_rates_mean", [])) or "—"
        inputs = "/".join(f"{r:.2f}" for r in row.get("input_share_mean", [])) or "—"
        cut = "—"
        if "runs_with_cut_off" in row:
            layers = sorted({l for c in row["cut_off_per_seed"].values() for l in c})
            cut = f"{row['runs_with_cut_off']}/{len(row['seeds'])}"
            if layers:
                cut += " (layer " + ",".join(map(str, layers)) + ")"
        gap = (
            f"{100 * row['gap_to_lstm']:+.1f}"
            if "gap_to_lstm" in row and row["model"] != "lstm"
            else ""
        )
        lines.append(
            f"| {row['dataset']} | {row['model']} | {len(row['seeds'])} | "
            f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f} "
            f"[{row['accuracy_min']:.3f}–{row['accuracy_max']:.3f}] | {gap} | {rates} | {inputs} | "
            f"{cut} | {row['train_seconds_mean']:.0f} |"
        )
    lines += ["", *target_check(summary["rows"])]
    moded = [row for row in summary["rows"] if "mode_accuracy_mean" in row]
    if moded:
        lines += [
            "",
            "The same trained models evaluated with each layer's most likely boundary "
            '(`eval_mode="mode"`: a 1 where the probability exceeds 1/2) instead of a drawn one:',
            "",
            "| dataset | model | drawn (above) | most likely | cut off, most likely |",
            "|---|---|---|---|---|",
        ]
        for row in moded:
            lines.append(
                f"| {row['dataset']} | {row['model']} | {row['accuracy_mean']:.3f} ± "
                f"{row['accuracy_std']:.3f} | {row['mode_accuracy_mean']:.3f} ± "
                f"{row['mode_accuracy_std']:.3f} | "
                f"{row['mode_runs_with_cut_off']}/{len(row['seeds'])} |"
            )
    return "\n".join(lines) + "\n"


def target_check(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's target per candidate and set: Δ ≥ -2 points and no seed with a cut-off layer."""
    datasets = sorted({row["dataset"] for row in rows})
    models = [m for m in (LIBRARY_DEFAULTS, *CANDIDATES) if any(row["model"] == m for row in rows)]
    cell = {(row["dataset"], row["model"]): row for row in rows}
    lines = [
        "Target (issue 12): within 2 points of the LSTM's mean and no layer cut off in any "
        "seed. ✓ met, ✗ missed (Δ in points, cut-off seeds).",
        "",
        "| model | " + " | ".join(datasets) + " | sets met |",
        "|---|" + "---|" * (len(datasets) + 1),
    ]
    for model in models:
        marks, met = [], 0
        for dataset in datasets:
            row = cell.get((dataset, model))
            if row is None or "gap_to_lstm" not in row:
                marks.append("—")
                continue
            ok = row["gap_to_lstm"] >= -0.02 - 1e-9 and row.get("runs_with_cut_off", 0) == 0
            met += ok
            mark = f"{'✓' if ok else '✗'} {100 * row['gap_to_lstm']:+.1f}"
            if row.get("runs_with_cut_off"):
                mark += f", {row['runs_with_cut_off']} cut"
            marks.append(mark)
        lines.append(f"| {model} | " + " | ".join(marks) + f" | {met}/{len(datasets)} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ItalyPowerDemand", "ArrowHead"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size (default: 8 for training sets under 100 series, else 32)",
    )
    parser.add_argument("--max-len", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--summarise", action="store_true", help="only rebuild the summary")
    args = parser.parse_args(argv)
    if not args.summarise:
        torch.set_num_threads(args.threads)
        settings = {
            "epochs": args.epochs,
            "max_len": args.max_len,
            "lr": 3e-3,
            "hidden": HIDDEN,
            "layers": LAYERS,
            "prior_target": PRIOR_TARGET,
            "prior_weight": PRIOR_WEIGHT,
            "weak_prior_target": WEAK_PRIOR_TARGET,
            "weak_prior_weight": WEAK_PRIOR_WEIGHT,
            "low_prior_target": LOW_PRIOR_TARGET,
            "high_prior_target": HIGH_PRIOR_TARGET,
            "torch": torch.__version__,
            "git": _git_state(),
            "threads": args.threads,
        }
        for dataset in args.datasets:
            data = load(dataset, args.max_len)
            batch = args.batch or (8 if data["info"]["train"] < 100 else 32)
            data["info"]["batch"] = batch
            print(f"{dataset}: {data['info']}", flush=True)
            for seed in args.seeds:
                for model in args.models:
                    path = (
                        args.out
                        / "hierarchy_real_data_runs"
                        / f"{dataset}__{model}__seed{seed}__e{args.epochs}__b{batch}.json"
                    )
                    if path.exists():
                        print(f"  skip {path.name} (done)", flush=True)
                        continue
                    result = train_one(data, model, seed, args.epochs, batch)
                    result.update(
                        dataset=dataset,
                        model=model,
                        seed=seed,
                        data=data["info"],
                        settings=settings,
                    )
                    _write_json(path, result)
                    rates = "/".join(f"{r:.2f}" for r in result.get("firing_rates", []))
                    print(
                        f"  {dataset} {model} seed {seed}: acc {result['test_accuracy']:.3f} "
                        f"loss {result['train_loss']:.3f} rates {rates or '-'} "
                        f"cut off {result.get('cut_off', '-')} ({result['train_seconds']:.0f}s)",
                        flush=True,
                    )
    summary = summarise(args.out, args.epochs)
    print(markdown(summary))


if __name__ == "__main__":
    main()
