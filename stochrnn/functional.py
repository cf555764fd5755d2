"""Pure tensor functions: noise, relaxations, hard sigmoid and straight-through.

Everything here is stateless and works in *logit space*: no function turns
logits into probabilities and back. Noise is drawn in float32 from a uniform
clamped away from 0 and 1 and only then cast, so float16 and bfloat16 inputs
get finite noise too. Randomness comes only from torch's generator (pass
``generator=`` for a private stream).

Examples
--------
>>> import torch
>>> from stochrnn import functional as F
>>> g = torch.Generator().manual_seed(0)
>>> z = F.gumbel_sigmoid(torch.zeros(4), temperature=0.3, hard=True, generator=g)
>>> sorted(set(z.tolist())) <= [0.0, 1.0]
True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "binary_log_prob",
    "categorical_log_prob",
    "compute_dtype",
    "gumbel_noise",
    "gumbel_sigmoid",
    "gumbel_softmax",
    "hard_sigmoid",
    "logistic_from_uniform",
    "logistic_noise",
    "one_hot_argmax",
    "straight_through",
    "uniform_open",
]

#: Smallest distance of a uniform draw from 0 and 1, in float32.
UNIFORM_EPS = 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype this module computes in for inputs of ``dtype``: float64 for float64,
    float32 for everything narrower (float16, bfloat16) and for float32.

    Examples
    --------
    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


def _compute(logits: Tensor) -> Tensor:
    """``logits`` in the dtype the relaxations compute in: float32, or float64 for float64."""
    return logits.to(compute_dtype(logits.dtype))


def uniform_open(
    shape: torch.Size | tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    eps: float = UNIFORM_EPS,
) -> Tensor:
    """Float32 uniform draws clamped to ``[eps, 1 - eps]``.

    Drawn in float32 whatever the caller's dtype: in float16 a uniform can round
    to exactly 1, and ``log(1 - u)`` is then infinite.
    """
    u = torch.rand(shape, device=device, dtype=torch.float32, generator=generator)
    return u.clamp_(eps, 1.0 - eps)


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Standard Gumbel noise :math:`g = -\log(-\log u)`, ``u ~ U(0, 1)``, in float32.

    Examples
    --------
    >>> g = gumbel_noise((1000,), generator=torch.Generator().manual_seed(0))
    >>> bool(g.isfinite().all())
    True
    """
    u = uniform_open(shape, device=device, generator=generator)
    return -torch.log(-torch.log(u))


