"""Bias and variance of an estimator's gradient, against exact enumeration.

For a small discrete problem — binary logits with up to ~16 elements in all, or
categoricals with up to ~16 classes — the gradient of

.. math:: J(a) = \\mathbb{E}_{z \\sim p_a}[f(z)] = \\sum_z p_a(z)\\, f(z)

with respect to the logits ``a`` is computed exactly by summing over every
configuration ``z``. An estimator's single-sample gradient estimate is

.. math:: \\hat g = \\nabla_a \\big[f(z) - \\mathcal{L}_{sur}(\\log p(z), f(z))\\big]

(``f(z)`` carries the pathwise gradient, the estimator's ``surrogate_loss`` the
score-function one; each is zero for the other kind of estimator), so any
estimator is measured the same way, without asking which kind it is.

Examples
--------
>>> import torch
>>> from stochrnn import Reinforce
>>> from stochrnn.diagnostics import gradient_bias_variance
>>> f = lambda z: (z * torch.tensor([1.0, -2.0, 0.5])).sum(-1)
>>> report = gradient_bias_variance(
...     Reinforce(categorical=False), torch.tensor([0.2, -0.4, 1.0]), f,
...     num_samples=2000, generator=torch.Generator().manual_seed(0))
>>> bool(report.max_abs_z < 5)   # unbiased: the bias is within a few standard errors
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .estimators import Estimator

__all__ = [
    "GradientReport",
    "enumerate_values",
    "estimate_gradients",
    "exact_gradient",
    "gradient_bias_variance",
]

MAX_CONFIGURATIONS = 1 << 16
"""Largest number of configurations :func:`enumerate_values` will build."""

Objective = Callable[[Tensor], Tensor]


def enumerate_values(shape: torch.Size | tuple[int, ...], family: str) -> Tensor:
    """Every discrete value of a given shape: ``(K, *shape)``.

    ``family="binary"``: all ``2**numel`` vectors in {0, 1}. ``"categorical"``:
    every combination of one-hots over the last dimension.

    Examples
    --------
    >>> enumerate_values((2,), "binary")
    tensor([[0., 0.],
            [1., 0.],
            [0., 1.],
            [1., 1.]])
    >>> enumerate_values((3,), "categorical").argmax(-1)
    tensor([0, 1, 2])
    """
    shape = torch.Size(shape)
    if family == "binary":
        n = shape.numel()
        _check_size(2.0**n, shape)
        codes = torch.arange(2**n)
        bits = (codes.unsqueeze(-1) >> torch.arange(n)) & 1
        return bits.float().reshape(-1, *shape)
    if family == "categorical":
        if len(shape) == 0:
            raise ValueError("categorical values need a last dimension over the categories")
        k = shape[-1]
        m = shape.numel() // k
        _check_size(float(k) ** m, shape)
        codes = torch.arange(k**m)
        digits = (codes.unsqueeze(-1) // (k ** torch.arange(m))) % k
        one_hot = torch.nn.functional.one_hot(digits, k).float()
        return one_hot.reshape(-1, *shape)
    raise ValueError(f"family must be 'binary' or 'categorical', got {family!r}")


def _check_size(count: float, shape: torch.Size) -> None:
    if count > MAX_CONFIGURATIONS:
        raise ValueError(
            f"exact enumeration over logits of shape {tuple(shape)} needs {count:.3g} "
            f"configurations; at most {MAX_CONFIGURATIONS} are supported"
        )


def _log_prob_all(logits: Tensor, values: Tensor, family: str) -> Tensor:
    """``log p(z)`` of each enumerated ``z`` (summed over all elements): ``(K,)``."""
    if family == "binary":
        lp = values * logits - torch.nn.functional.softplus(logits)
    else:
        lp = values * torch.log_softmax(logits, dim=-1)
    return lp.reshape(values.shape[0], -1).sum(-1)


def exact_gradient(logits: Tensor, f: Objective, family: str) -> Tensor:
    """The exact gradient of ``E[f(z)]`` with respect to ``logits``, by enumeration.

    ``f`` maps a batch of values ``(K, *logits.shape)`` to rewards ``(K,)``.
    Computed in float64.

    Examples
    --------
    >>> import torch
    >>> exact_gradient(torch.zeros(1), lambda z: z.sum(-1), "binary")  # d sigmoid(a)/da at 0
    tensor([0.2500], dtype=torch.float64)
    """
    a = logits.detach().double().requires_grad_(True)
    values = enumerate_values(a.shape, family).double()
    rewards = f(values).double().detach()
    if rewards.shape != values.shape[:1]:
        raise ValueError(
            f"f must map values of shape {tuple(values.shape)} to rewards of shape "
            f"({values.shape[0]},), got {tuple(rewards.shape)}"
        )
    expectation = (_log_prob_all(a, values, family).exp() * rewards).sum()
    (grad,) = torch.autograd.grad(expectation, a)
    return grad


def estimate_gradients(
    est: Estimator,
    logits: Tensor,
    f: Objective,
    num_samples: int,
    *,
    batch_size: int = 500,
    context: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Single-sample gradient estimates of ``E[f(z)]``: ``(num_samples, *logits.shape)``.

    Samples are drawn in batches of ``batch_size`` rows, each row its own copy of
    ``logits``; a stateful estimator (a moving-average baseline) is updated once
    per batch, as in training. ``context`` (e.g. for an adaptive temperature) is
    repeated along the new batch dimension.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    estimates = []
    remaining = num_samples
    while remaining > 0:
        n = min(batch_size, remaining)
        rows = logits.detach().float().expand(n, *logits.shape).clone().requires_grad_(True)
        ctx = None if context is None else context.expand(n, *context.shape)
        if generator is None:
            sample = est(rows, ctx)
        else:
            sample = est(rows, ctx, generator=generator)
        reward = f(sample.value)
        objective = reward.sum() - n * est.surrogate_loss(sample.log_prob, reward.detach())
        if objective.requires_grad:
            (grad,) = torch.autograd.grad(objective, rows, allow_unused=True)
        else:
            grad = None
        estimates.append(torch.zeros_like(rows) if grad is None else grad.detach())
        remaining -= n
    return torch.cat(estimates).double()


@dataclass(frozen=True)
class GradientReport:
    """Exact gradient, and the mean, bias and variance of single-sample estimates.

    All tensors have the shape of the logits. ``z`` is the bias in units of its
    standard error: entries much beyond 3–4 mean a biased estimator (or too few
    samples to see it; relaxed estimators are biased by design).

    Attributes
    ----------
    exact:
        The exact gradient of ``E[f(z)]``, by enumeration (float64).
    mean:
        The mean of the single-sample estimates.
    variance:
        The variance of one estimate, per element.
    num_samples:
        How many estimates were averaged.
    """

    exact: Tensor
    mean: Tensor
    variance: Tensor
    num_samples: int

    @property
    def bias(self) -> Tensor:
        """``mean - exact``, per element."""
        return self.mean - self.exact

    @property
    def std_error(self) -> Tensor:
        """Standard error of ``mean``: ``sqrt(variance / num_samples)``."""
        return (self.variance / self.num_samples).sqrt()

    @property
    def z(self) -> Tensor:
        """``bias / std_error``; infinite where estimates never vary yet miss the exact value."""
        se, bias = self.std_error, self.bias
        certain = torch.where(bias == 0, torch.zeros_like(bias), torch.full_like(bias, math.inf))
        return torch.where(se > 0, bias / se.clamp_min(1e-300), certain)

    @property
    def max_abs_z(self) -> float:
        """The largest ``|z|``: compare with a normal critical value."""
        return float(self.z.abs().max())

    @property
    def bias_norm(self) -> float:
        """Euclidean norm of the bias."""
        return float(self.bias.norm())

    @property
    def relative_bias(self) -> float:
        """``|bias| / |exact|``."""
        return self.bias_norm / max(float(self.exact.norm()), 1e-12)

    @property
    def total_variance(self) -> float:
        """Trace of the covariance of one estimate: ``sum(variance)``."""
        return float(self.variance.sum())

    @property
    def rmse(self) -> float:
        """Root mean-squared error of one estimate: ``sqrt(|bias|² + total variance)``."""
        return math.sqrt(self.bias_norm**2 + self.total_variance)


def gradient_bias_variance(
    est: Estimator,
    logits: Tensor,
    f: Objective,
    num_samples: int = 5000,
    *,
    batch_size: int = 500,
    context: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> GradientReport:
    """Compare ``est``'s gradient estimates of ``E[f(z)]`` with the exact gradient.

    Parameters
    ----------
    est:
        Any :class:`~stochrnn.Estimator`; its ``event_family`` decides the enumeration.
    logits:
        One problem's logits (no batch dimension), small enough to enumerate.
    f:
        Maps values ``(N, *logits.shape)`` to rewards ``(N,)``; differentiable in the
        values for pathwise estimators to use.
    num_samples:
        Number of single-sample estimates.
    """
    family = getattr(est, "event_family", getattr(est, "family", "binary"))
    exact = exact_gradient(logits, f, family)
    grads = estimate_gradients(
        est, logits, f, num_samples, batch_size=batch_size, context=context, generator=generator
    )
    return GradientReport(
        exact=exact,
        mean=grads.mean(0),
        variance=grads.var(0, unbiased=True) if num_samples > 1 else torch.zeros_like(exact),
        num_samples=num_samples,
    )
