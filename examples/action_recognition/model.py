r"""HM-AN and its LSTM baseline, built from stochrnn's parts, and their training loss.

HM-AN (Yan et al., Section III.B–C) at every frame :math:`t`:

.. math::
    x_t = \operatorname{attend}(X_t,\ h^1_{t-1}), \qquad
    h^{1..3}_t = \operatorname{HMRNN}(x_t, \text{state}_{t-1}), \qquad
    \hat y_t = \operatorname{softmax}(W [h^1_t; h^2_t; h^3_t] + b)

where :math:`X_t` is the ``(K², D)`` map of region features and the attention
is soft (Eq. 12–13) or hard (REINFORCE, Eq. 14–19; Gumbel-softmax, Eq. 20–21).
The baseline (Sharma et al.) is a stack of LSTMs with soft attention queried by
the top layer, started from the mean feature of the clip.

The loss (:func:`loss_terms`) is Eq. 22, the cross-entropy summed over the
clip's real frames, plus every stochastic part's ``surrogate_loss`` with the
reward :math:`r = \log p(y \mid l, a)` -- exactly zero for soft and Gumbel
parts, the REINFORCE term of Eq. 19 otherwise; the loop never asks which --
plus the doubly stochastic attention penalty where the config sets one.

Examples
--------
>>> import torch
>>> from .config import parse_config, example_config
>>> model = build_model(parse_config(example_config("soft")), num_classes=5, feature_shape=(9, 4))
>>> out = model(torch.randn(2, 6, 9, 4), torch.ones(2, 6, dtype=torch.bool))
>>> out.logits.shape, out.attention.shape, out.boundaries.shape
(torch.Size([2, 6, 5]), torch.Size([2, 6, 9]), torch.Size([2, 6, 3]))
>>> loss_terms(model, out, torch.tensor([1, 3]), torch.ones(2, 6, dtype=torch.bool)).total.shape
torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stochrnn import (
    HMRNN,
    AdaptiveTemperature,
    BoundaryRatePrior,
    GumbelSigmoid,
    GumbelSoftmaxAttention,
    HMRNNOutput,
    HMRNNState,
    MovingAverageBaseline,
    ReinforceAttention,
    SoftAttention,
)
from stochrnn.attention import doubly_stochastic_penalty
from stochrnn.estimators import Estimator, TemperatureLike
from stochrnn.hmrnn.cell import DEFAULT_INIT_GAIN

from .config import Config

__all__ = [
    "HMAN",
    "ActionModel",
    "AlwaysBoundary",
    "LossTerms",
    "ModelOutput",
    "SoftAttentionLSTM",
    "StackedLSTMHMAN",
    "StochasticPart",
    "build_attention",
    "build_model",
    "loss_terms",
]

Attention = SoftAttention | GumbelSoftmaxAttention | ReinforceAttention


class StochasticPart(Protocol):
    """A module that draws discrete choices: ``HMRNN``, the attentions."""

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """The loss to add for its choices given their ``log_prob`` and the ``reward``."""
        ...


class ModelOutput(NamedTuple):
    """What a model returns for a batch of clips ``(B, T, N, D)``.

    Attributes
    ----------
    logits:
        ``(B, T, C)`` class scores at every step.
    attention:
        ``(B, T, N)`` attention weights over the regions (one-hot for hard attention).
    boundaries:
        ``(B, T, L)`` each layer's boundary in {0, 1}; ``None`` for the LSTM baseline.
    attention_log_prob:
        ``(B,)`` log-probability of the attention's choices over the real steps.
    boundary_log_prob:
        ``(B,)`` log-probability of the boundary decisions (zeros for the baseline).
    rnn:
        HM-AN: the whole clip's :class:`~stochrnn.HMRNNOutput`, assembled from the
        steps (its ``boundary_logits`` are what the boundary-rate prior reads);
        ``None`` for the baseline.
    """

    logits: Tensor
    attention: Tensor
    boundaries: Tensor | None
    attention_log_prob: Tensor
    boundary_log_prob: Tensor
    rnn: HMRNNOutput | None = None


class LossTerms(NamedTuple):
    """The training loss and its parts, each a scalar.

    ``total = cross_entropy + surrogate + penalty + boundary_prior``;
    ``cross_entropy`` is Eq. 22 (summed over steps, averaged over the batch),
    ``surrogate`` the sum of the parts' surrogate losses (0 without a
    score-function estimator), ``penalty`` the doubly stochastic attention
    penalty (0 without one), ``boundary_prior`` the boundary-rate prior (0
    without one).
    """

    total: Tensor
    cross_entropy: Tensor
    surrogate: Tensor
    penalty: Tensor
    boundary_prior: Tensor


class ActionModel(nn.Module):
    """What the training loop needs of a model: a forward and its stochastic parts.

    Subclasses set :attr:`attention` and :attr:`penalty` and implement
    :meth:`forward` and :meth:`stochastic_parts`.
    """

    attention: Attention
    #: :math:`\\lambda` of the doubly stochastic penalty (0: none).
    penalty: float

    def forward(self, features: Tensor, mask: Tensor) -> ModelOutput:  # pragma: no cover
        """``features`` ``(B, T, N, D)`` and ``mask`` ``(B, T)`` (True at real frames)."""
        raise NotImplementedError

    def stochastic_parts(self, out: ModelOutput) -> list[tuple[StochasticPart, Tensor]]:
        """Every part with a ``surrogate_loss``, paired with its ``(B,)`` log-probability."""
        raise NotImplementedError  # pragma: no cover

    def boundary_prior_loss(self, out: ModelOutput, mask: Tensor) -> Tensor | None:
        """The boundary-rate prior of ``out`` (``None`` when the model has none)."""
        return None


class AlwaysBoundary(Estimator):
    """A boundary that is always 1: the control "every boundary forced to 1".

    With it every layer of the :class:`~stochrnn.HMRNN` FLUSHes at every step
    after the first (its own boundary at ``t-1`` is 1) and hands its state up
    at every step (the boundary below is 1): all top-down and bottom-up terms
    are open, and the cell memory lasts one step (the recurrent ``h`` carries
    the history). Deterministic: ``log_prob`` is 0 and the logits get no gradient.

    Examples
    --------
    >>> est = AlwaysBoundary()
    >>> est(torch.tensor([-3.0, 0.0, 2.0]))
    Sample(value=tensor([1., 1., 1.]), log_prob=tensor([0., 0., 0.]))
    """

    family = "binary"

    def sample(
        self,
        logits: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return torch.ones_like(logits)

    def log_prob(self, logits: Tensor, value: Tensor) -> Tensor:
        return torch.zeros_like(logits)


def build_attention(config: Config, query_size: int, feature_shape: Sequence[int]) -> Attention:
    """The attention of ``config.variant``, querying with a state of size ``query_size``.

    ``feature_shape`` is ``(N, D)``: regions per frame and features per region.
    """
    regions, size = int(feature_shape[0]), int(feature_shape[1])
    att = config.attention
    if config.variant in ("lstm_soft", "soft"):
        return SoftAttention(query_size, regions, scoring=att.scoring, feature_size=size)
    if config.variant == "reinforce_hard":
        assert att.baseline_decay is not None and att.reinforce_weight is not None
        return ReinforceAttention(
            query_size,
            regions,
            MovingAverageBaseline(att.baseline_decay),
            att.reinforce_weight,
            scoring=att.scoring,
            feature_size=size,
        )
    temperature: TemperatureLike
    if config.variant == "gumbel_hard":
        assert att.temperature is not None
        temperature = att.temperature
    else:
        temperature = AdaptiveTemperature(query_size)
    return GumbelSoftmaxAttention(
        query_size, regions, temperature, scoring=att.scoring, feature_size=size
    )


class HMAN(ActionModel):
    r"""The Hierarchical Multi-scale Attention Network (Yan et al., Fig. 3).

    Parameters
    ----------
    attention:
        Pools a frame's regions with the query :math:`h^1_{t-1}` (its
        ``query_size`` must be the first layer's hidden size).
    rnn:
        The :class:`~stochrnn.HMRNN`, ``input_size`` = the feature size ``D``.
    num_classes:
        ``C``.
    dropout:
        On the classifier's input :math:`[h^1; h^2; h^3]`.
    penalty:
        :math:`\lambda` of the doubly stochastic penalty (0: none).

    The boundary-rate prior, if any, is the HM-RNN's own (``rnn.boundary_prior``);
    :func:`loss_terms` adds ``rnn.prior_loss(out, mask)``.
    """

    def __init__(
        self,
        attention: Attention,
        rnn: HMRNN,
        num_classes: int,
        dropout: float = 0.0,
        penalty: float = 0.0,
    ) -> None:
        super().__init__()
        if attention.query_size != rnn.hidden_sizes[0]:
            raise ValueError(
                f"the attention's query is h^1 of size {rnn.hidden_sizes[0]}, "
                f"but it was built with query_size={attention.query_size}"
            )
        self.attention = attention
        self.rnn = rnn
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(rnn.output_size, num_classes)
        self.penalty = penalty

    def forward(self, features: Tensor, mask: Tensor) -> ModelOutput:
        batch, steps = features.shape[:2]
        state = self.rnn.initial_state(batch, features.device, features.dtype)
        steps_out: list[HMRNNOutput] = []
        weights = []
        attention_log_prob = features.new_zeros(batch)
        for t in range(steps):
            pooled = self.attention(features[:, t], state.h[0])
            step = self.rnn(pooled.context.unsqueeze(1), state, mask=mask[:, t : t + 1])
            state = step.state
            steps_out.append(step)
            weights.append(pooled.weights)
            attention_log_prob = attention_log_prob + pooled.log_prob * mask[:, t]
        rnn = _concatenate_steps(steps_out, state)
        logits = self.classifier(self.dropout(rnn.output))
        return ModelOutput(
            logits,
            torch.stack(weights, dim=1),
            rnn.boundaries,
            attention_log_prob,
            rnn.log_prob,
            rnn,
        )

    def stochastic_parts(self, out: ModelOutput) -> list[tuple[StochasticPart, Tensor]]:
        return [(self.attention, out.attention_log_prob), (self.rnn, out.boundary_log_prob)]

    def boundary_prior_loss(self, out: ModelOutput, mask: Tensor) -> Tensor | None:
        if self.rnn.boundary_prior is None or out.rnn is None:
            return None
        return self.rnn.prior_loss(out.rnn, mask)


def _concatenate_steps(steps: Sequence[HMRNNOutput], state: HMRNNState) -> HMRNNOutput:
    """One :class:`~stochrnn.HMRNNOutput` of the whole clip from its one-step outputs."""
    layer_log_prob = torch.stack([s.layer_log_prob for s in steps]).sum(0)
    return HMRNNOutput(
        output=torch.cat([s.output for s in steps], dim=1),
        hidden=tuple(torch.cat(h, dim=1) for h in zip(*(s.hidden for s in steps), strict=True)),
        boundaries=torch.cat([s.boundaries for s in steps], dim=1),
        log_prob=layer_log_prob.sum(-1),
        state=state,
        layer_log_prob=layer_log_prob,
        boundary_logits=torch.cat([s.boundary_logits for s in steps], dim=1),
    )


class _AttendedLSTMStack(ActionModel):
    """:class:`torch.nn.LSTMCell` layers whose first reads each frame's regions pooled
    by an attention queried with one layer's :math:`h_{t-1}`.

    Subclasses set :attr:`query_layer`, build ``dropout`` and ``classifier`` (after
    any modules of their own, so that a seed gives each model the same weights as
    before), and choose the initial state and what the classifier reads at a step.
    Padded frames change no state.
    """

    query_layer: int
    dropout: nn.Module
    classifier: nn.Module
    penalty: float

    def __init__(
        self,
        attention: Attention,
        feature_size: int,
        hidden_size: int,
        num_layers: int,
        query_name: str,
    ) -> None:
        super().__init__()
        if attention.query_size != hidden_size:
            raise ValueError(
                f"the attention's query is {query_name} of size {hidden_size}, "
                f"but it was built with query_size={attention.query_size}"
            )
        self.attention = attention
        self.cells = nn.ModuleList(
            nn.LSTMCell(feature_size if l == 0 else hidden_size, hidden_size)
            for l in range(num_layers)
        )

    def _initial_state(self, features: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        raise NotImplementedError  # pragma: no cover

    def _step_output(self, h: list[Tensor], real: Tensor) -> Tensor:
        """What the classifier reads at a step, from every layer's new ``h``."""
        raise NotImplementedError  # pragma: no cover

    def forward(self, features: Tensor, mask: Tensor) -> ModelOutput:
        batch, steps = features.shape[:2]
        h, c = self._initial_state(features, mask)
        outputs, weights = [], []
        attention_log_prob = features.new_zeros(batch)
        for t in range(steps):
            pooled = self.attention(features[:, t], h[self.query_layer])
            real = mask[:, t : t + 1]
            x = pooled.context
            for l, cell in enumerate(self.cells):
                h_new, c_new = cell(x, (h[l], c[l]))
                h[l] = torch.where(real, h_new, h[l])
                c[l] = torch.where(real, c_new, c[l])
                x = h[l]
            outputs.append(self._step_output(h, real))
            weights.append(pooled.weights)
            attention_log_prob = attention_log_prob + pooled.log_prob * mask[:, t]
        logits = self.classifier(self.dropout(torch.stack(outputs, dim=1)))
        return ModelOutput(
            logits, torch.stack(weights, dim=1), None, attention_log_prob, features.new_zeros(batch)
        )

    def stochastic_parts(self, out: ModelOutput) -> list[tuple[StochasticPart, Tensor]]:
        return [(self.attention, out.attention_log_prob)]