def logistic_noise(
    shape: torch.Size | tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Standard logistic noise :math:`\log u - \log(1-u)`, in float32.

    The difference of two independent Gumbel draws :math:`g_1 - g_2` has this
    distribution, so one logistic draw replaces the two Gumbel draws of Eq. 10.

    Examples
    --------
    >>> l = logistic_noise((1000,), generator=torch.Generator().manual_seed(0))
    >>> bool(l.isfinite().all())
    True
    """
    u = torch.rand(shape, device=device, dtype=torch.float32, generator=generator)
    return logistic_from_uniform(u)


def logistic_from_uniform(u: Tensor, eps: float = UNIFORM_EPS) -> Tensor:
    r"""Logistic noise from float32 uniform draws ``u``: :math:`\log u - \log(1-u)`, ``u``
    first clamped to ``[eps, 1 - eps]`` (:func:`logistic_noise` is this of ``torch.rand``).

    Elementwise, so uniforms drawn a step at a time and turned into noise at once give
    the same noise as :func:`logistic_noise` drawn a step at a time.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> u = torch.rand(5, generator=g)
    >>> torch.equal(logistic_from_uniform(u), logistic_noise((5,), generator=g.manual_seed(0)))
    True
    """
    u = u.clamp(eps, 1.0 - eps)
    return torch.log(u) - torch.log1p(-u)


def hard_sigmoid(x: Tensor, slope: float | Tensor = 1.0) -> Tensor:
    r"""Hard sigmoid of Chung et al.: :math:`\max(0, \min(1, (\alpha x + 1) / 2))`.

    Examples
    --------
    >>> hard_sigmoid(torch.tensor([-2.0, 0.0, 0.5, 2.0]), slope=1.0)
    tensor([0.0000, 0.5000, 0.7500, 1.0000])
    """
    return ((slope * x + 1.0) * 0.5).clamp(0.0, 1.0)


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """``hard + (soft - soft.detach())``: the forward value is exactly ``hard``,
    the gradient is the gradient of ``soft``.

    Examples
    --------
    >>> soft = torch.tensor([0.3, 0.8], requires_grad=True)
    >>> y = straight_through((soft > 0.5).to(soft.dtype), soft)
    >>> y
    tensor([0., 1.], grad_fn=<AddBackward0>)
    >>> y.sum().backward(); soft.grad
    tensor([1., 1.])
    """
    return hard + (soft - soft.detach())


def one_hot_argmax(scores: Tensor, dim: int = -1) -> Tensor:
    """One-hot of the argmax along ``dim``, in the dtype of ``scores``; each row sums to exactly 1.

    Examples
    --------
    >>> one_hot_argmax(torch.tensor([[0.1, 2.0, -1.0]]))
    tensor([[0., 1., 0.]])
    """
    index = scores.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(scores).scatter_(dim, index, 1.0)


def gumbel_sigmoid(
    logits: Tensor,
    temperature: float | Tensor,
    hard: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Gumbel-sigmoid (binary concrete) sample, Eq. 10–11 of HM-AN.

    .. math::
        y = \sigma\!\left(\frac{a + g_1 - g_2}{\tau}\right),\qquad
        z = \mathbb{1}[y > 0.5] = \mathbb{1}[a + g_1 - g_2 > 0]

    with :math:`g_1 - g_2` drawn as one logistic variable. ``hard=True`` returns
    ``z`` in the forward pass and the gradient of ``y`` (straight-through).
    ``P(z = 1) = sigmoid(a)`` exactly, whatever ``tau``. Computed in float32,
    returned in the dtype of ``logits``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> y = gumbel_sigmoid(torch.zeros(3), 0.5, generator=g)
    >>> bool(((y > 0) & (y < 1)).all())
    True
    """
    a = _compute(logits) + logistic_noise(logits.shape, device=logits.device, generator=generator)
    soft = torch.sigmoid(a / temperature)
    if hard:
        soft = straight_through((a > 0).to(a.dtype), soft)
    return soft.to(logits.dtype)


def gumbel_softmax(
    logits: Tensor,
    temperature: float | Tensor,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Gumbel-softmax sample over ``dim``, Eq. 8 and 20 of HM-AN.

    .. math::
        y_i = \operatorname{softmax}_i\!\left(\frac{a_i + g_i}{\tau}\right),\qquad
        z = \operatorname{onehot}(\arg\max_i\, a_i + g_i)

    ``hard=True`` returns the one-hot ``z`` forward (each row sums to exactly 1)
    and the gradient of ``y``. ``P(z_i = 1) = softmax(a)_i`` exactly. Computed in
    float32 (float64 for float64 logits), returned in the dtype of ``logits``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> z = gumbel_softmax(torch.zeros(2, 5), 0.3, hard=True, generator=g)
    >>> z.sum(-1)
    tensor([1., 1.])
    """
    a = _compute(logits) + gumbel_noise(logits.shape, device=logits.device, generator=generator)
    soft = torch.softmax(a / temperature, dim=dim)
    if hard:
        soft = straight_through(one_hot_argmax(a, dim=dim), soft)
    return soft.to(logits.dtype)


def binary_log_prob(logits: Tensor, value: Tensor) -> Tensor:
    r"""``log Bernoulli(value; sigmoid(logits))`` in logit space.

    .. math:: \log p(v) = v\,a - \operatorname{softplus}(a)

    Computed in float64 for float64 logits and in float32 otherwise (float16 and
    bfloat16 lose too much in ``softplus``); returned in the dtype of ``logits``.

    Examples
    --------
    >>> binary_log_prob(torch.tensor([0.0, 100.0]), torch.tensor([1.0, 1.0]))
    tensor([-0.6931, 0.0000])
    """
    a = _compute(logits)
    return (value.to(a.dtype) * a - torch.nn.functional.softplus(a)).to(logits.dtype)


def categorical_log_prob(logits: Tensor, value: Tensor, dim: int = -1) -> Tensor:
    """``log Categorical(value; softmax(logits))`` for a one-hot ``value``; ``dim`` is reduced.

    Computed in float64 for float64 logits and in float32 otherwise; returned in
    the dtype of ``logits``.

    Examples
    --------
    >>> categorical_log_prob(torch.zeros(4), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    tensor(-1.3863)
    """
    log_p = torch.log_softmax(_compute(logits), dim=dim)
    index = value.argmax(dim=dim, keepdim=True)
    return log_p.gather(dim, index).squeeze(dim).to(logits.dtype)
