"""One instance of each of our estimators, shared by the estimator and conformance tests."""

from __future__ import annotations

from stochrnn import Estimator, GumbelSigmoid, GumbelSoftmax, Reinforce, StraightThrough


def all_estimators() -> list[Estimator]:
    """Fresh instances (estimators hold state: a baseline, a slope schedule)."""
    return [
        StraightThrough(),
        StraightThrough(stochastic=True),
        GumbelSigmoid(0.3),
        GumbelSigmoid(0.3, hard=False),
        GumbelSoftmax(0.3),
        GumbelSoftmax(0.3, hard=False),
        Reinforce(categorical=False),
        Reinforce(categorical=True),
    ]


def ids(ests: list[Estimator]) -> list[str]:
    """Test ids that name the class and its settings."""
    return [f"{type(e).__name__}-{e.extra_repr()}" for e in ests]
