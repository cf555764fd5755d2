"""The evaluation's figures, as PNG files (matplotlib, no display needed).

* :func:`plot_training_cost` -- cross-entropy against iteration, one curve per
  run (the paper's Fig. 5–7);
* :func:`plot_confusion` -- a confusion matrix (Fig. 8–9);
* :func:`plot_attention` -- attention weights over a frame's ``K × K`` regions
  at a few steps of one clip (Fig. 10, top);
* :func:`plot_boundaries` -- each layer's boundary decisions through time, with
  the true segment changes when known (Fig. 10, bottom).

The "frame" under the attention is drawn from the features themselves: the norm
of each region's feature vector, a picture of where the feature map responds
(for the synthetic dataset: the actor and the distractors). Each function
writes one file and returns its path.

Examples
--------
>>> import tempfile, numpy as np
>>> d = tempfile.mkdtemp()
>>> path = plot_boundaries(np.eye(3, dtype=bool)[[0, 1, 2, 0]], f"{d}/b.png", changes=[2])
>>> path.name
'b.png'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "feature_energy",
    "plot_attention",
    "plot_boundaries",
    "plot_confusion",
    "plot_training_cost",
]

PathLike = str | os.PathLike[str]


def _save(figure: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(figure)
    os.replace(tmp, path)
    return path


def plot_training_cost(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: PathLike, title: str
) -> Path:
    """One curve per run: ``{label: (iterations, cross_entropy)}``."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for label, (iterations, cost) in curves.items():
        axes.plot(iterations, cost, label=label)
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy (summed over a clip's steps)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_confusion(
    matrix: npt.ArrayLike, classes: Sequence[str], path: PathLike, title: str
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = max(4.0, 0.32 * len(classes) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(classes))
    font = 8 if len(classes) <= 20 else 5
    axes.set_xticks(ticks, classes, rotation=90, fontsize=font)
    axes.set_yticks(ticks, classes, fontsize=font)
    if len(classes) <= 20:
        for (row, col), value in np.ndenumerate(counts):
            if value:
                color = "white" if rates[row, col] > 0.5 else "black"
                axes.text(
                    col, row, str(int(value)), ha="center", va="center", fontsize=7, color=color
                )
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    return _save(figure, path)


def feature_energy(features: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``(T, N)`` norm of each region's feature vector, from features ``(T, N, D)``.

    Examples
    --------
    >>> feature_energy(np.ones((2, 4, 9))).tolist()
    [[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
    """
    norms: npt.NDArray[np.float64] = np.linalg.norm(np.asarray(features, dtype=np.float64), axis=-1)
    return norms


def _grid(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    side = round(float(np.sqrt(values.shape[-1])))
    if side * side != values.shape[-1]:
        raise ValueError(f"expected K*K regions, got {values.shape[-1]}")
    return values.reshape(*values.shape[:-1], side, side)


def plot_attention(
    energy: npt.ArrayLike,
    weights: npt.ArrayLike,
    path: PathLike,
    title: str,
    steps: Sequence[int],
    target: npt.ArrayLike | None = None,
) -> Path:
    """Attention over the frame at the given ``steps`` of one clip.

    Parameters
    ----------
    energy:
        ``(T, N)`` the frame picture (see :func:`feature_energy`), shown in grey.
    weights:
        ``(T, N)`` the attention weights, overlaid in red (opacity = weight).
    steps:
        Which steps to show, one panel each.
    target:
        Optional ``(T, N)`` booleans: regions holding the true signal, outlined.
    """
    frame = _grid(np.asarray(energy, dtype=np.float64))
    attention = _grid(np.asarray(weights, dtype=np.float64))
    truth = None if target is None else _grid(np.asarray(target, dtype=np.float64))
    figure, panels = plt.subplots(1, len(steps), figsize=(1.9 * len(steps), 2.3), squeeze=False)
    top = float(frame.max()) or 1.0
    for axes, step in zip(panels[0], steps, strict=True):
        axes.imshow(frame[step], cmap="gray", vmin=0.0, vmax=top)
        overlay = np.zeros((*attention[step].shape, 4))
        overlay[..., 0] = 1.0
        overlay[..., 3] = 0.85 * attention[step] / max(float(attention[step].max()), 1e-8)
        axes.imshow(overlay)
        if truth is not None:
            for row, col in zip(*np.nonzero(truth[step]), strict=True):
                axes.add_patch(
                    Rectangle(
                        (col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="lime", linewidth=1.2
                    )
                )
        axes.set_title(f"t = {step}", fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def plot_boundaries(
    boundaries: npt.ArrayLike,
    path: PathLike,
    changes: Sequence[int] | None = None,
    title: str = "boundaries",
) -> Path:
    """Each layer's boundary (``(T, L)`` in {0, 1}) through time, layer 1 at the bottom.

    ``changes``: frames where a new segment starts, drawn as dashed lines.
    """
    z = np.asarray(boundaries, dtype=np.float64)
    steps, layers = z.shape
    figure, axes = plt.subplots(figsize=(max(6.0, 0.12 * steps), 0.55 * layers + 1.2))
    axes.imshow(z.T, aspect="auto", cmap="Greys", vmin=0, vmax=1, origin="lower")
    for change in changes or []:
        axes.axvline(change - 0.5, color="tab:red", linestyle="--", linewidth=1)
    axes.set_yticks(range(layers), [f"layer {l + 1}" for l in range(layers)])
    axes.set_xlabel("frame" + ("   (red: true sub-action changes)" if changes else ""))
    axes.set_title(title, fontsize=9)
    return _save(figure, path)