class StackedLSTMHMAN(_AttendedLSTMStack):
    r"""The control "every layer UPDATEs": HM-AN's wiring with plain LSTM layers.

    An HM-LSTM layer whose own boundary at :math:`t-1` is 0 and whose layer
    below fired at :math:`t` UPDATEs, :math:`c = f \odot c_{prev} + i \odot g`,
    with the top-down term off (it is gated by the layer's own boundary). No
    single boundary value gives every layer that operation at every step (a 1
    FLUSHes the layer, a 0 cuts the one above off), so this control is built
    from :class:`torch.nn.LSTMCell` layers: layer :math:`l` reads
    :math:`h^{l-1}_t` (the attended frame for layer 1) at every step. The rest
    is HM-AN's: attention queried by :math:`h^1_{t-1}`, a zero initial state,
    the classifier over :math:`[h^1; h^2; h^3]` at every frame.

    Parameters
    ----------
    attention:
        Pools a frame's regions with the query :math:`h^1_{t-1}`.
    feature_size, hidden_size, num_layers, num_classes:
        ``D``, the layers' size and number, ``C``.
    dropout:
        On the classifier's input.
    penalty:
        :math:`\lambda` of the doubly stochastic penalty (0: none).
    init_gain:
        The cells' weights are drawn uniform in :math:`\pm g/\sqrt{H}` (their
        biases in :class:`torch.nn.LSTMCell`'s :math:`\pm 1/\sqrt{H}`), as
        :class:`stochrnn.HMRNN` draws its layers' with the same ``init_gain``, so
        that this control differs from HM-AN in its boundaries only; 1 leaves
        :class:`torch.nn.LSTMCell`'s range.
    """

    query_layer = 0

    def __init__(
        self,
        attention: Attention,
        feature_size: int,
        hidden_size: int,
        num_layers: int,
        num_classes: int,
        dropout: float = 0.0,
        penalty: float = 0.0,
        init_gain: float = DEFAULT_INIT_GAIN,
    ) -> None:
        if not (isinstance(init_gain, (int, float)) and 0 < init_gain < math.inf):
            raise ValueError(f"init_gain must be a finite number > 0, got {init_gain!r}")
        super().__init__(attention, feature_size, hidden_size, num_layers, "h^1")
        with torch.no_grad():  # nn.LSTMCell's draws, in a range init_gain times as wide
            for cell in self.cells:
                cell.weight_ih.mul_(init_gain)
                cell.weight_hh.mul_(init_gain)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_layers * hidden_size, num_classes)
        self.penalty = penalty

    def _initial_state(self, features: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        batch, size = features.shape[0], self.cells[0].hidden_size
        h = [features.new_zeros(batch, size) for _ in self.cells]
        c = [features.new_zeros(batch, size) for _ in self.cells]
        return h, c

    def _step_output(self, h: list[Tensor], real: Tensor) -> Tensor:
        return torch.where(real, torch.cat(h, dim=-1), 0.0)


class SoftAttentionLSTM(_AttendedLSTMStack):
    r"""The baseline of Sharma et al.: stacked LSTMs with soft attention.

    .. math::
        l_t = \operatorname{softmax}(W h^L_{t-1}), \quad x_t = \sum_i l_{t,i} X_{t,i}, \quad
        \hat y_t = \operatorname{softmax}(W_y h^L_t)

    with :math:`h^L` the top layer, and each layer's initial :math:`h_0, c_0`
    given by :math:`\tanh(W_{init} \bar X + b)` of the mean feature
    :math:`\bar X` over the clip's real frames and all regions.

    Parameters
    ----------
    attention:
        A :class:`~stochrnn.SoftAttention` with ``query_size`` = ``hidden_size``.
    feature_size:
        ``D``.
    hidden_size, num_layers:
        Of the LSTM stack.
    num_classes:
        ``C``.
    dropout:
        On the classifier's input.
    penalty:
        :math:`\lambda` of the doubly stochastic penalty (Sharma et al. use 1).
    """

    query_layer = -1

    def __init__(
        self,
        attention: Attention,
        feature_size: int,
        hidden_size: int,
        num_layers: int,
        num_classes: int,
        dropout: float = 0.0,
        penalty: float = 0.0,
    ) -> None:
        super().__init__(attention, feature_size, hidden_size, num_layers, "the top layer")
        self.init_h = nn.Linear(feature_size, num_layers * hidden_size)
        self.init_c = nn.Linear(feature_size, num_layers * hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes)
        self.penalty = penalty

    def _initial_state(self, features: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        frames = mask.to(features.dtype)
        per_frame = features.mean(dim=2)  # (B, T, D)
        mean = (per_frame * frames.unsqueeze(-1)).sum(1) / frames.sum(1, keepdim=True).clamp(min=1)
        layers = len(self.cells)
        h = torch.tanh(self.init_h(mean)).chunk(layers, dim=-1)
        c = torch.tanh(self.init_c(mean)).chunk(layers, dim=-1)
        return list(h), list(c)

    def _step_output(self, h: list[Tensor], real: Tensor) -> Tensor:
        return h[-1]


def build_model(config: Config, num_classes: int, feature_shape: Sequence[int]) -> ActionModel:
    """The model of ``config.variant`` for ``num_classes`` and frames of shape ``(N, D)``.

    The estimators' own check of their logits is switched off: it would raise in
    the middle of the forward pass, whereas the training loop stops on a
    non-finite loss or gradient itself, keeping the last good checkpoint.
    """
    model = _build(config, num_classes, feature_shape)
    for module in model.modules():
        if isinstance(module, Estimator):
            module.validate_args = False
    return model


def _build(config: Config, num_classes: int, feature_shape: Sequence[int]) -> ActionModel:
    model = config.model
    penalty = config.attention.penalty or 0.0
    attention = build_attention(config, model.hidden_size, feature_shape)
    if not config.is_hmrnn:
        return SoftAttentionLSTM(
            attention,
            int(feature_shape[1]),
            model.hidden_size,
            model.num_layers,
            num_classes,
            model.dropout,
            penalty,
        )
    assert model.layer_norm is not None and model.init_gain is not None
    if model.boundary == "update":
        return StackedLSTMHMAN(
            attention,
            int(feature_shape[1]),
            model.hidden_size,
            model.num_layers,
            num_classes,
            model.dropout,
            penalty,
            model.init_gain,
        )
    boundaries: list[Estimator]
    prior = None
    if model.boundary == "always":
        boundaries = [AlwaysBoundary() for _ in range(model.num_layers)]
    else:
        assert model.boundary_temperature is not None
        boundaries = [GumbelSigmoid(model.boundary_temperature) for _ in range(model.num_layers)]
        if config.has_prior:
            assert model.boundary_prior_target is not None
            assert model.boundary_prior_weight is not None
            prior = BoundaryRatePrior(
                list(model.boundary_prior_target), weight=model.boundary_prior_weight
            )
    rnn = HMRNN(
        int(feature_shape[1]),
        model.hidden_size,
        model.num_layers,
        boundary=boundaries,
        layer_norm=model.layer_norm,
        init_gain=model.init_gain,
        boundary_prior=prior,  # explicit: None when the config has none (not the default)
    )
    return HMAN(attention, rnn, num_classes, model.dropout, penalty)


def loss_terms(model: ActionModel, out: ModelOutput, labels: Tensor, mask: Tensor) -> LossTerms:
    r"""Eq. 22 plus the surrogate losses (Eq. 19), the attention penalty and the boundary prior.

    .. math::
        L = -\frac{1}{B}\sum_b \sum_{t \in \text{real}} \log \hat y_{b,t}[y_b]
            + \sum_{\text{parts}} \text{surrogate}(\log p_{part}, r)
            + \lambda \frac{1}{B}\sum_b \sum_i \Bigl(1 - \sum_t l_{b,t,i}\Bigr)^2
            + w \sum_l \mathrm{KL}\bigl(\mathrm{Bern}(\pi_l) \,\|\, \mathrm{Bern}(\bar p_l)\bigr)

    The last term is the boundary-rate prior (:class:`~stochrnn.BoundaryRatePrior`,
    where the config sets one): :math:`\bar p_l` is layer :math:`l`'s mean boundary
    probability over the batch's real frames, :math:`\pi_l` its target rate.

    The reward is :math:`r_b = \frac{1}{|T_b|}\sum_{t} \log \hat y_{b,t}[y_b]`,
    the log-likelihood of the label per real step (a mean, so that clips of
    different lengths get comparable rewards), detached; each part's
    ``surrogate_loss`` is zero unless its estimator is score-function.

    ``model`` is the bare model (not a DistributedDataParallel wrapper).
    """
    steps = mask.to(torch.float32)
    log_likelihood = -F.cross_entropy(
        out.logits.float().transpose(1, 2),
        labels.unsqueeze(1).expand(-1, out.logits.shape[1]),
        reduction="none",
    )  # (B, T)
    per_clip = (log_likelihood * steps).sum(dim=1)
    cross_entropy = -per_clip.mean()
    reward = (per_clip / steps.sum(dim=1).clamp(min=1.0)).detach()
    parts = model.stochastic_parts(out)
    surrogate = torch.stack([part.surrogate_loss(lp.float(), reward) for part, lp in parts]).sum()
    penalty = (
        doubly_stochastic_penalty(out.attention.float(), model.penalty, mask=mask)
        if model.penalty > 0
        else cross_entropy.new_zeros(())
    )
    prior = model.boundary_prior_loss(out, mask)
    prior = cross_entropy.new_zeros(()) if prior is None else prior.float()
    return LossTerms(
        cross_entropy + surrogate + penalty + prior, cross_entropy, surrogate, penalty, prior
    )
