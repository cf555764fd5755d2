r"""Boundary detectors as closed-form rules, for the fused sequence step.

The fused step (:mod:`stochrnn.hmrnn.fused`) runs a whole sequence in one autograd
node, so it cannot call a boundary estimator inside autograd. It can use an
estimator whose draw is an elementwise function of the logit :math:`a` and of
noise :math:`\epsilon` drawn beforehand, and whose log-probability is an
elementwise function of :math:`a` and the drawn value:

======================  =================================  ====================================
estimator               value :math:`v`                    :math:`\partial v / \partial a`
======================  =================================  ====================================
Gumbel-sigmoid, hard    :math:`1[a + \epsilon > 0]`        :math:`y(1 - y)/\tau`
Gumbel-sigmoid, soft    :math:`y`                          :math:`y(1 - y)/\tau`
straight-through        :math:`1[p > 1/2]`                 :math:`\partial p/\partial a`
ST, stochastic          :math:`1[u < p]`                   :math:`\partial p/\partial a`
REINFORCE (binary)      :math:`1[a + \epsilon > 0]`        0
======================  =================================  ====================================

with :math:`y = \sigma((a + \epsilon)/\tau)`, :math:`\epsilon` logistic noise,
:math:`u` uniform, :math:`p = \mathrm{hardsigm}(\alpha a)`, and the
log-probability that of the estimator
(:math:`v a - \mathrm{softplus}(a)` for the Bernoulli ones). The noise is drawn
with exactly the calls the estimator itself makes, in the same order, so the
fused step and the per-step path draw the same boundaries from the same seed.

Only these exact classes with a constant temperature qualify (a subclass may
override :meth:`~stochrnn.estimators.Estimator.sample`); any other estimator runs
through the per-step path, where it is called as a module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from ..estimators import ConstantTemperature, GumbelSigmoid, Reinforce, StraightThrough

__all__ = ["BoundaryRule", "RuleKind", "boundary_rule"]


class RuleKind(IntEnum):
    """The rules the native kernels know (``enum Rule`` in ``fused_cpu.cpp``)."""

    GUMBEL_HARD = 0
    GUMBEL_RELAXED = 1
    STRAIGHT_THROUGH = 2
    STRAIGHT_THROUGH_STOCHASTIC = 3
    REINFORCE = 4
    MODE = 5


@dataclass(frozen=True)
class BoundaryRule:
    """One layer's boundary detector as closed forms.

    ``draw(shape, device, generator)`` draws the uniforms the noise is made from (or
    ``None``), ``noise(u)`` turns them into the noise, elementwise (so the fused
    sequence draws them step by step, in the per-step path's order, and turns them
    all into noise at once);
    ``value(a, noise)`` the boundary, differentiable in ``a`` under autograd;
    ``derivatives(a, noise, value)`` returns :math:`\\partial v/\\partial a` and
    :math:`\\partial \\log p / \\partial a`; ``log_prob(a, value)`` the
    log-probability of the value. ``kind`` and ``param()`` name the rule for the
    native CPU kernels (``fused_cpu.cpp``): the temperature or the slope (read only
    there, so that a CUDA step never waits to read the slope to the host).
    """

    draw: Callable[[torch.Size, torch.device, torch.Generator | None], Tensor | None]
    value: Callable[[Tensor, Tensor | None], Tensor]
    derivatives: Callable[[Tensor, Tensor | None, Tensor], tuple[Tensor, Tensor]]
    log_prob: Callable[[Tensor, Tensor], Tensor]
    kind: RuleKind
    param: Callable[[], float] = lambda: 0.0
    noise: Callable[[Tensor], Tensor] = lambda u: u


def _compute(a: Tensor) -> Tensor:
    return a.to(torch.promote_types(a.dtype, torch.float32))


def _logistic(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """The float32 uniforms of :func:`~stochrnn.functional.logistic_noise`."""
    return torch.rand(shape, device=device, dtype=torch.float32, generator=generator)


def _uniform(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, device=device, generator=generator)


def _no_noise(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> None:
    return None


def _bernoulli_log_prob(a: Tensor, value: Tensor) -> Tensor:
    return F.binary_log_prob(a, (value > 0.5).to(a.dtype))


def _bernoulli_score(a: Tensor, value: Tensor) -> Tensor:
    return (value > 0.5).to(a.dtype) - torch.sigmoid(a)


def _gumbel_rule(tau: Tensor, hard: bool) -> BoundaryRule:
    """``tau`` stays a tensor (read to the host only for the CPU kernels)."""

    def value(a: Tensor, noise: Tensor | None) -> Tensor:
        assert noise is not None
        shifted = _compute(a) + noise
        if hard and not torch.is_grad_enabled():
            return (shifted > 0).to(a.dtype)
        soft = torch.sigmoid(shifted / tau)
        if hard:
            soft = F.straight_through((shifted > 0).to(shifted.dtype), soft)
        return soft.to(a.dtype)

    def derivatives(a: Tensor, noise: Tensor | None, v: Tensor) -> tuple[Tensor, Tensor]:
        assert noise is not None
        y = torch.sigmoid((_compute(a) + noise) / tau)
        return (y * (1.0 - y) / tau).to(a.dtype), _bernoulli_score(a, v)

    return BoundaryRule(
        _logistic,
        value,
        derivatives,
        _bernoulli_log_prob,
        RuleKind.GUMBEL_HARD if hard else RuleKind.GUMBEL_RELAXED,
        lambda: float(tau),
        F.logistic_from_uniform,
    )


def _straight_through_rule(est: StraightThrough) -> BoundaryRule:
    def value(a: Tensor, noise: Tensor | None) -> Tensor:
        return est.sample(a) if noise is None else _stochastic_value(a, noise)

    def _stochastic_value(a: Tensor, noise: Tensor) -> Tensor:
        p = est.probs(a)
        return F.straight_through((noise < p).to(p.dtype), p).to(a.dtype)

    def derivatives(a: Tensor, noise: Tensor | None, v: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = a.detach().requires_grad_(True)
            p = est.probs(leaf)
            log_p = est.log_prob(leaf, v) if est.stochastic else None
            (dp,) = torch.autograd.grad(p.sum(), leaf)
            dlog_p = (
                torch.autograd.grad(log_p.sum(), leaf)[0]
                if log_p is not None and log_p.requires_grad
                else torch.zeros_like(a)
            )
        return dp.to(a.dtype), dlog_p.to(a.dtype)

    draw = _uniform if est.stochastic else _no_noise
    kind = RuleKind.STRAIGHT_THROUGH_STOCHASTIC if est.stochastic else RuleKind.STRAIGHT_THROUGH
    return BoundaryRule(draw, value, derivatives, est.log_prob, kind, lambda: float(est.slope))


def _reinforce_rule() -> BoundaryRule:
    def value(a: Tensor, noise: Tensor | None) -> Tensor:
        assert noise is not None
        return (_compute(a.detach()) + noise > 0).to(a.dtype)

    def derivatives(a: Tensor, noise: Tensor | None, v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(a), _bernoulli_score(a, v)

    return BoundaryRule(
        _logistic,
        value,
        derivatives,
        _bernoulli_log_prob,
        RuleKind.REINFORCE,
        noise=F.logistic_from_uniform,
    )


def _mode_rule(est: Any) -> BoundaryRule:
    """The most likely value ``1[a > 0]``: an estimator evaluating with ``eval_mode="mode"``."""

    def value(a: Tensor, noise: Tensor | None) -> Tensor:
        return (a.detach() > 0).to(a.dtype)

    def derivatives(a: Tensor, noise: Tensor | None, v: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = a.detach().requires_grad_(True)
            log_p = est.log_prob(leaf, v)
            score = torch.autograd.grad(log_p.sum(), leaf)[0] if log_p.requires_grad else None
        return torch.zeros_like(a), torch.zeros_like(a) if score is None else score

    return BoundaryRule(_no_noise, value, derivatives, est.log_prob, RuleKind.MODE)


def boundary_rule(est: Any) -> BoundaryRule | None:
    """The closed-form rule of ``est``, or ``None`` when it must be called as a module.

    Built at every call, so it follows the estimator's current state (training
    or evaluation, its annealed slope).
    """
    kind = type(est)
    if kind in (GumbelSigmoid, StraightThrough, Reinforce):
        if not est.training and est.eval_mode == "mode" and est.event_family == "binary":
            return _mode_rule(est)
    if kind is GumbelSigmoid and type(est.temperature) is ConstantTemperature:
        return _gumbel_rule(est.temperature.tau, est.hard)
    if kind is StraightThrough:
        return _straight_through_rule(est)
    if kind is Reinforce and not est.categorical:
        return _reinforce_rule()
    return None
