"""Evaluation metrics of the paper's Section IV: accuracy, AP, confusion, plus the demo's own.

Everything takes numpy arrays and returns numpy values; nothing here knows of
models or files. Class scores are ``(V, C)`` arrays (one row per video), labels
``(V,)`` integers in ``0 .. C-1``.

Examples
--------
>>> import numpy as np
>>> scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
>>> labels = np.array([0, 1, 1])
>>> float(accuracy(scores, labels)), float(mean_class_accuracy(scores, labels))
(0.6666666666666666, 0.75)
>>> average_precision(scores[:, 1], labels == 1)
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BoundaryAlignment",
    "accuracy",
    "attention_on_target",
    "average_blocks",
    "average_precision",
    "boundary_alignment",
    "confusion_matrix",
    "mean_class_accuracy",
    "per_class_average_precision",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _check_scores(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, IntArray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(
            f"expected scores (V, C) and labels (V,), got {s.shape} and {np.shape(labels)}"
        )
    if y.size and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in 0..{s.shape[1] - 1}, got {y.min()}..{y.max()}")
    return s, y


def average_blocks(
    block_scores: npt.ArrayLike, video: npt.ArrayLike
) -> tuple[IntArray, FloatArray]:
    """Average the scores of each video's blocks (the paper's test-time averaging).

    Parameters
    ----------
    block_scores:
        ``(M, C)`` scores of ``M`` blocks (each already the mean of its steps).
    video:
        ``(M,)`` index of the video each block comes from.

    Returns
    -------
    videos, scores:
        The sorted distinct video indices ``(V,)`` and their mean scores ``(V, C)``.

    Examples
    --------
    >>> average_blocks([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [7, 7, 2])
    (array([2, 7]), array([[0.5, 0.5],
           [0.5, 0.5]]))
    """
    s = np.asarray(block_scores, dtype=np.float64)
    v = np.asarray(video, dtype=np.int64)
    if s.ndim != 2 or v.shape != (s.shape[0],):
        raise ValueError(f"expected block scores (M, C) and video (M,), got {s.shape}, {v.shape}")
    videos, inverse = np.unique(v, return_inverse=True)
    sums = np.zeros((videos.size, s.shape[1]))
    np.add.at(sums, inverse, s)
    counts = np.bincount(inverse, minlength=videos.size)
    return videos, sums / counts[:, None]


def accuracy(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Fraction of rows whose highest score is the label."""
    s, y = _check_scores(scores, labels)
    return float(np.mean(s.argmax(axis=1) == y))


def confusion_matrix(scores: npt.ArrayLike, labels: npt.ArrayLike) -> IntArray:
    """``(C, C)`` counts: row = true class, column = predicted class.

    Examples
    --------
    >>> confusion_matrix([[0.9, 0.1], [0.8, 0.2]], [0, 1]).tolist()
    [[1, 0], [1, 0]]
    """
    s, y = _check_scores(scores, labels)
    num_classes = s.shape[1]
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y, s.argmax(axis=1)), 1)
    return matrix


