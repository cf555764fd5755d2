r"""Attention pooling over the regions of a frame: soft, and hard with any categorical estimator.

Every attention takes per-frame region features and a query and pools the
regions into one vector (HM-AN Eq. 12–21)::

    out = att(features, query)        # AttentionOutput(context, weights, log_prob)

=========================  ===============  =================
input / output             one frame        a batch of frames
=========================  ===============  =================
``features``               ``(B, N, D)``    ``(B, T, N, D)``
``query``                  ``(B, Q)``       ``(B, T, Q)``
``context``                ``(B, D)``       ``(B, T, D)``
``weights``                ``(B, N)``       ``(B, T, N)``
``log_prob``               ``(B,)``         ``(B, T)``
=========================  ===============  =================

``N = K × K`` is the number of regions, ``D`` the feature size and ``Q`` the
query size (in HM-AN the query is the first layer's :math:`h^1_{t-1}`). A batch
of frames is pooled in one call (no loop over ``T``) when every frame's query
is known in advance.

The scores :math:`a_i` over the regions come from one of two scorings:

* ``"location"`` (HM-AN Eq. 12, the default): :math:`a = W h + b`, from the
  query alone; :math:`b` is a learnt prior over the locations.
* ``"additive"``: :math:`a_i = v^\top \tanh(W_f X_i + W_h h + b)`, which reads
  the region features too (``feature_size`` must then be given).

:class:`SoftAttention` takes the expectation over the regions;
:class:`HardAttention` picks one region with a categorical estimator — any
module honouring ``est(logits, context=None) -> Sample``, a stochrnn
:class:`~stochrnn.Estimator` or one of your own (``generator=`` is passed only
to estimators that accept it) — of which
:class:`GumbelSoftmaxAttention` and :class:`ReinforceAttention` are the two
named forms. Every attention has ``surrogate_loss(log_prob, reward)``, which
delegates to its estimator (exactly 0 for soft and Gumbel attention), so a
training loop adds it for every part without asking which one it holds.

The attentions run under ``torch.compile`` without graph breaks; a
``generator=`` argument (for reproducible draws) is not traceable by dynamo and
breaks the graph there, so leave it out of compiled code.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from . import functional as F
from .estimators import (
    Baseline,
    EvalMode,
    GumbelSoftmax,
    Reinforce,
    TemperatureLike,
    call_estimator,
    check_context_size,
    estimator_surrogate_loss,
    require_family,
    validate_reward,
)

__all__ = [
    "AdditiveScore",
    "AttentionOutput",
    "GumbelSoftmaxAttention",
    "HardAttention",
    "LocationScore",
    "ReinforceAttention",
    "SoftAttention",
    "doubly_stochastic_penalty",
]

Scoring = Literal["location", "additive"]


class AttentionOutput(NamedTuple):
    """What every attention returns.

    Attributes
    ----------
    context:
        The pooled features, ``(B, D)`` or ``(B, T, D)``.
    weights:
        The weight of each region, ``(B, N)`` or ``(B, T, N)``; each row sums to
        1 and is exactly one-hot for hard attention (kept for visualisation).
    log_prob:
        ``log p(chosen region)``, ``(B,)`` or ``(B, T)``: the input of
        ``surrogate_loss``. Zeros for soft attention, which chooses nothing.
    """

    context: Tensor
    weights: Tensor
    log_prob: Tensor


# --------------------------------------------------------------------------- scorings


def _check_size(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class LocationScore(nn.Module):
    r"""Scores over the regions from the query alone (HM-AN Eq. 12).

    .. math:: a = W h + b, \qquad a \in \mathbb{R}^N

    The features are not read: the attention learns *where* to look from the
    state, and :math:`b` is a prior over the locations.

    Examples
    --------
    >>> score = LocationScore(query_size=16, num_regions=49)
    >>> score(torch.zeros(2, 49, 8), torch.zeros(2, 16)).shape
    torch.Size([2, 49])
    """

    def __init__(self, query_size: int, num_regions: int) -> None:
        super().__init__()
        self.linear = nn.Linear(query_size, num_regions)

    def forward(self, features: Tensor, query: Tensor) -> Tensor:
        """Scores ``(R, N)`` from ``features`` ``(R, N, D)`` (unused) and ``query`` ``(R, Q)``."""
        scores: Tensor = self.linear(query)
        return scores


class AdditiveScore(nn.Module):
    r"""Additive (Bahdanau) scores that read the region features and the query.

    .. math:: a_i = v^\top \tanh(W_f X_i + W_h h + b), \qquad i = 1, \dots, N

    with :math:`W_f \in \mathbb{R}^{A \times D}`,
    :math:`W_h \in \mathbb{R}^{A \times Q}` and :math:`A` = ``attention_size``.

    Examples
    --------
    >>> score = AdditiveScore(query_size=16, feature_size=8, attention_size=32)
    >>> score(torch.zeros(2, 49, 8), torch.zeros(2, 16)).shape
    torch.Size([2, 49])
    """

    def __init__(self, query_size: int, feature_size: int, attention_size: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_size, attention_size, bias=False)
        self.query_proj = nn.Linear(query_size, attention_size)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def forward(self, features: Tensor, query: Tensor) -> Tensor:
        """Scores ``(R, N)`` from ``features`` ``(R, N, D)`` and ``query`` ``(R, Q)``."""
        hidden = torch.tanh(self.feature_proj(features) + self.query_proj(query).unsqueeze(-2))
        scores: Tensor = self.v(hidden).squeeze(-1)
        return scores


# --------------------------------------------------------------------------- base class


class _Attention(nn.Module):
    """Input checks, scoring and the batch-of-frames reshaping shared by every attention."""

    def __init__(
        self,
        query_size: int,
        num_regions: int,
        *,
        scoring: Scoring = "location",
        feature_size: int | None = None,
        attention_size: int | None = None,
    ) -> None:
        super().__init__()
        self.query_size = _check_size("query_size", query_size)
        self.num_regions = _check_size("num_regions", num_regions)
        self.feature_size = (
            None if feature_size is None else _check_size("feature_size", feature_size)
        )
        self.scoring = scoring
        self.score: nn.Module
        if scoring == "location":
            self.score = LocationScore(query_size, num_regions)
        elif scoring == "additive":
            if feature_size is None:
                raise ValueError("scoring='additive' reads the features: pass feature_size=D")
            size = query_size if attention_size is None else attention_size
            self.score = AdditiveScore(
                query_size, feature_size, _check_size("attention_size", size)
            )
        else:
            raise ValueError(f"scoring must be 'location' or 'additive', got {scoring!r}")

    def scores(self, features: Tensor, query: Tensor) -> Tensor:
        """The scores :math:`a` over the regions, ``(B, N)`` or ``(B, T, N)``.

        ``softmax(scores)`` is the soft attention's weights and the distribution
        from which hard attention draws its region.
        """
        self._check_inputs(features, query)
        lead = features.shape[:-2]
        scores: Tensor = self.score(*self._flatten(features, query))
        return scores.reshape(*lead, self.num_regions)

    def forward(
        self, features: Tensor, query: Tensor, *, generator: torch.Generator | None = None
    ) -> AttentionOutput:
        """Pool ``features`` ``(B, [T,] N, D)`` with ``query`` ``(B, [T,] Q)``.

        ``generator`` is the random stream of the region draw (unused by soft
        attention, taken so that every attention is called alike).
        """
        self._check_inputs(features, query)
        lead = features.shape[:-2]
        flat_features, flat_query = self._flatten(features, query)
        weights, log_prob = self._weigh(
            self.score(flat_features, flat_query), flat_query, generator
        )
        weights = weights.to(features.dtype)
        context = (weights.unsqueeze(-2) @ flat_features).squeeze(-2)
        return AttentionOutput(
            context.reshape(*lead, features.shape[-1]),
            weights.reshape(*lead, self.num_regions),
            log_prob.reshape(lead),
        )

    def _weigh(
        self, scores: Tensor, query: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Weights ``(R, N)`` and ``log p(choice)`` ``(R,)`` from scores ``(R, N)``."""
        raise NotImplementedError

    def _flatten(self, features: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """``(R, N, D)`` and ``(R, Q)``, where ``R`` is ``B`` or ``B·T``."""
        rows = features.shape[:-2].numel()
        return (
            features.reshape(rows, self.num_regions, features.shape[-1]),
            query.reshape(rows, self.query_size),
        )

    def _check_inputs(self, features: Tensor, query: Tensor) -> None:
        name = type(self).__name__
        for arg, value in (("features", features), ("query", query)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")
        f_shape, q_shape = tuple(features.shape), tuple(query.shape)
        if features.dim() not in (3, 4):
            raise ValueError(
                f"{name} expected features of shape (B, N, D) or (B, T, N, D), got {f_shape}"
            )
        if query.dim() != features.dim() - 1 or q_shape[:-1] != f_shape[:-2]:
            lead = "(B, T, Q)" if features.dim() == 4 else "(B, Q)"
            raise ValueError(
                f"{name}: features of shape {f_shape} need a query of shape {lead} "
                f"with the same leading sizes {f_shape[:-2]}, got {q_shape}"
            )
        if f_shape[-2] != self.num_regions:
            raise ValueError(
                f"{name} was built for {self.num_regions} regions, got features of shape "
                f"{f_shape} with {f_shape[-2]} regions"
            )
        if q_shape[-1] != self.query_size:
            raise ValueError(
                f"{name} expected a query of size {self.query_size}, got shape {q_shape}"
            )
        if self.feature_size is not None and f_shape[-1] != self.feature_size:
            raise ValueError(
                f"{name} expected features of size {self.feature_size}, got shape {f_shape}"
            )

    def extra_repr(self) -> str:
        return (
            f"query_size={self.query_size}, num_regions={self.num_regions}, "
            f"scoring={self.scoring!r}, feature_size={self.feature_size}"
        )


# --------------------------------------------------------------------------- soft


class SoftAttention(_Attention):
    r"""Deterministic soft attention (HM-AN Eq. 12–13, after Xu et al. and Sharma et al.).

    .. math::
        l_i = \operatorname{softmax}(a)_i, \qquad x = \sum_{i=1}^{N} l_i X_i

    with :math:`a` the scores (see :class:`LocationScore`, :class:`AdditiveScore`).
    ``weights`` is :math:`l`; ``log_prob`` is zeros (nothing is drawn) and
    ``surrogate_loss`` is exactly 0. Pair it with
    :func:`doubly_stochastic_penalty` to keep attention from fixing on one region.

    Parameters
    ----------
    query_size:
        Size ``Q`` of the query (the state that decides where to look).
    num_regions:
        Number of regions ``N = K × K`` per frame.
    scoring:
        ``"location"`` (Eq. 12, from the query alone) or ``"additive"``.
    feature_size:
        Size ``D`` of each region's features; required for ``"additive"``,
        checked against the input whenever it is given.
    attention_size:
        Hidden size of the additive scoring (``None``: ``query_size``).

    Examples
    --------
    >>> att = SoftAttention(query_size=16, num_regions=49)
    >>> out = att(torch.randn(2, 49, 8), torch.randn(2, 16))
    >>> out.context.shape, out.log_prob
    (torch.Size([2, 8]), tensor([0., 0.]))
    >>> torch.allclose(out.weights.sum(-1), torch.ones(2))
    True

    A batch of frames at once:

    >>> att(torch.randn(2, 30, 49, 8), torch.randn(2, 30, 16)).context.shape
    torch.Size([2, 30, 8])
    """

    def _weigh(
        self, scores: Tensor, query: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        weights = torch.softmax(scores.to(F.compute_dtype(scores.dtype)), dim=-1)
        return weights, scores.new_zeros(scores.shape[:-1])

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """Exactly 0: soft attention draws nothing, all its gradient is pathwise.

        ``reward`` is still checked (:func:`~stochrnn.estimators.validate_reward`),
        so every attention refuses the same rewards.
        """
        validate_reward(log_prob, reward, f"{type(self).__name__}.surrogate_loss")
        return torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)


def doubly_stochastic_penalty(
    weights: Tensor,
    coefficient: float = 1.0,
    *,
    mask: Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    r"""The doubly stochastic attention penalty of Xu et al. and Sharma et al.

    .. math:: P = \lambda \sum_{i=1}^{N} \Bigl(1 - \sum_{t=1}^{T} l_{t,i}\Bigr)^2

    per sequence, for soft-attention weights :math:`l` of shape ``(B, T, N)``.
    Since :math:`\sum_i \sum_t l_{t,i} = T`, it is smallest when every region
    gets the same total attention :math:`T/N` over the sequence: the model is
    pushed to look at every region at some point rather than fix on one.

    Parameters
    ----------
    weights:
        Attention weights ``(B, T, N)``, e.g. ``SoftAttention(...)(...).weights``.
    coefficient:
        :math:`\lambda`.
    mask:
        Optional ``(B, T)``, 1 (or True) for real steps and 0 for padding;
        padded steps add no attention.
    reduction:
        ``"mean"`` (default): the mean of :math:`P` over the batch, to add to a
        loss averaged over the batch; ``"sum"``: the sum over the batch;
        ``"none"``: the ``(B,)`` penalties.

    Examples
    --------
    >>> uniform = torch.full((2, 4, 4), 0.25)      # T = N = 4, each region 1/4 per step
    >>> doubly_stochastic_penalty(uniform)
    tensor(0.)
    >>> fixed = torch.zeros(2, 4, 4); fixed[..., 0] = 1.0    # always region 0
    >>> doubly_stochastic_penalty(fixed, coefficient=0.5, reduction="none")
    tensor([6., 6.])
    """
    if weights.dim() != 3:
        raise ValueError(f"weights must have shape (B, T, N), got {tuple(weights.shape)}")
    if mask is not None:
        if mask.shape != weights.shape[:2]:
            raise ValueError(
                f"mask must have shape (B, T) = {tuple(weights.shape[:2])}, got {tuple(mask.shape)}"
            )
        weights = weights * mask.unsqueeze(-1).to(weights.dtype)
    penalty = coefficient * (1.0 - weights.sum(dim=1)).square().sum(dim=-1)
    if reduction == "mean":
        return penalty.mean()
    if reduction == "sum":
        return penalty.sum()
    if reduction == "none":
        return penalty
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------- hard


class HardAttention(_Attention):
    r"""Stochastic hard attention: one region drawn by a categorical estimator.

    .. math::
        z \sim \operatorname{Categorical}(\operatorname{softmax}(a)), \qquad
        x = \sum_{i=1}^{N} z_i X_i

    With the one-hot :math:`z` the context is exactly the chosen region's
    features in the forward pass; the gradient reaches the scores the way the
    estimator says (through the relaxation for Gumbel-softmax, through
    ``surrogate_loss`` for REINFORCE). ``weights`` is :math:`z` (a relaxed
    sample if the estimator was built with ``hard=False``); ``log_prob`` is
    :math:`\log \operatorname{softmax}(a)_k` of the chosen region :math:`k`.
    The estimator gets the query as its ``context``, so an
    :class:`~stochrnn.AdaptiveTemperature` reads the query (Eq. 21).

    Parameters
    ----------
    query_size, num_regions, scoring, feature_size, attention_size:
        As for :class:`SoftAttention`.
    estimator:
        Any module honouring ``est(logits, context=None) -> Sample`` over the
        last dim (a categorical estimator): a stochrnn
        :class:`~stochrnn.Estimator` or a module of your own, which need not
        take ``generator=`` (it is passed only to estimators that accept it) nor
        declare a ``family``. ``None``: a fresh ``GumbelSoftmax(0.3)``. A module
        that declares another family (``family == "binary"``) raises
        ``TypeError``; an adaptive temperature inside it whose
        ``context_size`` is not ``query_size`` raises ``ValueError``; what the
        estimator returns is checked at each call (the value of the scores'
        shape, ``log_prob`` of shape ``(rows,)``; see
        :func:`~stochrnn.estimators.call_estimator`).

    Examples
    --------
    >>> from stochrnn import Reinforce
    >>> att = HardAttention(query_size=16, num_regions=9, estimator=Reinforce())
    >>> features = torch.randn(2, 9, 4)
    >>> out = att(features, torch.randn(2, 16), generator=torch.Generator().manual_seed(0))
    >>> out.weights.sum(-1), out.log_prob.shape
    (tensor([1., 1.]), torch.Size([2]))
    >>> chosen = out.weights.argmax(-1)
    >>> torch.equal(out.context, features[torch.arange(2), chosen])
    True
    """

    def __init__(
        self,
        query_size: int,
        num_regions: int,
        estimator: nn.Module | None = None,
        *,
        scoring: Scoring = "location",
        feature_size: int | None = None,
        attention_size: int | None = None,
    ) -> None:
        super().__init__(
            query_size,
            num_regions,
            scoring=scoring,
            feature_size=feature_size,
            attention_size=attention_size,
        )
        estimator = GumbelSoftmax(0.3) if estimator is None else estimator
        name = type(self).__name__
        require_family(estimator, "categorical", name)
        check_context_size(estimator, query_size, name, "query")
        self.estimator = estimator

    def _weigh(
        self, scores: Tensor, query: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        sample = call_estimator(
            self.estimator,
            scores,
            query,
            generator=generator,
            family="categorical",
            where=f"{type(self).__name__}'s estimator",
        )
        return sample.value, sample.log_prob

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """The estimator's surrogate loss for the region choice (0 for Gumbel-softmax).

        ``log_prob`` is this attention's ``(B,)`` or ``(B, T)`` output and
        ``reward`` is 0-dim (one for everything), ``(B,)`` (one reward per
        sequence) or of the shape of ``log_prob``; other shapes raise
        ``ValueError`` (:func:`~stochrnn.estimators.validate_reward`). An
        estimator without a ``surrogate_loss`` of its own is taken as pathwise
        (0); see :meth:`stochrnn.Reinforce.surrogate_loss`.
        """
        return estimator_surrogate_loss(
            self.estimator, log_prob, reward, f"{type(self).__name__}.surrogate_loss"
        )


class GumbelSoftmaxAttention(HardAttention):
    r"""Hard attention trained through the Gumbel-softmax relaxation (HM-AN Eq. 20–21).

    .. math::
        y = \operatorname{softmax}\!\left(\frac{a + g}{\tau}\right), \qquad
        z = \operatorname{onehot}(\arg\max_i\, a_i + g_i)

    with Gumbel noise :math:`g`: the forward pass uses the one-hot :math:`z`, the
    backward pass the gradient of :math:`y`. ``temperature`` is a float
    (constant :math:`\tau`, 0.3 in the paper) or a :class:`~stochrnn.Temperature`,
    e.g. ``AdaptiveTemperature(query_size)`` for Eq. 21,
    :math:`\tau = 1 / (\operatorname{softplus}(W h + b) + 1)`, read from the
    query. ``surrogate_loss`` is exactly 0. ``eval_mode`` is the estimator's
    (:class:`~stochrnn.Estimator`): ``"mode"`` attends to the most likely region
    in evaluation mode instead of drawing one.

    Examples
    --------
    >>> from stochrnn import AdaptiveTemperature
    >>> att = GumbelSoftmaxAttention(16, 49, temperature=AdaptiveTemperature(16))
    >>> out = att(torch.randn(2, 49, 8), torch.randn(2, 16))
    >>> out.weights.detach().sum(-1), out.weights.detach().max(-1).values
    (tensor([1., 1.]), tensor([1., 1.]))
    """

    def __init__(
        self,
        query_size: int,
        num_regions: int,
        temperature: TemperatureLike = 0.3,
        *,
        scoring: Scoring = "location",
        feature_size: int | None = None,
        attention_size: int | None = None,
        eval_mode: EvalMode = "sample",
    ) -> None:
        super().__init__(
            query_size,
            num_regions,
            GumbelSoftmax(temperature, eval_mode=eval_mode),
            scoring=scoring,
            feature_size=feature_size,
            attention_size=attention_size,
        )


class ReinforceAttention(HardAttention):
    r"""Hard attention trained by REINFORCE with a baseline (HM-AN Eq. 14–19).

    The region is drawn from :math:`\operatorname{Categorical}(\operatorname{softmax}(a))`
    and no gradient flows through the choice; the scores learn from
    ``surrogate_loss(out.log_prob, reward)`` (Eq. 19),

    .. math:: \mathcal{L}_{sur} = -\frac{\lambda}{B} \sum (r - b) \log p(l),

    whose gradient is an unbiased estimate of :math:`-\lambda \nabla \mathbb{E}[r]`.
    In HM-AN the reward is :math:`r = \log p(y \mid l, a)` and the baseline
    :math:`b` a moving average of it (Eq. 18); ``baseline=None`` makes a fresh
    ``MovingAverageBaseline(0.9)`` and ``weight`` is :math:`\lambda`.
    ``eval_mode`` is the estimator's (:class:`~stochrnn.Estimator`).

    Examples
    --------
    >>> att = ReinforceAttention(16, 9, weight=0.5)
    >>> out = att(torch.randn(4, 9, 8), torch.randn(4, 16))
    >>> reward = torch.randn(4)                     # e.g. log p(y | l, a), detached
    >>> att.surrogate_loss(out.log_prob, reward).backward()
    >>> att.score.linear.weight.grad.shape
    torch.Size([9, 16])
    """

    def __init__(
        self,
        query_size: int,
        num_regions: int,
        baseline: Baseline | None = None,
        weight: float = 1.0,
        *,
        scoring: Scoring = "location",
        feature_size: int | None = None,
        attention_size: int | None = None,
        eval_mode: EvalMode = "sample",
    ) -> None:
        super().__init__(
            query_size,
            num_regions,
            Reinforce(baseline=baseline, weight=weight, categorical=True, eval_mode=eval_mode),
            scoring=scoring,
            feature_size=feature_size,
            attention_size=attention_size,
        )
