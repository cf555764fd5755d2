"""Gradient estimators for discrete neurons, their temperatures and baselines.

An estimator is a small :class:`torch.nn.Module` with one job: turn logits into
a discrete :class:`Sample` whose gradient reaches the logits. All estimators
share one call signature and one loss hook, so a model can swap them freely::

    sample = est(logits, context=None)            # Sample(value, log_prob)
    loss = task_loss + est.surrogate_loss(sample.log_prob, reward)

``surrogate_loss`` is exactly zero for pathwise estimators (straight-through,
Gumbel) and the REINFORCE term for score-function ones, so a training loop never
asks which estimator it holds.

Binary estimators (``family == "binary"``) return ``value`` of the shape of the
logits in {0, 1}; categorical ones (``family == "categorical"``) return a
one-hot over the last dimension. ``log_prob`` is the log-probability of the hard
value under the estimator's discrete distribution (:meth:`Estimator.distribution`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, OneHotCategorical

from . import functional as F

__all__ = [
    "AdaptiveTemperature",
    "AnnealedTemperature",
    "Baseline",
    "ConstantTemperature",
    "Estimator",
    "GumbelSigmoid",
    "GumbelSoftmax",
    "LearnedTemperature",
    "MovingAverageBaseline",
    "Reinforce",
    "Sample",
    "StraightThrough",
    "Temperature",
    "TemperatureLike",
    "as_temperature",
    "require_family",
]

Family = Literal["binary", "categorical"]

MIN_TEMPERATURE = 0.05
"""Temperatures are clamped from below to this value (and must be given above 0)."""


class Sample(NamedTuple):
    """What every estimator returns.

    Attributes
    ----------
    value:
        The sample: {0, 1} (binary) or one-hot over the last dim (categorical);
        relaxed values when the estimator was built with ``hard=False``.
    log_prob:
        ``log p(hard value)`` under the discrete distribution; batch shape (binary:
        the shape of the logits; categorical: ``logits.shape[:-1]``).
    """

    value: Tensor
    log_prob: Tensor


def _check_positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


# --------------------------------------------------------------------------- temperatures


class Temperature(nn.Module):
    """Base class of temperatures: ``tau = temp(context)``.

    ``forward`` returns a 0-dim tensor (one temperature for everything) or a
    ``(B,)`` tensor (one per row of the batch); estimators broadcast it over
    the remaining dimensions of the logits.
    """

    def forward(self, context: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ConstantTemperature(Temperature):
    r"""A fixed temperature :math:`\tau`.

    Examples
    --------
    >>> ConstantTemperature(0.3)()
    tensor(0.3000)
    """

    tau: Tensor

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.register_buffer("tau", torch.tensor(_check_positive("temperature", tau)))

    def forward(self, context: Tensor | None = None) -> Tensor:
        return self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau.item():.4g}"


class LearnedTemperature(Temperature):
    r"""One learnt scalar temperature, kept above ``min_tau``.

    .. math:: \tau = \tau_{min} + \operatorname{softplus}(\rho)

    with :math:`\rho` initialised so that :math:`\tau = ` ``init``.

    Examples
    --------
    >>> t = LearnedTemperature(0.5)
    >>> round(t().item(), 4), t().requires_grad
    (0.5, True)
    """

    def __init__(self, init: float = 1.0, min_tau: float = MIN_TEMPERATURE) -> None:
        super().__init__()
        init = _check_positive("temperature", init)
        self.min_tau = _check_positive("min_tau", min_tau)
        if init <= self.min_tau:
            raise ValueError(f"initial temperature must exceed min_tau={min_tau}, got {init}")
        excess = init - self.min_tau
        raw = excess + math.log(-math.expm1(-excess))  # inverse softplus
        self.raw = nn.Parameter(torch.tensor(raw))

    def forward(self, context: Tensor | None = None) -> Tensor:
        return self.min_tau + nn.functional.softplus(self.raw)


class AdaptiveTemperature(Temperature):
    r"""A temperature read from the state, one per row (HM-AN Eq. 21).

    .. math:: \tau = \frac{1}{\operatorname{softplus}(W h + b) + 1}

    so :math:`\tau \in (0, 1]`; it is clamped below at ``min_tau``. ``h`` is the
    ``context`` given to the estimator, shape ``(B, context_size)``.

    Examples
    --------
    >>> t = AdaptiveTemperature(context_size=8)
    >>> t(torch.zeros(4, 8)).shape
    torch.Size([4])
    """

    def __init__(self, context_size: int, min_tau: float = MIN_TEMPERATURE) -> None:
        super().__init__()
        if not isinstance(context_size, int) or context_size <= 0:
            raise ValueError(f"context_size must be a positive int, got {context_size!r}")
        self.context_size = context_size
        self.min_tau = _check_positive("min_tau", min_tau)
        self.linear = nn.Linear(context_size, 1)

    def forward(self, context: Tensor | None = None) -> Tensor:
        if context is None:
            raise ValueError(
                "AdaptiveTemperature reads the state: pass context= of shape "
                f"(batch, {self.context_size})"
            )
        if context.dim() != 2 or context.shape[-1] != self.context_size:
            raise ValueError(
                f"AdaptiveTemperature expected context of shape (batch, {self.context_size}), "
                f"got {tuple(context.shape)}"
            )
        w = nn.functional.softplus(self.linear(context.float()).squeeze(-1))
        return (1.0 / (w + 1.0)).clamp(min=self.min_tau)


class AnnealedTemperature(Temperature):
    r"""A temperature schedule stepped by the training loop (Jang et al.).

    .. math:: \tau_n = \max(\tau_{end},\ \tau_{start}\, e^{-r n})

    where ``n`` counts calls to :meth:`step`; ``n`` is a buffer, so it is saved
    in ``state_dict`` and a resumed run continues the schedule.

    Examples
    --------
    >>> t = AnnealedTemperature(start=1.0, end=0.5, rate=0.1)
    >>> for _ in range(3):
    ...     t.step()
    >>> round(t().item(), 4)
    0.7408
    """

    num_steps: Tensor

    def __init__(self, start: float = 1.0, end: float = 0.3, rate: float = 1e-4) -> None:
        super().__init__()
        self.start = _check_positive("start temperature", start)
        self.end = _check_positive("end temperature", end)
        if rate < 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a finite number >= 0, got {rate}")
        self.rate = float(rate)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def step(self) -> None:
        """Advance the schedule by one (call once per iteration or epoch)."""
        self.num_steps += 1

    def forward(self, context: Tensor | None = None) -> Tensor:
        tau = self.start * torch.exp(-self.rate * self.num_steps.float())
        return tau.clamp(min=max(self.end, MIN_TEMPERATURE))


TemperatureLike = float | Temperature
"""What a ``temperature=`` argument accepts: a float (constant) or a :class:`Temperature`."""


def as_temperature(temperature: TemperatureLike) -> Temperature:
    """A :class:`Temperature` from a float (constant) or a temperature module."""
    if isinstance(temperature, Temperature):
        return temperature
    return ConstantTemperature(temperature)


# --------------------------------------------------------------------------- baselines


class Baseline(nn.Module):
    """Base class of REINFORCE baselines.

    :meth:`value` returns the baseline to subtract from this batch's reward and
    must not depend on that reward; :meth:`update` then folds the reward in.
    """

    def value(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, reward: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class MovingAverageBaseline(Baseline):
    r"""Exponential moving average of the reward (HM-AN Eq. 18).

    .. math:: b_k = \text{decay}\cdot b_{k-1} + (1 - \text{decay})\cdot \bar r_k

    :meth:`value` is :math:`b_{k-1}`, the value from *before* batch ``k``, so the
    gradient estimate stays unbiased. ``b`` starts at 0 and is a buffer (saved in
    ``state_dict``); it is only updated in training mode.

    Examples
    --------
    >>> b = MovingAverageBaseline(0.9)
    >>> b.update(torch.tensor([1.0, 3.0]))
    >>> b.value()
    tensor(0.2000)
    """

    baseline: Tensor

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.register_buffer("baseline", torch.zeros(()))

    def value(self) -> Tensor:
        return self.baseline.clone()

    @torch.no_grad()
    def update(self, reward: Tensor) -> None:
        if self.training:
            mean = reward.detach().float().mean().to(self.baseline.device)
            self.baseline.mul_(self.decay).add_((1.0 - self.decay) * mean)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


# --------------------------------------------------------------------------- estimators


class Estimator(nn.Module):
    """Base class: ``est(logits, context=None) -> Sample``.

    Subclasses set :attr:`family` (``"binary"`` or ``"categorical"``) and
    implement :meth:`sample`. :meth:`distribution` is the discrete distribution
    that the hard sample follows (``Bernoulli``/``OneHotCategorical`` of the
    logits unless overridden); ``log_prob`` is taken under it.

    ``validate_args`` checks the logits (NaN, a scalar for a categorical
    estimator): ``None`` (default) checks tensors on the CPU only, where it is
    cheap (on an accelerator the NaN check would wait for the device at every
    call); ``True`` checks everywhere; ``False`` never. Checks are skipped under
    ``torch.compile``.
    """

    family: ClassVar[Family] = "binary"
    """``"binary"`` (values in {0, 1}) or ``"categorical"`` (one-hot over the last dim)."""
    pathwise: ClassVar[bool] = True
    """``True`` when the gradient flows through ``value`` (``surrogate_loss`` is 0)."""

    def __init__(self, validate_args: bool | None = None) -> None:
        super().__init__()
        self.validate_args = validate_args

    @property
    def event_family(self) -> Family:
        """The family of this instance (:class:`Reinforce` decides it per instance)."""
        return self.family

    def forward(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Sample:
        if self._should_validate(logits):
            self._validate(logits)
        value = self.sample(logits, context, generator=generator)
        return Sample(value, self.log_prob(logits, value))

    def _should_validate(self, logits: Tensor) -> bool:
        if self.validate_args is False or torch.compiler.is_compiling():
            return False
        on_cpu = not isinstance(logits, Tensor) or logits.device.type == "cpu"
        return bool(self.validate_args) or on_cpu

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:  # pragma: no cover - abstract
        """Draw the value: the one method a new estimator must implement.

        Return a tensor of the shape and dtype of ``logits`` whose forward value
        is the (hard or relaxed) sample and whose gradient, if any, reaches
        ``logits``. ``context`` is what an adaptive temperature reads.
        """
        raise NotImplementedError

    def distribution(self, logits: Tensor) -> Distribution:
        """The discrete distribution of the hard sample given ``logits``."""
        if self.event_family == "binary":
            return Bernoulli(logits=logits.float())
        return OneHotCategorical(logits=logits.float())

    def log_prob(self, logits: Tensor, value: Tensor) -> Tensor:
        """``log p(hard(value))``; relaxed values are discretised first."""
        if self.event_family == "binary":
            return F.binary_log_prob(logits, (value > 0.5).to(logits.dtype))
        return F.categorical_log_prob(logits, value)

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """The loss to add to the task loss; exactly 0 for pathwise estimators."""
        return torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)

    def _validate(self, logits: Tensor) -> None:
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
        if self.event_family == "categorical" and logits.dim() == 0:
            raise ValueError(
                f"{type(self).__name__} is categorical: logits need a last dimension "
                "over the categories, got a 0-dim tensor"
            )
        if self.event_family == "categorical" and logits.shape[-1] < 1:
            raise ValueError(f"{type(self).__name__} got logits with 0 categories")
        if bool(torch.isnan(logits).any()):
            raise ValueError(f"{type(self).__name__} got NaN logits (shape {tuple(logits.shape)})")


def _broadcast_temperature(tau: Tensor, logits: Tensor) -> Tensor:
    """Reshape a 0-dim or per-row ``(B,)`` temperature to broadcast against ``logits``."""
    if tau.dim() == 0:
        return tau
    if logits.dim() == 0 or tau.shape[0] != logits.shape[0]:
        raise ValueError(
            f"a per-row temperature of shape {tuple(tau.shape)} needs logits with batch "
            f"size {tau.shape[0]} first, got logits of shape {tuple(logits.shape)}"
        )
    return tau.reshape(tau.shape[0], *([1] * (logits.dim() - 1)))


class _Relaxed(Estimator):
    """Shared constructor of the Gumbel estimators."""

    def __init__(
        self,
        temperature: TemperatureLike = 0.3,
        hard: bool = True,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(validate_args)
        self.temperature = as_temperature(temperature)
        self.hard = hard

    def tau(self, logits: Tensor, context: Tensor | None) -> Tensor:
        return _broadcast_temperature(self.temperature(context), logits)

    def extra_repr(self) -> str:
        return f"hard={self.hard}"


class GumbelSigmoid(_Relaxed):
    r"""Gumbel-sigmoid (binary concrete) estimator, HM-AN Eq. 10–11.

    .. math::
        y = \sigma\!\left(\frac{a + g_1 - g_2}{\tau}\right),\qquad
        z = \mathbb{1}[y > 0.5]

    Forward gives ``z`` (``hard=True``) or ``y``; the gradient is that of ``y``.
    ``P(z = 1) = sigmoid(a)``. ``temperature`` is a float or a
    :class:`Temperature` (e.g. :class:`AdaptiveTemperature` reading ``context``).

    Examples
    --------
    >>> est = GumbelSigmoid(temperature=0.3)
    >>> logits = torch.zeros(2, 3, requires_grad=True)
    >>> s = est(logits, generator=torch.Generator().manual_seed(0))
    >>> s.value.shape, s.log_prob.shape
    (torch.Size([2, 3]), torch.Size([2, 3]))
    >>> s.value.sum().backward(); logits.grad.abs().sum() > 0
    tensor(True)
    """

    family: ClassVar[Family] = "binary"

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return F.gumbel_sigmoid(logits, self.tau(logits, context), self.hard, generator=generator)


class GumbelSoftmax(_Relaxed):
    r"""Gumbel-softmax estimator over the last dimension, HM-AN Eq. 8 and 20.

    .. math::
        y = \operatorname{softmax}\!\left(\frac{a + g}{\tau}\right),\qquad
        z = \operatorname{onehot}(\arg\max (a + g))

    Forward gives ``z`` (``hard=True``; rows sum to exactly 1) or ``y``; the
    gradient is that of ``y``. ``P(z_i = 1) = softmax(a)_i``.

    Examples
    --------
    >>> est = GumbelSoftmax(temperature=0.3)
    >>> s = est(torch.zeros(4, 6), generator=torch.Generator().manual_seed(0))
    >>> s.value.sum(-1), s.log_prob.shape
    (tensor([1., 1., 1., 1.]), torch.Size([4]))
    """

    family: ClassVar[Family] = "categorical"

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return F.gumbel_softmax(logits, self.tau(logits, context), self.hard, generator=generator)


class StraightThrough(Estimator):
    r"""Straight-through estimator with the hard sigmoid of Chung et al.

    .. math::
        p = \operatorname{hardsigm}(\alpha a) = \max(0, \min(1, (\alpha a + 1)/2)),\qquad
        z = \mathbb{1}[p > 0.5] \ \text{or}\ z \sim \operatorname{Bernoulli}(p)

    The forward value is ``z``; the gradient is that of ``p``. The slope
    :math:`\alpha` is annealed by :meth:`step` (call once per epoch):
    :math:`\alpha_e = \min(\alpha_{max},\ \alpha_0 + r e)`; Chung et al. use
    ``slope=1, slope_rate=0.04, max_slope=5``. The epoch count is a buffer.
    The deterministic form has ``log_prob`` 0 (its decision is certain).

    Examples
    --------
    >>> est = StraightThrough(slope=1.0, slope_rate=0.04)
    >>> est(torch.tensor([-1.0, 0.5])).value
    tensor([0., 1.])
    >>> for epoch in range(100):
    ...     est.step()
    >>> est.slope
    5.0
    """

    family: ClassVar[Family] = "binary"
    epoch: Tensor

    def __init__(
        self,
        slope: float = 1.0,
        stochastic: bool = False,
        slope_rate: float = 0.0,
        max_slope: float = 5.0,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(validate_args)
        self.initial_slope = _check_positive("slope", slope)
        if slope_rate < 0:
            raise ValueError(f"slope_rate must be >= 0, got {slope_rate}")
        self.slope_rate = float(slope_rate)
        self.max_slope = _check_positive("max_slope", max_slope)
        self.stochastic = stochastic
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    @property
    def slope(self) -> float:
        """The current slope ``min(max_slope, slope + slope_rate * epoch)``."""
        annealed = self.initial_slope + self.slope_rate * int(self.epoch)
        return min(self.max_slope, annealed) if self.slope_rate > 0 else self.initial_slope

    def step(self) -> None:
        """Advance the slope schedule by one epoch."""
        self.epoch += 1

    def probs(self, logits: Tensor) -> Tensor:
        """``hardsigm(slope * logits)``, the probability of a 1 (of the stochastic form)."""
        # The slope as a tensor on the epoch's device: no host sync, no graph break.
        annealed = self.initial_slope + self.slope_rate * self.epoch.float()
        slope = annealed.clamp(max=self.max_slope) if self.slope_rate > 0 else self.initial_slope
        return F.hard_sigmoid(logits.float(), slope)

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        p = self.probs(logits)
        if self.stochastic:
            u = torch.rand(p.shape, device=p.device, generator=generator)
            hard = (u < p).float()
        else:
            hard = (p > 0.5).float()
        return F.straight_through(hard, p).to(logits.dtype)

    def distribution(self, logits: Tensor) -> Distribution:
        p = self.probs(logits)
        return Bernoulli(probs=p if self.stochastic else (p > 0.5).float())

    def log_prob(self, logits: Tensor, value: Tensor) -> Tensor:
        if not self.stochastic:
            return torch.zeros_like(logits)
        p = self.probs(logits).clamp(1e-6, 1 - 1e-6)
        hard = value.detach() > 0.5
        return torch.where(hard, p.log(), torch.log1p(-p)).to(logits.dtype)

    def extra_repr(self) -> str:
        return (
            f"slope={self.slope}, stochastic={self.stochastic}, "
            f"slope_rate={self.slope_rate}, max_slope={self.max_slope}"
        )


class Reinforce(Estimator):
    r"""Score-function (REINFORCE) estimator with a baseline, HM-AN Eq. 14–19.

    The value is a draw from ``Bernoulli(logits)`` (``categorical=False``) or a
    one-hot draw from ``Categorical(logits)``; no gradient flows through it.
    :meth:`surrogate_loss` gives the learning signal of Eq. 19:

    .. math::
        \mathcal{L}_{sur} = -\frac{\lambda}{B}\sum (r - b)\,\log p(z)

    (summed over every element, divided by the batch size ``B``) whose gradient
    is an unbiased estimate of :math:`-\lambda\nabla\mathbb{E}[r]`. ``b`` is the
    baseline's value from *before* this batch (never the current reward); the
    baseline is then updated with the reward. ``baseline=None`` makes a fresh
    ``MovingAverageBaseline(0.9)``.

    Examples
    --------
    >>> est = Reinforce(categorical=True)
    >>> logits = torch.zeros(8, 4, requires_grad=True)
    >>> s = est(logits, generator=torch.Generator().manual_seed(0))
    >>> reward = s.value[:, 0]                       # reward 1 for category 0
    >>> est.surrogate_loss(s.log_prob, reward).backward()
    >>> logits.grad.shape
    torch.Size([8, 4])
    """

    pathwise: ClassVar[bool] = False

    def __init__(
        self,
        baseline: Baseline | None = None,
        weight: float = 1.0,
        categorical: bool = True,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(validate_args)
        self.baseline = MovingAverageBaseline(0.9) if baseline is None else baseline
        if not isinstance(self.baseline, Baseline):
            raise TypeError(
                f"baseline must be a stochrnn Baseline or None, got {type(baseline).__name__}"
            )
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight}")
        self.weight = float(weight)
        self.categorical = categorical

    @property
    def event_family(self) -> Family:
        return "categorical" if self.categorical else "binary"

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        with torch.no_grad():
            if self.categorical:
                noise = F.gumbel_noise(logits.shape, device=logits.device, generator=generator)
                value = F.one_hot_argmax(logits.float() + noise)
            else:
                noise = F.logistic_noise(logits.shape, device=logits.device, generator=generator)
                value = (logits.float() + noise > 0).float()
        return value.to(logits.dtype)

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """Eq. 19's REINFORCE term for ``reward`` (broadcast from the left), then update b."""
        reward = reward.detach()
        advantage = reward - self.baseline.value().to(reward.device, reward.dtype)
        while advantage.dim() < log_prob.dim():
            advantage = advantage.unsqueeze(-1)
        batch = log_prob.shape[0] if log_prob.dim() > 0 else 1
        loss = -self.weight * (advantage * log_prob).sum() / batch
        self.baseline.update(reward)
        return loss

    def extra_repr(self) -> str:
        return f"weight={self.weight}, categorical={self.categorical}"


def _family_of(est: nn.Module) -> str:
    return str(getattr(est, "event_family", getattr(est, "family", "unknown")))


def require_family(est: nn.Module, family: Family, where: str) -> None:
    """Raise ``TypeError`` unless ``est`` is an :class:`Estimator` of ``family``."""
    if not isinstance(est, Estimator):
        raise TypeError(f"{where} needs a stochrnn Estimator, got {type(est).__name__}")
    if est.event_family != family:
        raise TypeError(
            f"{where} needs a {family} estimator, got {type(est).__name__} "
            f"(a {_family_of(est)} estimator)"
        )
