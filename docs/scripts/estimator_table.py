"""The bias/variance table of the estimator guide, measured with ``stochrnn.diagnostics``.

Two small problems whose exact gradient is known by enumeration:

- binary: 6 Bernoulli units with logits ``a``, ``f(z) = 2 + sin(w · z)`` (64 configurations);
- categorical: 2 categoricals over 4 classes, ``f(z) = (Σ w ⊙ z)²`` (16 configurations).

Every estimator gives ``NUM_SAMPLES`` single-sample estimates of ``∇_a E[f(z)]`` with a
fixed seed; the table reports their bias against the exact gradient and their variance.
The docs build puts the table into docs/guides/estimators.md (see hooks.py); run this
file to print it::

    python docs/scripts/estimator_table.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from stochrnn import (
    Baseline,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    Reinforce,
    StraightThrough,
)
from stochrnn.diagnostics import GradientReport, gradient_bias_variance

NUM_SAMPLES = 20_000
SEED = 0

BINARY_LOGITS = torch.tensor([0.8, -0.5, 1.2, -1.5, 0.1, 0.4])
BINARY_WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0, 2.0])
CATEGORICAL_LOGITS = torch.tensor([[1.0, 0.0, -0.5, 0.3], [-0.2, 0.9, 0.1, -1.0]])
CATEGORICAL_WEIGHTS = torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.5, 1.5, -2.0, 1.0]])


def binary_objective(z: Tensor) -> Tensor:
    """``2 + sin(w · z)`` for values ``(N, 6)``."""
    return 2.0 + torch.sin((z * BINARY_WEIGHTS.to(z.dtype)).sum(-1))


def categorical_objective(z: Tensor) -> Tensor:
    """``(Σ w ⊙ z)²`` for values ``(N, 2, 4)``."""
    return (z * CATEGORICAL_WEIGHTS.to(z.dtype)).sum((-1, -2)).square()


class NoBaseline(Baseline):
    """Subtracts nothing: plain REINFORCE, to show what the moving average buys."""

    def value(self) -> Tensor:
        return torch.zeros(())

    def update(self, reward: Tensor) -> None:
        pass


def candidates() -> list[tuple[str, Estimator]]:
    """The rows of the table: a label (the constructor call) and a fresh estimator."""
    return [
        ("StraightThrough()", StraightThrough()),
        ("StraightThrough(stochastic=True)", StraightThrough(stochastic=True)),
        ("GumbelSigmoid(0.1)", GumbelSigmoid(0.1)),
        ("GumbelSigmoid(0.3)", GumbelSigmoid(0.3)),
        ("GumbelSigmoid(1.0)", GumbelSigmoid(1.0)),
        ("Reinforce(NoBaseline(), categorical=False)", Reinforce(NoBaseline(), categorical=False)),
        ("Reinforce(categorical=False)", Reinforce(categorical=False)),
        ("GumbelSoftmax(0.1)", GumbelSoftmax(0.1)),
        ("GumbelSoftmax(0.3)", GumbelSoftmax(0.3)),
        ("GumbelSoftmax(1.0)", GumbelSoftmax(1.0)),
        ("Reinforce(NoBaseline())", Reinforce(NoBaseline())),
        ("Reinforce()", Reinforce()),
    ]


def measure(est: Estimator) -> GradientReport:
    """The report of ``est`` on the problem of its family."""
    problems: dict[str, tuple[Tensor, Callable[[Tensor], Tensor]]] = {
        "binary": (BINARY_LOGITS, binary_objective),
        "categorical": (CATEGORICAL_LOGITS, categorical_objective),
    }
    logits, objective = problems[est.event_family]
    generator = torch.Generator().manual_seed(SEED)
    return gradient_bias_variance(
        est, logits, objective, num_samples=NUM_SAMPLES, generator=generator
    )


def _number(x: float) -> str:
    return "∞" if x == float("inf") else f"{x:.3g}"


def markdown_table() -> str:
    """The table, in Markdown, one row per estimator of :func:`candidates`."""
    header = [
        "estimator",
        "family",
        "relative bias",
        "largest bias / s.e.",
        "variance",
        "RMSE",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, est in candidates():
        report = measure(est)
        cells = [
            f"`{label}`",
            est.event_family,
            _number(report.relative_bias),
            _number(report.max_abs_z),
            _number(report.total_variance),
            _number(report.rmse),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    start = time.perf_counter()
    print(markdown_table())
    print(f"\n{NUM_SAMPLES} estimates per row, seed {SEED}: {time.perf_counter() - start:.1f} s")
