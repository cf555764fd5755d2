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
one-hot over the last dimension. ``family`` is a truth about the *instance*
(``Reinforce(categorical=True).family == "categorical"``). ``log_prob`` is the
log-probability of the hard value under the estimator's discrete distribution
(:meth:`Estimator.distribution`), in the dtype of the logits.

Evaluation: every estimator takes ``eval_mode``, what it returns when the module
is in evaluation mode (``est.eval()``): ``"sample"`` (default, a draw as in
training) or ``"mode"`` (the most likely value, without noise). In training mode
it always samples.

Modules that own an estimator (the attentions, ``HMRNN``) call it through
:func:`call_estimator`, which accepts *any* ``nn.Module`` honouring
``est(logits, context=None) -> Sample`` — a stochrnn :class:`Estimator` or not,
with or without a ``generator=`` keyword — and check it with
:func:`require_family` and :func:`check_context_size`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal, NamedTuple, cast

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
    "EvalMode",
    "GumbelSigmoid",
    "GumbelSoftmax",
    "LearnedTemperature",
    "MovingAverageBaseline",
    "Reinforce",
    "Sample",
    "StraightThrough",
    "Temperature",
    "TemperatureLike",
    "accepts_generator",
    "as_temperature",
    "call_estimator",
    "check_context_size",
    "estimator_family",
    "estimator_surrogate_loss",
    "preserve_generators",
    "require_family",
    "validate_reward",
]

Family = Literal["binary", "categorical"]
EvalMode = Literal["sample", "mode"]
"""What an estimator returns in evaluation mode: a ``"sample"`` or the ``"mode"``."""

MIN_TEMPERATURE = 0.05
"""Temperatures are clamped from below to this value (and must be given above 0)."""

DEFAULT_MAX_SLOPE = 5.0
"""Chung et al.'s ceiling of the annealed straight-through slope."""


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
    ``context`` given to the estimator, shape ``(B, context_size)``, cast to the
    dtype of this module's weights; ``tau`` is float64 for a float64 module and
    float32 otherwise. A module that owns the estimator checks ``context_size``
    against the size of what it passes as context (:func:`check_context_size`).

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
        # The projection runs in the dtype of the weights (so after .double() or
        # .half() the context follows the module), the rest in F.compute_dtype.
        projected = self.linear(context.to(self.linear.weight.dtype)).squeeze(-1)
        w = nn.functional.softplus(projected.to(F.compute_dtype(projected.dtype)))
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
    ``state_dict``); it is only updated in training mode. Integer and boolean
    rewards are averaged as floats (never truncated). The buffer follows the
    module's dtype (float64 after ``.double()``) but never goes below float32: after
    ``.half()`` or ``.bfloat16()`` it stays float32, where a running mean of
    rewards keeps its precision.

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
            reward = torch.as_tensor(reward).detach()
            dtype = self.baseline.dtype
            if reward.is_floating_point():
                dtype = torch.promote_types(dtype, reward.dtype)
            mean = reward.to(dtype).mean().to(self.baseline.device, self.baseline.dtype)
            self.baseline.mul_(self.decay).add_((1.0 - self.decay) * mean)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        # .half() / .bfloat16() / .to(float16) would leave an 8- or 11-bit running
        # mean, whose small updates round away: keep the buffer at least float32.
        result = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if self.baseline.is_floating_point() and self.baseline.dtype != F.compute_dtype(
            self.baseline.dtype
        ):
            self.baseline = self.baseline.to(F.compute_dtype(self.baseline.dtype))
        return result

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


# --------------------------------------------------------------------------- estimators


def _check_eval_mode(eval_mode: str) -> EvalMode:
    if eval_mode not in ("sample", "mode"):
        raise ValueError(f"eval_mode must be 'sample' or 'mode', got {eval_mode!r}")
    return cast(EvalMode, eval_mode)


