"""Train one HM-AN variant on a features directory.

::

    python -m examples.action_recognition.train --config FILE --features DIR --out RUN_DIR \\
        [--device cuda] [--resume]
    torchrun --nproc_per_node 4 -m examples.action_recognition.train ... --device cuda

The run directory holds::

    RUN_DIR/config.toml      the config of the run (what evaluate reads)
    RUN_DIR/run.json         {"features": DIR, "classes": [...], "feature_shape": [N, D]}
    RUN_DIR/checkpoint.pt    the last checkpoint: model, optimizer, grad scaler, RNG states,
                             iteration; written to a temporary file then renamed
    RUN_DIR/metrics.csv      one row per log_every iterations (means over those iterations),
                             with the hierarchy of the HM-AN variants per layer
    RUN_DIR/tensorboard/     the same scalars for TensorBoard

For the HM-AN variants every row holds, per layer ``l``, the diagnostics of
:func:`stochrnn.hierarchy_stats` on the training batches (means over the
row's iterations): ``layer{l}/firing_rate``, ``layer{l}/update_share``,
``layer{l}/copy_share``, ``layer{l}/flush_share``, ``layer{l}/input_share``
(the share of real frames on which the layer gets input from below),
``layer{l}/segment_mean`` and ``layer{l}/cut_off`` (1 when the layer got input
on fewer than 1% of the row's real frames, or a layer below it is cut off).
When a layer becomes cut off, training warns (a :class:`CutOffWarning`,
printed on stderr): the layers above it no longer see the input.

Clips are drawn in a fixed order -- epoch ``e`` is a permutation of the
training videos seeded by ``(seed, e)``, and each video's window by
``(seed, e, index)`` -- and the model's random draws come from torch's global
generator, whose state the checkpoint keeps. So ``--resume`` continues exactly
where the checkpoint stopped: the metrics of a resumed run equal those of an
uninterrupted one. A resumed run may raise ``train.iterations`` (to train
longer); any other change of the config is refused.

If a batch's features, the loss or (without a gradient scaler) the gradient
norm is not finite, training stops with :class:`NonFiniteError` before the
step, and the last checkpoint on disk -- the last good state -- is left as it
was.

Under ``torchrun`` each process takes ``batch_size / world_size`` clips of
every batch, the model is wrapped in DistributedDataParallel, and rank 0
writes the files. On CUDA with ``train.amp`` the forward pass runs under
autocast (bfloat16 where supported, else float16 with a gradient scaler).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset

from stochrnn import hierarchy_stats
from stochrnn.hierarchy import CUT_OFF_BELOW

from .config import Config, config_to_dict, load_config
from .features import ClipDataset
from .model import ModelOutput, build_model, loss_terms

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "HIERARCHY_COLUMNS",
    "METRICS_NAME",
    "RUN_NAME",
    "CutOffWarning",
    "EpochBatches",
    "NonFiniteError",
    "RunInfo",
    "load_checkpoint",
    "main",
    "read_run",
    "save_checkpoint",
    "train",
    "write_config",
]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.toml"
METRICS_NAME = "metrics.csv"
RUN_NAME = "run.json"


class NonFiniteError(RuntimeError):
    """Training stopped because the input, the loss or the gradient norm was not finite."""


class CutOffWarning(UserWarning):
    """A layer of the HM-RNN gets (almost) no input from below: the layers above it are cut off."""


#: Per-layer columns of ``metrics.csv`` (``layer{l}/<name>``) for the HM-AN variants.
HIERARCHY_COLUMNS = (
    "firing_rate",
    "update_share",
    "copy_share",
    "flush_share",
    "input_share",
    "segment_mean",
)


# --------------------------------------------------------------------------- files


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: ``path`` is never half written."""
    _atomic_write_bytes(Path(path), lambda handle: torch.save(payload, handle))


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    payload: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return payload


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_config(path: str | os.PathLike[str], config: Config) -> None:
    """Write ``config`` as a TOML file that :func:`~.config.load_config` reads back equal."""
    document = config_to_dict(config)
    lines = [f"{k} = {_toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    for name, table in document.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    text = "\n".join(lines) + "\n"
    _atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode()))


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: where the run's features are and what they hold."""

    features: str
    classes: list[str]
    feature_shape: list[int]


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read ``RUN_DIR/run.json``."""
    path = Path(run_dir) / RUN_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {RUN_NAME} in {run_dir}: is it a training run directory?")
    return RunInfo(**json.loads(path.read_text()))


# --------------------------------------------------------------------------- data order


class EpochBatches:
    """The batches of ``(epoch, index)`` keys of iterations ``start .. stop - 1``, for one process.

    Epoch ``e`` is a permutation of ``range(num_items)`` drawn from
    ``numpy.random.default_rng((seed, e))``, cut into batches of ``batch_size``
    (an incomplete last batch is dropped; with fewer items than ``batch_size``
    the one batch is all of them). Process ``rank`` of ``world_size`` takes every
    ``world_size``-th key of each batch. Iteration ``i`` is a batch of epoch
    ``i // batches_per_epoch``, so the order from any iteration on is known
    without replaying the ones before: a DataLoader's ``batch_sampler``.

    Examples
    --------
    >>> batches = EpochBatches(num_items=5, batch_size=2, seed=0, start=0, stop=3)
    >>> batches.batches_per_epoch, [len(b) for b in batches]
    (2, [2, 2, 2])
    >>> next(iter(EpochBatches(5, 2, seed=0, start=2, stop=3)))[0][0]  # iteration 2: epoch 1
    1
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the number of processes {world_size}"
            )
        self.batch_size = batch_size if num_items >= batch_size else num_items
        self.batch_size -= self.batch_size % world_size
        if self.batch_size < 1:
            raise ValueError(f"{num_items} training clips are too few for {world_size} processes")
        self.num_items = num_items
        self.batches_per_epoch = num_items // self.batch_size
        self.seed = seed
        self.start = start
        self.stop = stop
        self.rank = rank
        self.world_size = world_size

    def epoch_of(self, iteration: int) -> int:
        """The epoch that the batch of ``iteration`` belongs to."""
        return iteration // self.batches_per_epoch

    def _batch(self, iteration: int, order: np.ndarray) -> list[tuple[int, int]]:
        k = iteration % self.batches_per_epoch
        keys = order[k * self.batch_size : (k + 1) * self.batch_size]
        epoch = self.epoch_of(iteration)
        return [(epoch, int(i)) for i in keys[self.rank :: self.world_size]]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, epoch = None, -1
        for iteration in range(self.start, self.stop):
            if self.epoch_of(iteration) != epoch:
                epoch = self.epoch_of(iteration)
                order = np.random.default_rng((self.seed, epoch)).permutation(self.num_items)
            assert order is not None
            yield self._batch(iteration, order)


