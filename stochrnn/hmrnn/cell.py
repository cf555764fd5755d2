"""One HM-LSTM layer for one step (:class:`HMLSTMCell`) and the stack's state and output types.

The equations are in the :mod:`stochrnn.hmrnn` package docstring. The cell is
written with ordinary autograd operations: it is the reference the fused
sequence (:mod:`stochrnn.hmrnn.fused`) is tested against, and the path every
configuration the fused step does not cover runs through.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..estimators import (
    Estimator,
    GumbelSigmoid,
    _check_positive,
    call_estimator,
    check_context_size,
    require_family,
)

__all__ = [
    "DEFAULT_BOUNDARY_TEMPERATURE",
    "DEFAULT_INIT_GAIN",
    "HMLSTMCell",
    "HMLSTMCellOutput",
    "HMRNNOutput",
    "HMRNNState",
]

#: Temperature of the default boundary estimator, ``GumbelSigmoid(0.3)`` (HM-AN).
DEFAULT_BOUNDARY_TEMPERATURE = 0.3
#: Gain :math:`g` of the weights' initial range :math:`\pm g/\sqrt{H}` (:class:`HMLSTMCell`):
#: three times :class:`torch.nn.LSTM`'s. A layer's memory is reset at each of its
#: boundaries (FLUSH), so unlike an LSTM's cell state it never builds up over many steps
#: from small pre-activations: with LSTM's range (gain 1) a 3-layer ``HMRNN`` did not fit
#: one small set in 4 of 5 seeds, and did with its first layer never flushing. Chosen on
#: seven UCR/UEA sets (the HM-RNN guide: gain 3 within 2 points of a same-size
#: ``nn.LSTM`` on all 7, gain 1 on 5).
DEFAULT_INIT_GAIN = 3.0


class HMRNNState(NamedTuple):
    """The recurrent state of an :class:`HMRNN`, one entry per layer (bottom first).

    Attributes
    ----------
    h:
        Hidden states, each ``(B, H_l)``.
    c:
        Cell states, each ``(B, H_l)``.
    z:
        The boundary each layer emitted at the last step, each ``(B,)`` in {0, 1}.
    """

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]
    z: tuple[Tensor, ...]

    def detach(self) -> HMRNNState:
        """The same state cut from the autograd graph (for truncated BPTT).

        Examples
        --------
        >>> from stochrnn import HMRNN
        >>> rnn = HMRNN(3, 4, num_layers=2)
        >>> state = rnn(torch.randn(2, 5, 3)).state.detach()
        >>> any(t.requires_grad for t in state.h + state.c + state.z)
        False
        """
        return HMRNNState(
            tuple(t.detach() for t in self.h),
            tuple(t.detach() for t in self.c),
            tuple(t.detach() for t in self.z),
        )


class HMRNNOutput(NamedTuple):
    """What :meth:`HMRNN.forward` returns (time-major shapes when ``batch_first=False``).

    Attributes
    ----------
    output:
        ``(B, T, sum(hidden_size))``, the hidden states of all layers concatenated
        (HM-AN's output), or ``(B, T, output_embedding_size)`` with the gated
        output embedding.
    hidden:
        One ``(B, T, H_l)`` per layer.
    boundaries:
        ``(B, T, L)`` the boundary each layer emitted at each step: in {0, 1}
        with a hard estimator, relaxed values with a relaxed one (0 at padded
        steps); it carries the estimator's gradient.
    log_prob:
        ``(B,)`` log-probability of all boundary decisions of the sequence
        (the sum of ``layer_log_prob`` over layers), for REINFORCE.
    state:
        The :class:`HMRNNState` after the last step (padded steps excluded),
        to carry into the next chunk.
    layer_log_prob:
        ``(B, L)`` the same log-probability per layer, for a model whose layers
        use different score-function estimators (see :meth:`HMRNN.surrogate_loss`).
    boundary_logits:
        ``(B, T, L)`` the boundary logit :math:`\tilde z^l_t` each layer's estimator
        was given (0 at padded steps), with its gradient: what diagnostics and a
        boundary-rate prior read (the probability of a 1 is the estimator's
        ``distribution(logit)``).
    """

    output: Tensor
    hidden: tuple[Tensor, ...]
    boundaries: Tensor
    log_prob: Tensor
    state: HMRNNState
    layer_log_prob: Tensor
    boundary_logits: Tensor


class HMLSTMCellOutput(NamedTuple):
    """One step of one :class:`HMLSTMCell`: new ``h``, ``c`` ``(B, H)``, boundary ``z``, its
    ``log_prob`` and the boundary ``logit`` it was drawn from, ``(B,)``."""

    h: Tensor
    c: Tensor
    z: Tensor
    log_prob: Tensor
    logit: Tensor


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class HMLSTMCell(nn.Module):
    r"""One layer of the HM-LSTM, for one time step.

    .. math::
        s = U_{rec}\, h_{t-1} + z_{t-1}\, U_{td}\, h^{above}_{t-1}
            + z^{below}_t\, W_{bu}\, x_t + b,\qquad
        [i, f, o, g, \tilde z] = [\sigma, \sigma, \sigma, \tanh, \mathrm{id}](\mathrm{LN}(s))

    then UPDATE / COPY / FLUSH as the boundary-weighted blend of the module
    docstring, and :math:`z_t = \mathrm{boundary}(\tilde z)`. The recurrent term is
    never gated; the bottom-up term is gated by the boundary below at ``t``, the
    top-down term by this layer's own boundary at ``t-1``.

    Parameters
    ----------
    input_size:
        Size of the input from below (``x_t`` for the first layer, ``h^{l-1}_t`` above it).
    hidden_size:
        ``H``, the size of ``h`` and ``c``.
    above_size:
        Size of the layer above, or ``None`` for the top layer (no top-down term).
    boundary:
        Any binary :class:`~stochrnn.estimators.Estimator`; ``None`` makes a fresh
        ``GumbelSigmoid(0.3)``. It is called as ``boundary(z̃, context=h_t)``, so an
        :class:`~stochrnn.estimators.AdaptiveTemperature` of size ``H`` reads the
        layer's new hidden state.
    layer_norm:
        Normalise the summed pre-activation :math:`s` (all :math:`4H + 1` columns)
        with a learnt :class:`torch.nn.LayerNorm`.
    init_gain:
        The weight is drawn uniform in :math:`\pm g/\sqrt{H}` with this gain
        :math:`g` (:meth:`reset_parameters`); the default, 3, is explained at
        :data:`DEFAULT_INIT_GAIN`. ``1`` gives :class:`torch.nn.LSTM`'s range.

    Attributes
    ----------
    weight:
        :math:`[W_{bu}, U_{rec}, U_{td}]` side by side, ``(4H + 1, input + H + above)``,
        one parameter so that a step is one matrix product with no copy of the
        weights; rows in the order i, f, o, g, z̃. The blocks are the views
        :attr:`weight_bottom_up`, :attr:`weight_recurrent`, :attr:`weight_top_down`.
    bias:
        :math:`b`, ``(4H + 1,)``.

    Examples
    --------
    >>> cell = HMLSTMCell(input_size=3, hidden_size=5, above_size=4)
    >>> h, c, z = torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2)
    >>> out = cell(torch.randn(2, 3), h, c, z, z_below=torch.ones(2), h_above=torch.zeros(2, 4))
    >>> out.h.shape, out.z.shape, out.log_prob.shape
    (torch.Size([2, 5]), torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        above_size: int | None = None,
        boundary: Estimator | None = None,
        layer_norm: bool = False,
        init_gain: float = DEFAULT_INIT_GAIN,
    ) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.above_size = None if above_size is None else _check_size("above_size", above_size)
        if boundary is None:
            boundary = GumbelSigmoid(DEFAULT_BOUNDARY_TEMPERATURE)
        require_family(boundary, "binary", "HMLSTMCell boundary")
        check_context_size(boundary, hidden_size, "HMLSTMCell boundary", "hidden state")
        self.boundary = boundary
        rows = 4 * hidden_size + 1
        columns = input_size + hidden_size + (above_size or 0)
        self.weight = nn.Parameter(torch.empty(rows, columns))
        self.bias = nn.Parameter(torch.empty(rows))
        self.norm = nn.LayerNorm(rows) if layer_norm else None
        self.init_gain = _check_positive("init_gain", init_gain)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight uniform in :math:`\\pm g/\\sqrt{H}` (:attr:`init_gain` :math:`g`), bias in
        :math:`\\pm 1/\\sqrt{H}` as in :class:`torch.nn.LSTM`; layer norm reset."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight, -self.init_gain * bound, self.init_gain * bound)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.norm is not None:
            self.norm.reset_parameters()

    @property
    def weight_bottom_up(self) -> Tensor:
        """:math:`W_{bu}`, ``(4H + 1, input_size)``, a view of :attr:`weight`."""
        return self.weight[:, : self.input_size]

    @property
    def weight_recurrent(self) -> Tensor:
        """:math:`U_{rec}`, ``(4H + 1, H)``, a view of :attr:`weight`."""
        return self.weight[:, self.input_size : self.input_size + self.hidden_size]

    @property
    def weight_top_down(self) -> Tensor | None:
        """:math:`U_{td}`, ``(4H + 1, above_size)``, a view of :attr:`weight`; ``None`` on top."""
        if self.above_size is None:
            return None
        return self.weight[:, self.input_size + self.hidden_size :]

    def fused_weight(self, bottom_up: bool = True) -> Tensor:
        """:attr:`weight`, or without ``W_bu`` (for an input projected beforehand): a view.

        The pre-activation is one matrix product with the gated inputs side by
        side: ``s = [z_below·x, h, z·h_above] @ fused_weight().T + bias``.
        """
        return self.weight if bottom_up else self.weight[:, self.input_size :]

    def forward(
        self,
        x: Tensor,
        h: Tensor,
        c: Tensor,
        z: Tensor,
        z_below: Tensor | None = None,
        h_above: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> HMLSTMCellOutput:
        """One step from the input below ``x`` ``(B, input_size)`` and the state at ``t-1``.

        ``h``, ``c``: ``(B, H)``; ``z``: this layer's boundary at ``t-1``, ``(B,)``;
        ``z_below``: the boundary of the layer below at ``t``, ``(B,)``, ``None`` for
        the first layer (:math:`z^0 = 1`); ``h_above``: the hidden state of the layer
        above at ``t-1`` (required unless this is the top layer).
        """
        if (h_above is None) != (self.above_size is None):
            raise ValueError(
                "h_above must be given exactly when the cell has a layer above "
                f"(above_size={self.above_size}), got "
                f"{'None' if h_above is None else tuple(h_above.shape)}"
            )
        parts = [x if z_below is None else z_below.unsqueeze(1) * x, h]
        if h_above is not None:
            parts.append(z.unsqueeze(1) * h_above)
        s = F.linear(torch.cat(parts, dim=1), self.fused_weight(), self.bias)
        return self.transition(s, h, c, z, z_below, generator=generator)

    def transition(
        self,
        s: Tensor,
        h: Tensor,
        c: Tensor,
        z: Tensor,
        z_below: Tensor | None,
        *,
        generator: torch.Generator | None = None,
    ) -> HMLSTMCellOutput:
        """Gates, UPDATE/COPY/FLUSH blend and boundary, from the summed pre-activation.

        ``s`` is :math:`s` of the class docstring, ``(B, 4H + 1)``, before the layer
        norm. :class:`HMRNN`'s per-step path computes it for all layers with one
        matrix product per layer and calls this; the fused sequence
        (:mod:`stochrnn.hmrnn.fused`) implements the same equations and is
        tested against this.
        """
        if self.norm is not None:
            s = self.norm(s)
        size = self.hidden_size
        gates, proposal, logit = torch.split(s, [3 * size, size, 1], dim=1)
        i, f, o = torch.sigmoid(gates).chunk(3, dim=1)
        g = torch.tanh(proposal)
        flush = z.unsqueeze(1)
        c_flush = i * g
        c_update = torch.addcmul(c_flush, f, c)
        h_flush = o * torch.tanh(c_flush)
        h_update = o * torch.tanh(c_update)
        if z_below is None:  # the first layer: z^0 = 1, never COPY
            update = 1.0 - flush
            c_new = flush * c_flush + update * c_update
            h_new = flush * h_flush + update * h_update
        else:
            below = z_below.unsqueeze(1)
            copy = (1.0 - flush) * (1.0 - below)
            update = (1.0 - flush) * below
            c_new = flush * c_flush + copy * c + update * c_update
            h_new = flush * h_flush + copy * h + update * h_update
        logit = logit.squeeze(1)
        sample = call_estimator(
            self.boundary,
            logit,
            h_new,
            generator=generator,
            family="binary",
            where="HMLSTMCell boundary",
        )
        return HMLSTMCellOutput(h_new, c_new, sample.value, sample.log_prob, logit)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"above_size={self.above_size}"
        )