def mean_class_accuracy(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean over the classes present in ``labels`` of each class's accuracy (recall)."""
    matrix = confusion_matrix(scores, labels)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def average_precision(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    r"""Average precision of one class: the area under its precision-recall steps.

    .. math:: AP = \sum_n (R_n - R_{n-1})\, P_n

    over the distinct score thresholds in decreasing order (tied scores form one
    step), as ``sklearn.metrics.average_precision_score``. NaN when there is
    no positive.

    Examples
    --------
    >>> average_precision([0.9, 0.8, 0.7], [True, False, True])
    0.8333333333333333
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    p = np.asarray(positive, dtype=bool).ravel()
    if s.shape != p.shape:
        raise ValueError(f"scores and positive must have one shape, got {s.shape}, {p.shape}")
    if not p.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, p = s[order], p[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    true_pos = np.cumsum(p)[last_of_threshold]
    precision = true_pos / (last_of_threshold + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def per_class_average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """``(C,)`` one-vs-rest AP of every class (NaN for a class absent from ``labels``).

    The paper's Olympic Sports metric; its mAP is ``np.nanmean`` of this.
    """
    s, y = _check_scores(scores, labels)
    return np.array([average_precision(s[:, c], y == c) for c in range(s.shape[1])])


def attention_on_target(weights: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """Mean attention weight on the regions where the signal is.

    Parameters
    ----------
    weights:
        ``(S, N)`` attention weights of ``S`` steps over ``N`` regions.
    target:
        ``(S, N)`` booleans, True on the regions holding the signal at each step.

    Examples
    --------
    >>> attention_on_target([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]], [[1, 1, 0], [0, 0, 1]])
    0.375
    """
    w = np.asarray(weights, dtype=np.float64)
    t = np.asarray(target, dtype=bool)
    if w.ndim != 2 or t.shape != w.shape:
        raise ValueError(f"expected weights (S, N) and target (S, N), got {w.shape}, {t.shape}")
    return float(np.mean((w * t).sum(axis=1))) if t.size else float("nan")


@dataclass(frozen=True)
class BoundaryAlignment:
    """How boundary decisions line up with true segment changes.

    Attributes
    ----------
    precision:
        Fraction of boundaries within ``tolerance`` frames of a change.
    recall:
        Fraction of changes with a boundary within ``tolerance`` frames.
    f1:
        Harmonic mean of the two (0 when both are 0).
    chance_precision:
        Expected precision of boundaries placed at random frames: the fraction
        of frames within ``tolerance`` of a change. ``precision`` well above it
        means the boundaries follow the changes.
    rate:
        Boundaries per frame.
    """

    precision: float
    recall: float
    f1: float
    chance_precision: float
    rate: float


def boundary_alignment(
    boundaries: Sequence[npt.ArrayLike], changes: Sequence[Sequence[int]], tolerance: int = 1
) -> BoundaryAlignment:
    """Match boundary frames to segment changes, video by video.

    Parameters
    ----------
    boundaries:
        One ``(T_v,)`` 0/1 array per video (a layer's boundary at every frame).
    changes:
        Per video, the frames where a new segment starts (never frame 0).
    tolerance:
        A boundary at frame ``t`` matches a change at ``c`` when ``|t - c| <= tolerance``.

    Examples
    --------
    >>> a = boundary_alignment([[0, 0, 1, 0, 0, 0, 0, 1]], [[3]], tolerance=1)
    >>> a.precision, a.recall, round(a.chance_precision, 3)
    (0.5, 1.0, 0.375)
    """
    if len(boundaries) != len(changes):
        raise ValueError(f"got {len(boundaries)} boundary arrays but {len(changes)} change lists")
    fires = near_fires = hit_changes = total_changes = near_frames = frames = 0
    for z, c in zip(boundaries, changes, strict=True):
        fired = np.flatnonzero(np.asarray(z) > 0.5)
        change = np.asarray(c, dtype=np.int64)
        length = int(np.asarray(z).shape[0])
        frame = np.arange(length)
        if change.size:
            near = np.abs(frame[:, None] - change[None, :]).min(axis=1) <= tolerance
            dist = np.abs(fired[:, None] - change[None, :])
            near_fires += int((dist.min(axis=1) <= tolerance).sum()) if fired.size else 0
            hit_changes += int((dist.min(axis=0) <= tolerance).sum()) if fired.size else 0
            near_frames += int(near.sum())
        fires += fired.size
        total_changes += change.size
        frames += length
    precision = near_fires / fires if fires else 0.0
    recall = hit_changes / total_changes if total_changes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BoundaryAlignment(
        precision=precision,
        recall=recall,
        f1=f1,
        chance_precision=near_frames / frames if frames else 0.0,
        rate=fires / frames if frames else 0.0,
    )