class _EpochClips(Dataset[dict[str, Tensor]]):
    """A :class:`ClipDataset` indexed by ``(epoch, index)``, so one loader serves many epochs."""

    def __init__(self, clips: ClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key
        self.clips.set_epoch(epoch)
        return self.clips[index]


# --------------------------------------------------------------------------- distribution


@dataclass(frozen=True)
class _Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_processes(device: str) -> _Processes:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Processes(0, 1, torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return _Processes(dist.get_rank(), world_size, torch.device("cuda", local_rank))
    dist.init_process_group("gloo")
    return _Processes(dist.get_rank(), world_size, torch.device(device))


def _all_mean(values: Tensor, processes: _Processes) -> Tensor:
    if processes.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= processes.world_size
    return values


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather_rng_states(processes: _Processes) -> list[dict[str, Tensor]]:
    own = {k: v.cpu() for k, v in _rng_state(processes.device).items()}
    if not processes.distributed:
        return [own]
    states: list[Any] = [None] * processes.world_size
    dist.all_gather_object(states, own)
    return states


# --------------------------------------------------------------------------- metrics


@dataclass
class _Window:
    """Sums over the iterations since the last metrics row (saved in the checkpoint)."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / self.count for key, value in self.sums.items()}


class _MetricsLog:
    """``metrics.csv`` and TensorBoard, rank 0 only; a resume drops rows past the checkpoint."""

    def __init__(self, run_dir: Path, start: int, enabled: bool) -> None:
        self.path = run_dir / METRICS_NAME
        self.enabled = enabled
        self.writer: Any = None
        if not enabled:
            return
        if self.path.is_file():
            with self.path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["iteration"]) <= start]
            self._rewrite(rows)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start + 1)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        if not rows:
            self.path.unlink()
            return
        text = _csv_text(list(rows[0]), rows)
        _atomic_write_bytes(self.path, lambda handle: handle.write(text.encode()))

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        with self.path.open("a", newline="") as handle:
            writer = _csv_writer(handle, list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        iteration = int(row["iteration"])
        for key, value in row.items():
            if key != "iteration":
                self.writer.add_scalar(f"train/{key}", value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _csv_writer(handle: Any, fields: list[str]) -> csv.DictWriter[str]:
    """The one CSV dialect of ``metrics.csv``, for appended rows and rewritten files alike."""
    return csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")


def _csv_text(fields: list[str], rows: Sequence[dict[str, str]]) -> str:
    text = io.StringIO()
    writer = _csv_writer(text, fields)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _batch_values(
    out: ModelOutput, labels: Tensor, mask: Tensor, terms: Sequence[Tensor]
) -> Tensor:
    """Per-iteration scalars to log, as one tensor (one device sync, one all-reduce)."""
    steps = mask.float()
    correct = (out.logits.argmax(-1) == labels.unsqueeze(1)).float()
    values = [t.detach().float() for t in terms]
    values.append((correct * steps).sum() / steps.sum().clamp(min=1))
    stacked = torch.stack(values)
    if out.boundaries is None:
        return stacked
    stats = hierarchy_stats(out.boundaries.detach(), mask)
    layers = [getattr(layer, name) for layer in stats.layers for name in HIERARCHY_COLUMNS]
    return torch.cat([stacked, torch.tensor(layers, dtype=stacked.dtype, device=stacked.device)])


def _value_names(out: ModelOutput) -> list[str]:
    names = ["loss", "cross_entropy", "surrogate", "penalty", "boundary_prior", "accuracy"]
    if out.boundaries is not None:
        names += [
            f"layer{l + 1}/{name}"
            for l in range(out.boundaries.shape[-1])
            for name in HIERARCHY_COLUMNS
        ]
    return names


def _add_cut_off(row: dict[str, float]) -> dict[str, float]:
    """Add ``layer{l}/cut_off`` after each layer's columns: the rule of ``hierarchy_stats``
    (input on fewer than 1% of real frames, or a layer below cut off) on the row's means."""
    flagged = False
    out: dict[str, float] = {}
    for key, value in row.items():
        out[key] = value
        if key.endswith("/segment_mean"):
            layer = key.split("/")[0]
            flagged = flagged or row[f"{layer}/input_share"] < CUT_OFF_BELOW
            out[f"{layer}/cut_off"] = int(flagged)
    return out


def _warn_cut_off(row: dict[str, float], before: set[str]) -> set[str]:
    """Warn about each layer cut off in ``row`` that was not in ``before``; return the cut set."""
    cut = {key.split("/")[0] for key, value in row.items() if key.endswith("/cut_off") and value}
    for layer in sorted(cut - before):
        number, share = int(layer.removeprefix("layer")), row[f"{layer}/input_share"]
        why = (
            f"it got input from below on {share:.2%} of the real frames since the last row "
            f"(fewer than {CUT_OFF_BELOW:.0%})"
            if share < CUT_OFF_BELOW
            else "a layer below it is cut off"
        )
        warnings.warn(
            f"iteration {int(row['iteration'])}: layer {number} of the HM-RNN is cut off: {why}, "
            "so it does not see the input (model.boundary_prior_weight > 0 adds a "
            "boundary-rate prior that keeps the layers below firing)",
            CutOffWarning,
            stacklevel=3,
        )
    return cut


# --------------------------------------------------------------------------- training


def _check_resumable(saved: dict[str, Any], config: Config) -> None:
    given = config_to_dict(config)
    for name, value in saved.items():
        if isinstance(value, dict):
            for key, old in value.items():
                new = given[name].get(key)
                if new != old and f"{name}.{key}" != "train.iterations":
                    raise ValueError(
                        f"--resume with a different config: {name}.{key} was {old!r} in the "
                        f"checkpoint, now {new!r} (only train.iterations may change)"
                    )
        elif given.get(name) != value:
            raise ValueError(
                f"--resume with a different config: {name} was {value!r} in the checkpoint, "
                f"now {given.get(name)!r} (only train.iterations may change)"
            )


def _autocast(config: Config, device: torch.device) -> tuple[Any, torch.amp.GradScaler | None]:
    if device.type != "cuda" or not config.train.amp:
        return nullcontext, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: the last iteration and the checkpoint it wrote."""

    iterations: int
    checkpoint: Path


def train(
    config: Config,
    features_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` on ``features_dir`` into ``run_dir`` (see the module docstring).

    Raises
    ------
    NonFiniteError
        When the loss is NaN or infinite; the checkpoint on disk is the last good one.
    FileExistsError
        When ``run_dir`` already holds a checkpoint and ``resume`` is False.
    """
    processes = _start_processes(device)
    try:
        return _train(config, Path(features_dir), Path(run_dir), processes, resume, progress)
    finally:
        if processes.distributed:
            dist.destroy_process_group()


def _train(
    config: Config,
    features_dir: Path,
    run_dir: Path,
    processes: _Processes,
    resume: bool,
    progress: bool,
) -> TrainResult:
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if checkpoint_path.exists() and not resume:
        raise FileExistsError(f"{checkpoint_path} exists: pass --resume to continue that run")
    if resume and not checkpoint_path.exists():
        raise FileNotFoundError(f"--resume: no {CHECKPOINT_NAME} in {run_dir}")
    device = processes.device
    clips = ClipDataset(
        features_dir,
        split="train",
        split_id=config.data.split,
        clip_len=config.data.clip_len,
        mode="random",
        seed=config.seed,
    )
    feature_shape = list(clips.index.feature_shape)
    torch.manual_seed(config.seed)
    model = build_model(config, clips.num_classes, feature_shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    autocast, scaler = _autocast(config, device)
    start, window = 0, _Window()
    torch.manual_seed(config.seed + processes.rank)
    if resume:
        saved = load_checkpoint(checkpoint_path, map_location=device)
        _check_resumable(saved["config"], config)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved["scaler"] is not None:
            scaler.load_state_dict(saved["scaler"])
        start = int(saved["iteration"])
        window = _Window(dict(saved["window"]["sums"]), int(saved["window"]["count"]))
        _set_rng_state(saved["rng"][processes.rank], device)
    if processes.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir / CONFIG_NAME, config)
        info = {
            "features": str(features_dir.resolve()),
            "classes": clips.classes,
            "feature_shape": feature_shape,
        }
        (run_dir / RUN_NAME).write_text(json.dumps(info, indent=1) + "\n")
    network: nn.Module = model
    if processes.distributed:
        ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    order = EpochBatches(
        len(clips),
        config.optim.batch_size,
        config.seed,
        start,
        config.train.iterations,
        processes.rank,
        processes.world_size,
    )
    loader = DataLoader(
        _EpochClips(clips),
        batch_sampler=order,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    log = _MetricsLog(run_dir, start, processes.main)
    from tqdm import tqdm

    bar = tqdm(
        total=config.train.iterations,
        initial=start,
        disable=not (progress and processes.main),
        desc=config.variant,
        dynamic_ncols=True,
    )

    def checkpoint(iteration: int) -> None:
        rng = _gather_rng_states(processes)
        if processes.main:
            save_checkpoint(
                checkpoint_path,
                {
                    "iteration": iteration,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": None if scaler is None else scaler.state_dict(),
                    "rng": rng,
                    "window": {"sums": window.sums, "count": window.count},
                    "config": config_to_dict(config),
                    "classes": clips.classes,
                    "feature_shape": feature_shape,
                },
            )

    model.train()
    batches = iter(loader)
    iteration = start
    cut_off: set[str] = set()
    try:
        while iteration < config.train.iterations:
            tick = time.perf_counter()
            batch = next(batches)
            features = batch["features"].to(device, non_blocking=True).float()
            mask = batch["mask"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            waited = time.perf_counter() - tick
            if not bool(torch.isfinite(features).all()):
                bad = [clips.videos[int(v)].id for v in batch["video"]]
                raise NonFiniteError(
                    f"non-finite features in the batch of iteration {iteration + 1} (videos "
                    f"{', '.join(bad)}); stopped. {_kept(checkpoint_path)}"
                )
            for group in optimizer.param_groups:
                group["lr"] = config.optim.learning_rate(iteration)
            with autocast():
                out: ModelOutput = network(features, mask)
            terms = loss_terms(model, out, labels, mask)
            values = _all_mean(_batch_values(out, labels, mask, terms), processes).tolist()
            if not math.isfinite(values[0]):
                raise NonFiniteError(
                    f"the loss became {values[0]} at iteration {iteration + 1}; stopped. "
                    + _kept(checkpoint_path)
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(terms.total).backward()  # type: ignore[no-untyped-call]
                scaler.unscale_(optimizer)
            else:
                terms.total.backward()  # type: ignore[no-untyped-call]
            grad_norm = float(
                nn.utils.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
            )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            elif not math.isfinite(grad_norm):
                raise NonFiniteError(
                    f"the gradient norm became {grad_norm} at iteration {iteration + 1}; "
                    f"stopped. {_kept(checkpoint_path)}"
                )
            else:
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - tick
            iteration += 1
            window.add(
                {
                    **dict(zip(_value_names(out), values, strict=True)),
                    "grad_norm": grad_norm,
                    "seconds": elapsed,
                    "data_seconds": waited,
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{values[0]:.3f}", acc=f"{values[5]:.2f}")
            done = iteration == config.train.iterations
            if iteration % config.train.log_every == 0 or done:
                row = _row(iteration, order, config, window, len(features) * processes.world_size)
                log.write(row)
                if processes.main:
                    cut_off = _warn_cut_off(row, cut_off)
                window = _Window()
            if iteration % config.train.checkpoint_every == 0 or done:
                checkpoint(iteration)
    finally:
        bar.close()
        log.close()
    return TrainResult(iteration, checkpoint_path)


def _kept(checkpoint: Path) -> str:
    if checkpoint.exists():
        return f"The last good checkpoint is kept: {checkpoint}"
    return "No checkpoint was written yet."


def _row(
    iteration: int, order: EpochBatches, config: Config, window: _Window, clips: int
) -> dict[str, float]:
    means = window.means()
    seconds, data_seconds = means.pop("seconds"), means.pop("data_seconds")
    return _add_cut_off(
        {
            "iteration": iteration,
            "epoch": order.epoch_of(iteration - 1),
            "lr": config.optim.learning_rate(iteration - 1),
            **means,
            "clips_per_s": clips / seconds,
            "data_wait": data_seconds / seconds,
        }
    )


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.action_recognition.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="TOML config file (see configs/)")
    parser.add_argument("--features", required=True, help="features directory (index.json)")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR's checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        result = train(
            config,
            args.features,
            args.out,
            device=args.device,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (NonFiniteError, ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"trained {result.iterations} iterations; checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