class Estimator(nn.Module):
    """Base class: ``est(logits, context=None) -> Sample``.

    Subclasses set :attr:`family` (``"binary"`` or ``"categorical"``) and
    implement :meth:`sample`. :meth:`distribution` is the discrete distribution
    that the hard sample follows (``Bernoulli``/``OneHotCategorical`` of the
    logits unless overridden); ``log_prob`` is taken under it, in the dtype of
    the logits (computed in float64 for float64 logits, in float32 otherwise).

    Parameters
    ----------
    validate_args:
        Checks of the logits (NaN, a scalar for a categorical estimator), and
        torch's own check of :meth:`distribution`: ``None`` (default) checks
        tensors on the CPU only, where it is cheap (on an accelerator the NaN
        check would wait for the device at every call); ``True`` checks
        everywhere; ``False`` never. Checks are skipped under ``torch.compile``.
    eval_mode:
        What the estimator returns in evaluation mode (``est.eval()``, or a parent
        module's): ``"sample"`` (default) draws as in training; ``"mode"`` returns
        the most likely value, :meth:`mode` (``1[logit > 0]`` for binary, the
        one-hot argmax for categorical; ties go to 0 / the first category), with
        its ``log_prob`` and no gradient through the value. In training mode every
        estimator samples. The default ``"sample"`` was chosen by measurement
        (models trained with samples, evaluated both ways, 5 seeds each): on the
        attention task of ``tests/test_attention_learning.py`` the mode gained
        0.0 to 1.2 points of accuracy (mean 0.4; Gumbel and REINFORCE, both
        scorings); on the HM-RNN task of ``tests/test_hmrnn_learning.py``
        (Gumbel-sigmoid and stochastic straight-through boundaries) it changed
        nothing on 9 of the 10 models that learnt (+1.7 on one); on a noisy
        variant of that task the
        two models that learnt lost 0.7 and 0.9 points, and the mode cut the
        second layer's boundary rate from about 0.1 to 0-0.07 (the layer above
        loses its input); in the action-recognition demo it moved accuracy by
        -16 to +3 points, mostly down. The mode suits a categorical choice
        (attention) more than HM-RNN boundaries; ask for it there.

    Examples
    --------
    >>> est = GumbelSigmoid(eval_mode="mode").eval()
    >>> est(torch.tensor([-1.0, 0.5, 3.0]))
    Sample(value=tensor([0., 1., 1.]), log_prob=tensor([-0.3133, -0.4741, -0.0486]))
    """

    family: Family = "binary"
    """``"binary"`` (values in {0, 1}) or ``"categorical"`` (one-hot over the last dim).

    A class attribute for estimators of one family; :class:`Reinforce` makes it a
    property, true for each instance.
    """
    pathwise: ClassVar[bool] = True
    """``True`` when the gradient flows through ``value`` (``surrogate_loss`` is 0)."""

    def __init__(self, validate_args: bool | None = None, eval_mode: EvalMode = "sample") -> None:
        super().__init__()
        self.validate_args = validate_args
        self.eval_mode: EvalMode = _check_eval_mode(eval_mode)

    @property
    def event_family(self) -> Family:
        """The family of this instance: the same as :attr:`family` (kept for older code)."""
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
        if not self.training and self.eval_mode == "mode":
            value = self.mode(logits)
        else:
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

    def mode(self, logits: Tensor) -> Tensor:
        """The most likely hard value under :meth:`distribution`, without gradient.

        Binary: ``1[logits > 0]``; categorical: the one-hot argmax over the last
        dim. In the dtype of ``logits``. Returned by ``forward`` in evaluation mode
        when ``eval_mode="mode"``.
        """
        logits = logits.detach()
        if self.family == "binary":
            return (logits > 0).to(logits.dtype)
        return F.one_hot_argmax(logits)

    def distribution(self, logits: Tensor) -> Distribution:
        """The discrete distribution of the hard sample given ``logits``.

        Its parameters are in float64 for float64 logits and float32 otherwise. torch
        validates them as :attr:`validate_args` says (on the CPU by default: the
        check reads a value back from the device, which on a GPU waits for it), but
        for the categorical family torch's ``OneHotCategorical`` checks its inner
        ``Categorical`` whatever it is told.
        """
        a = logits.to(F.compute_dtype(logits.dtype))
        check = self._should_validate(a)
        if self.family == "binary":
            return Bernoulli(logits=a, validate_args=check)
        return OneHotCategorical(logits=a, validate_args=check)

    def log_prob(self, logits: Tensor, value: Tensor) -> Tensor:
        """``log p(hard(value))`` in the dtype of ``logits``; relaxed values are discretised."""
        if self.family == "binary":
            return F.binary_log_prob(logits, (value > 0.5).to(logits.dtype))
        return F.categorical_log_prob(logits, value)

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """The loss to add to the task loss; exactly 0 for pathwise estimators.

        ``reward`` is checked as :func:`validate_reward` says (so every estimator
        refuses the same rewards).
        """
        validate_reward(log_prob, reward, f"{type(self).__name__}.surrogate_loss")
        return torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)

    def _validate(self, logits: Tensor) -> None:
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
        if self.family == "categorical" and logits.dim() == 0:
            raise ValueError(
                f"{type(self).__name__} is categorical: logits need a last dimension "
                "over the categories, got a 0-dim tensor"
            )
        if self.family == "categorical" and logits.shape[-1] < 1:
            raise ValueError(f"{type(self).__name__} got logits with 0 categories")
        if bool(torch.isnan(logits).any()):
            raise ValueError(f"{type(self).__name__} got NaN logits (shape {tuple(logits.shape)})")

    def extra_repr(self) -> str:
        return f"eval_mode={self.eval_mode!r}" if self.eval_mode != "sample" else ""


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
        eval_mode: EvalMode = "sample",
    ) -> None:
        super().__init__(validate_args, eval_mode)
        self.temperature = as_temperature(temperature)
        self.hard = hard

    def tau(self, logits: Tensor, context: Tensor | None) -> Tensor:
        return _broadcast_temperature(self.temperature(context), logits)

    def extra_repr(self) -> str:
        return ", ".join(filter(None, [f"hard={self.hard}", super().extra_repr()]))


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

    family: Family = "binary"

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

    family: Family = "categorical"

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

    The slope never exceeds ``max_slope``: ``max_slope=None`` (default) is 5
    (Chung et al.'s ceiling) or the initial ``slope`` if that is larger — so
    ``StraightThrough(slope=10)`` keeps the slope 10 it was given, with or
    without a rate — and an explicit ``max_slope`` below ``slope`` raises
    ``ValueError``.

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

    family: Family = "binary"
    epoch: Tensor

    def __init__(
        self,
        slope: float = 1.0,
        stochastic: bool = False,
        slope_rate: float = 0.0,
        max_slope: float | None = None,
        validate_args: bool | None = None,
        eval_mode: EvalMode = "sample",
    ) -> None:
        super().__init__(validate_args, eval_mode)
        self.initial_slope = _check_positive("slope", slope)
        if not slope_rate >= 0 or not math.isfinite(slope_rate):
            raise ValueError(f"slope_rate must be a finite number >= 0, got {slope_rate}")
        self.slope_rate = float(slope_rate)
        if max_slope is None:
            self.max_slope = max(DEFAULT_MAX_SLOPE, self.initial_slope)
        else:
            self.max_slope = _check_positive("max_slope", max_slope)
            if self.initial_slope > self.max_slope:
                raise ValueError(
                    f"slope={slope} exceeds max_slope={max_slope}: raise max_slope, "
                    "or leave it out (None: 5, or the slope if larger)"
                )
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
        """``hardsigm(slope * logits)``, the probability of a 1 (of the stochastic form).

        In float64 for float64 logits, float32 otherwise.
        """
        a = logits.to(F.compute_dtype(logits.dtype))
        # The slope as a tensor on the epoch's device: no host sync, no graph break.
        annealed = self.initial_slope + self.slope_rate * self.epoch.to(a.dtype)
        slope = annealed.clamp(max=self.max_slope) if self.slope_rate > 0 else self.initial_slope
        return F.hard_sigmoid(a, slope)

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
            hard = (u < p).to(p.dtype)
        else:
            hard = (p > 0.5).to(p.dtype)
        return F.straight_through(hard, p).to(logits.dtype)

    def distribution(self, logits: Tensor) -> Distribution:
        p = self.probs(logits)
        probs = p if self.stochastic else (p > 0.5).to(p.dtype)
        return Bernoulli(probs=probs, validate_args=self._should_validate(p))

    def log_prob(self, logits: Tensor, value: Tensor) -> Tensor:
        if not self.stochastic:
            return torch.zeros_like(logits)
        p = self.probs(logits).clamp(1e-6, 1 - 1e-6)
        hard = value.detach() > 0.5
        return torch.where(hard, p.log(), torch.log1p(-p)).to(logits.dtype)

    def extra_repr(self) -> str:
        return ", ".join(
            filter(
                None,
                [
                    f"slope={self.slope}, stochastic={self.stochastic}, "
                    f"slope_rate={self.slope_rate}, max_slope={self.max_slope}",
                    super().extra_repr(),
                ],
            )
        )


class Reinforce(Estimator):
    r"""Score-function (REINFORCE) estimator with a baseline, HM-AN Eq. 14–19.

    The value is a draw from ``Bernoulli(logits)`` (``categorical=False``) or a
    one-hot draw from ``Categorical(logits)``; no gradient flows through it.
    :attr:`family` says which, per instance. :meth:`surrogate_loss` gives the
    learning signal of Eq. 19:

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
    >>> est.family
    'categorical'
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
        eval_mode: EvalMode = "sample",
    ) -> None:
        super().__init__(validate_args, eval_mode)
        self.baseline = MovingAverageBaseline(0.9) if baseline is None else baseline
        if not isinstance(self.baseline, Baseline):
            raise TypeError(
                f"baseline must be a stochrnn Baseline or None, got {type(baseline).__name__}"
            )
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight}")
        self.weight = float(weight)
        self.categorical = bool(categorical)

    @property
    def family(self) -> Family:
        """``"categorical"`` if built with ``categorical=True`` (the default), else ``"binary"``.

        Setting it sets :attr:`categorical`.
        """
        return "categorical" if self.categorical else "binary"

    @family.setter
    def family(self, value: Family) -> None:
        if value not in ("binary", "categorical"):
            raise ValueError(f"family must be 'binary' or 'categorical', got {value!r}")
        self.categorical = value == "categorical"

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        with torch.no_grad():
            a = logits.to(F.compute_dtype(logits.dtype))
            if self.categorical:
                noise = F.gumbel_noise(logits.shape, device=logits.device, generator=generator)
                value = F.one_hot_argmax(a + noise)
            else:
                noise = F.logistic_noise(logits.shape, device=logits.device, generator=generator)
                value = (a + noise > 0).to(a.dtype)
        return value.to(logits.dtype)

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """Eq. 19's REINFORCE term for ``reward``, then the baseline's update.

        ``reward`` is a 0-dim tensor (one reward for everything) or has the
        leading dims of ``log_prob`` (e.g. ``(B,)`` for a ``(B, T)`` log-probability:
        one reward per sequence); anything else raises ``ValueError`` naming both
        shapes (see :func:`validate_reward`). Integer and boolean rewards are
        converted to ``log_prob``'s floating dtype. The loss is computed in
        float32 (float64 for float64) and returned in ``log_prob``'s dtype.
        """
        reward = validate_reward(log_prob, reward, f"{type(self).__name__}.surrogate_loss")
        dtype = F.compute_dtype(log_prob.dtype)
        advantage = reward.to(dtype) - self.baseline.value().to(log_prob.device, dtype)
        advantage = advantage.reshape(*advantage.shape, *([1] * (log_prob.dim() - advantage.dim())))
        batch = log_prob.shape[0] if log_prob.dim() > 0 else 1
        loss = -self.weight * (advantage * log_prob.to(dtype)).sum() / batch
        self.baseline.update(reward)
        return loss.to(log_prob.dtype)

    def extra_repr(self) -> str:
        return ", ".join(
            filter(
                None,
                [f"weight={self.weight}, categorical={self.categorical}", super().extra_repr()],
            )
        )


# --------------------------------------------------------------------------- rewards


def validate_reward(
    log_prob: Tensor, reward: Tensor | float, where: str = "surrogate_loss"
) -> Tensor:
    """Check a reward against the log-probability it weighs; return it as a floating tensor.

    Accepted shapes, with ``L = log_prob.shape``:

    * a 0-dim tensor (or a Python number): one reward for every element;
    * ``L[:k]`` for some ``k >= 1``: one reward per row of the leading ``k``
      dims, repeated over the rest (e.g. ``(B,)`` against ``(B, T)``), which
      includes ``L`` itself.

    Any other shape raises ``ValueError`` naming both shapes — in particular a
    ``(B, 1)`` reward against a ``(B,)`` log-probability, which would broadcast
    into a ``(B, B)`` outer product, and a ``(1,)`` reward against ``(B,)``.
    Integer and boolean rewards are converted to ``log_prob``'s floating dtype
    (an integer baseline would truncate); floating rewards keep their dtype;
    complex rewards raise ``TypeError``. The result is detached (a reward is a
    signal, not a path for gradients).

    Examples
    --------
    >>> log_prob = torch.zeros(4, 3)
    >>> validate_reward(log_prob, torch.tensor([1, 0, 1, 1])).dtype
    torch.float32
    >>> validate_reward(log_prob, torch.ones(4, 1))
    Traceback (most recent call last):
    ...
    ValueError: surrogate_loss: a reward of shape (4, 1) does not fit a log_prob of shape ...
    """
    if not isinstance(reward, Tensor):
        floating = log_prob.dtype if log_prob.is_floating_point() else None
        reward = torch.as_tensor(reward, dtype=floating, device=log_prob.device)
    if reward.is_complex():
        raise TypeError(f"{where}: the reward must be real, got dtype {reward.dtype}")
    shape, expected = tuple(reward.shape), tuple(log_prob.shape)
    if reward.dim() > 0 and (reward.dim() > log_prob.dim() or expected[: reward.dim()] != shape):
        raise ValueError(
            f"{where}: a reward of shape {shape} does not fit a log_prob of shape {expected}; "
            f"pass a 0-dim reward (one for everything) or one of shape {expected[:1]} "
            f"(one per row{'' if log_prob.dim() < 2 else ', up to ' + str(expected)})"
        )
    reward = reward.detach()
    if not reward.is_floating_point():
        target = log_prob.dtype if log_prob.is_floating_point() else torch.float32
        reward = reward.to(target)
    return reward


# --------------------------------------------------------------------------- owners' helpers


def estimator_family(est: object) -> Family | None:
    """The family ``est`` declares (``event_family``, else ``family``), or ``None`` if none.

    Examples
    --------
    >>> estimator_family(Reinforce(categorical=True)), estimator_family(nn.Identity())
    ('categorical', None)
    """
    for name in ("event_family", "family"):
        value = getattr(est, name, None)
        if value is not None:
            if value not in ("binary", "categorical"):
                raise TypeError(
                    f"{type(est).__name__}.{name} must be 'binary' or 'categorical', got {value!r}"
                )
            return cast(Family, value)
    return None


def require_family(est: object, family: Family, where: str) -> None:
    """Check at construction that ``est`` can serve as a ``family`` estimator.

    ``est`` must be a :class:`torch.nn.Module` (so that it moves, saves and
    switches train/eval with its owner) meant to be called as
    ``est(logits, context=None) -> Sample``; it need not subclass
    :class:`Estimator`. If it declares a family (``event_family`` or
    ``family``, as every :class:`Estimator` does) it must be ``family``;
    if it declares none it is taken at its word, and :func:`call_estimator`
    checks the shapes of what it returns at every call.

    Raises ``TypeError`` naming ``where`` otherwise.

    Examples
    --------
    >>> require_family(GumbelSoftmax(), "categorical", "my attention")
    >>> require_family(GumbelSigmoid(), "categorical", "my attention")
    Traceback (most recent call last):
    ...
    TypeError: my attention needs a categorical estimator, got GumbelSigmoid (a binary estimator)
    """
    if not isinstance(est, nn.Module):
        raise TypeError(
            f"{where} needs an estimator: a torch.nn.Module called as "
            f"est(logits, context=None) -> Sample, got {type(est).__name__}"
        )
    declared = estimator_family(est)
    if declared is not None and declared != family:
        raise TypeError(
            f"{where} needs a {family} estimator, got {type(est).__name__} (a {declared} estimator)"
        )


def check_context_size(est: nn.Module, size: int, where: str, context: str = "context") -> None:
    """Refuse, at construction, an adaptive temperature that would read a context of another size.

    Every submodule of ``est`` with an integer ``context_size`` (an
    :class:`AdaptiveTemperature`, shared or not) must have ``context_size == size``,
    the size of what the owner passes as ``context``; ``context`` names that
    input in the message (e.g. ``"query"``, ``"hidden state"``).

    Examples
    --------
    >>> check_context_size(GumbelSigmoid(AdaptiveTemperature(8)), 8, "layer 1")
    >>> check_context_size(GumbelSigmoid(AdaptiveTemperature(8)), 16, "layer 2", "hidden state")
    Traceback (most recent call last):
    ...
    ValueError: layer 2: the adaptive temperature reads the hidden state of size 16, but ...
    """
    for module in est.modules():
        expected = getattr(module, "context_size", None)
        if isinstance(expected, int) and expected != size:
            raise ValueError(
                f"{where}: the adaptive temperature reads the {context} of size {size}, "
                f"but was built with context_size={expected}"
            )


_ACCEPTS_GENERATOR: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def accepts_generator(est: Callable[..., Any]) -> bool:
    """Whether calling ``est`` accepts a ``generator=`` keyword (its ``forward`` for a module).

    Read from the signature once per function and cached.

    Examples
    --------
    >>> class Mine(nn.Module):
    ...     def forward(self, logits, context=None):
    ...         return GumbelSigmoid()(logits)
    >>> accepts_generator(GumbelSigmoid()), accepts_generator(Mine())
    (True, False)
    """
    fn = est.forward if isinstance(est, nn.Module) else est
    key = getattr(fn, "__func__", fn)
    try:
        return _ACCEPTS_GENERATOR[key]
    except (KeyError, TypeError):
        pass
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the documented call only
        return False
    accepts = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == "generator"
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        for p in parameters
    )
    with contextlib.suppress(TypeError):  # not weak-referenceable: read it every time
        _ACCEPTS_GENERATOR[key] = accepts
    return accepts


def call_estimator(
    est: Callable[..., Any],
    logits: Tensor,
    context: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    family: Family | None = None,
    where: str = "estimator",
) -> Sample:
    """Call any estimator as documented, ``est(logits, context)``, and check what it returns.

    ``generator`` is passed (as ``generator=``) only when it is given and ``est``
    accepts it (:func:`accepts_generator`); otherwise the estimator draws from
    torch's global generator. ``context`` is passed positionally. The result
    must be a :class:`Sample` (or a ``(value, log_prob)`` pair of tensors) whose
    ``value`` has the shape of ``logits`` and whose ``log_prob`` has the batch
    shape of ``family`` (binary: ``logits.shape``; categorical:
    ``logits.shape[:-1]``); ``family=None`` takes the family ``est`` declares,
    if any. The checks read shapes only (no device synchronisation); a failure
    raises ``TypeError``/``ValueError`` naming ``where``.

    Examples
    --------
    >>> class Mine(nn.Module):                  # no generator, not an Estimator
    ...     def forward(self, logits, context=None):
    ...         value = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1])
    ...         return Sample(value.to(logits.dtype), logits.log_softmax(-1).max(-1).values)
    >>> s = call_estimator(Mine(), torch.randn(2, 5), generator=torch.Generator(),
    ...                    family="categorical")
    >>> s.value.sum(-1)
    tensor([1., 1.])
    """
    if generator is not None and accepts_generator(est):
        out = est(logits, context, generator=generator)
    else:
        out = est(logits, context)
    if not isinstance(out, Sample):
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"{where}: {type(est).__name__} must return Sample(value, log_prob), "
                f"got {type(out).__name__}"
            )
        out = Sample(*out)
    value, log_prob = out
    if not isinstance(value, Tensor) or not isinstance(log_prob, Tensor):
        raise TypeError(
            f"{where}: {type(est).__name__} must return tensors, got "
            f"Sample({type(value).__name__}, {type(log_prob).__name__})"
        )
    if value.shape != logits.shape:
        raise ValueError(
            f"{where}: {type(est).__name__} returned a value of shape {tuple(value.shape)} "
            f"for logits of shape {tuple(logits.shape)} (expected the same shape)"
        )
    family = estimator_family(est) if family is None else family
    if family is not None:
        batch = logits.shape if family == "binary" else logits.shape[:-1]
        if log_prob.shape != batch:
            raise ValueError(
                f"{where}: {type(est).__name__} returned a log_prob of shape "
                f"{tuple(log_prob.shape)} for logits of shape {tuple(logits.shape)}; a {family} "
                f"estimator's log_prob has shape {tuple(batch)}"
            )
    return out


def estimator_surrogate_loss(est: object, log_prob: Tensor, reward: Tensor, where: str) -> Tensor:
    """``est.surrogate_loss(log_prob, reward)``, or 0 for a module that has none.

    A module without ``surrogate_loss`` is taken to be pathwise (its gradient
    flows through the value); the reward is still checked with
    :func:`validate_reward`, so every estimator refuses the same rewards.

    Examples
    --------
    >>> estimator_surrogate_loss(nn.Identity(), torch.zeros(3), torch.ones(3), "mine")
    tensor(0.)
    """
    method = getattr(est, "surrogate_loss", None)
    if method is None:
        validate_reward(log_prob, reward, where)
        return torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    loss: Tensor = method(log_prob, reward)
    return loss


# --------------------------------------------------------------------------- checkpointing


def preserve_generators(
    *generators: torch.Generator,
) -> Callable[
    [], tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]
]:
    """A ``context_fn`` for :func:`torch.utils.checkpoint.checkpoint` that replays ``generators``.

    Activation checkpointing recomputes the forward pass during backward.
    ``torch.utils.checkpoint`` restores torch's *global* random state for the
    recomputation (``preserve_rng_state=True``), but not the state of a
    :class:`torch.Generator` passed as ``generator=``: the recomputation would
    draw other noise than the forward pass, and the gradient would be that of
    another sample — silently wrong. Pass
    ``context_fn=preserve_generators(g, ...)`` (non-reentrant checkpointing,
    ``use_reentrant=False``) and the recomputation starts each generator from
    the state it had at the start of the forward pass, then leaves it where it
    was, so the gradient is exact and the stream continues as without
    checkpointing. Alternatively, leave ``generator=`` out of checkpointed code.

    Examples
    --------
    >>> from torch.utils.checkpoint import checkpoint
    >>> g = torch.Generator().manual_seed(0)
    >>> est, a = GumbelSigmoid(0.5, hard=False), torch.zeros(3, requires_grad=True)
    >>> y = checkpoint(lambda x: est(x, generator=g).value, a, use_reentrant=False,
    ...                context_fn=preserve_generators(g))
    >>> y.sum().backward()
    """
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"preserve_generators takes torch.Generator, got {type(g).__name__}")

    def context_fn() -> tuple[
        contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]
    ]:
        saved: list[Tensor] = []

        @contextlib.contextmanager
        def forward() -> Iterator[None]:
            saved[:] = [g.get_state() for g in generators]
            yield

        @contextlib.contextmanager
        def recompute() -> Iterator[None]:
            current = [g.get_state() for g in generators]
            for g, state in zip(generators, saved, strict=True):
                g.set_state(state)
            try:
                yield
            finally:
                for g, state in zip(generators, current, strict=True):
                    g.set_state(state)

        return forward(), recompute()

    return context_fn
