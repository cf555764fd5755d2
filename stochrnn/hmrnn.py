r"""Hierarchical multiscale LSTM (HM-RNN) with pluggable boundary estimators.

The HM-LSTM of Chung, Ahn and Bengio (arXiv 1609.01704), as used by HM-AN
(Yan et al., arXiv 1708.07590). Layer :math:`l` at step :math:`t` reads its own
state, the state of the layer above from :math:`t-1` and the new state of the
layer below:

.. math::
    s^l_t = U^l_l h^l_{t-1} + z^l_{t-1}\, U^l_{l+1} h^{l+1}_{t-1}
            + z^{l-1}_t\, W^l_{l-1} h^{l-1}_t + b^l

(:math:`h^0_t = x_t`, :math:`z^0_t = 1`; the top layer has no top-down term).
:math:`i, f, o = \sigma(\cdot)` and :math:`g = \tanh(\cdot)` are slices of
:math:`s^l_t` (after an optional layer norm of the whole sum) and the last
column is the boundary logit :math:`\tilde z^l_t`. The boundary of the layer
below (:math:`z^{l-1}_t`) and this layer's own previous boundary
(:math:`z^l_{t-1}`) choose the operation:

=========  ===========================================  =======================================
operation  when                                         cell
=========  ===========================================  =======================================
UPDATE     :math:`z^l_{t-1} = 0,\ z^{l-1}_t = 1`        :math:`c = f \odot c_{t-1} + i \odot g`
COPY       :math:`z^l_{t-1} = 0,\ z^{l-1}_t = 0`        :math:`c = c_{t-1}`, :math:`h = h_{t-1}`
FLUSH      :math:`z^l_{t-1} = 1`                        :math:`c = i \odot g`
=========  ===========================================  =======================================

with :math:`h = o \odot \tanh(c)` outside COPY, and the new boundary
:math:`z^l_t` drawn from :math:`\tilde z^l_t` by the layer's estimator at every
step. The choice is computed as a blend weighted by the boundaries, so that a
boundary also gets gradient from the operation it selects:

.. math::
    c^l_t &= z^l_{t-1}\,(i \odot g) + (1 - z^l_{t-1})(1 - z^{l-1}_t)\, c^l_{t-1}
             + (1 - z^l_{t-1})\, z^{l-1}_t\, (f \odot c^l_{t-1} + i \odot g) \\
    h^l_t &= z^l_{t-1}\, o \odot \tanh(i \odot g) + (1 - z^l_{t-1})(1 - z^{l-1}_t)\, h^l_{t-1}
             + (1 - z^l_{t-1})\, z^{l-1}_t\, o \odot \tanh(f \odot c^l_{t-1} + i \odot g)

With hard boundaries in {0, 1} this is exactly the table above.

Examples
--------
>>> import torch
>>> from stochrnn import HMRNN
>>> rnn = HMRNN(input_size=8, hidden_size=16, num_layers=3)
>>> out = rnn(torch.randn(4, 10, 8))
>>> out.output.shape, out.boundaries.shape, out.log_prob.shape
(torch.Size([4, 10, 48]), torch.Size([4, 10, 3]), torch.Size([4]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .estimators import Estimator, GumbelSigmoid, require_family

__all__ = ["HMRNN", "HMLSTMCell", "HMLSTMCellOutput", "HMRNNOutput", "HMRNNState"]

#: Temperature of the default boundary estimator, ``GumbelSigmoid(0.3)`` (HM-AN).
DEFAULT_BOUNDARY_TEMPERATURE = 0.3


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
        ``(B, T, L)`` the boundary each layer emitted at each step, in {0, 1}
        (0 at padded steps); it carries the estimator's gradient.
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
    ) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.above_size = None if above_size is None else _check_size("above_size", above_size)
        if boundary is None:
            boundary = GumbelSigmoid(DEFAULT_BOUNDARY_TEMPERATURE)
        require_family(boundary, "binary", "HMLSTMCell boundary")
        self.boundary = boundary
        rows = 4 * hidden_size + 1
        columns = input_size + hidden_size + (above_size or 0)
        self.weight = nn.Parameter(torch.empty(rows, columns))
        self.bias = nn.Parameter(torch.empty(rows))
        self.norm = nn.LayerNorm(rows) if layer_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in :math:`\\pm 1/\\sqrt{H}` as in :class:`torch.nn.LSTM`; layer norm reset."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
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
        norm. :class:`HMRNN` computes it for all layers with fused matrix products
        and calls this, so the equations live in one place.
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
        sample = self.boundary(logit, context=h_new, generator=generator)
        return HMLSTMCellOutput(h_new, c_new, sample.value, sample.log_prob, logit)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"above_size={self.above_size}"
        )


class StepWeight:
    r"""A weight shared by one product per time step, its gradient computed in one product.

    Autograd would give each step's product :math:`s_t = b_t + x_t W^\top` its own
    weight gradient :math:`g_t^\top x_t` (a matrix product with only ``B`` rows to
    sum over) and add the ``T`` results one by one. Here each step's backward only
    records :math:`(x_t, g_t)`; the weight's backward, which autograd runs after all
    of them, returns :math:`[g_1; \dots; g_T]^\top [x_1; \dots; x_T]`, one product
    over ``T·B`` rows. Entries are tagged with the backward pass that recorded them,
    so a pass that does not reach the weight (``torch.autograd.grad`` with other
    ``inputs``) leaves nothing behind for the next one. ``deferred=False`` (or a
    weight that needs no gradient) is a plain :func:`torch.addmm`, which is also
    what :func:`torch.compile` gets.

    Examples
    --------
    >>> weight = torch.randn(3, 2, requires_grad=True)
    >>> shared = StepWeight(weight)
    >>> xs = [torch.randn(4, 2) for _ in range(5)]
    >>> sum(shared.addmm(torch.zeros(3), x).sum() for x in xs).backward()
    >>> torch.allclose(weight.grad, sum(x.sum(0) for x in xs).expand(3, 2))
    True
    """

    def __init__(self, weight: Tensor, deferred: bool = True) -> None:
        self.deferred = deferred and weight.requires_grad and torch.is_grad_enabled()
        self._records = _GradientRecords()
        self.weight: Tensor = (
            _DeferredWeightGrad.apply(weight, self._records)  # type: ignore[no-untyped-call]
            if self.deferred
            else weight
        )

    def addmm(self, base: Tensor, inputs: Tensor) -> Tensor:
        """``base + inputs @ weight.T`` (``base``: ``(B, G)`` or a ``(G,)`` bias)."""
        if not self.deferred:
            return torch.addmm(base, inputs, self.weight.t())
        product = _StepProduct.apply(base, inputs, self.weight, self._records)  # type: ignore[no-untyped-call]
        return cast(Tensor, product)


class _GradientRecords:
    """The ``(inputs, grad)`` pairs that step products hand to their weight's backward.

    Inputs are kept detached, so the records hold no reference back into the graph
    (whose nodes hold the records): no reference cycle.
    """

    def __init__(self) -> None:
        self._records: list[tuple[int, Tensor, Tensor]] = []

    def add(self, inputs: Tensor, grad: Tensor) -> None:
        self._records.append((torch._C._current_graph_task_id(), inputs.detach(), grad))

    def take(self) -> tuple[list[Tensor], list[Tensor]]:
        """The records of the running backward pass; forgets all records."""
        task = torch._C._current_graph_task_id()
        mine = [(inputs, grad) for owner, inputs, grad in self._records if owner == task]
        self._records.clear()
        return [inputs for inputs, _ in mine], [grad for _, grad in mine]


class _DeferredWeightGrad(torch.autograd.Function):
    """Identity on the weight; its backward sums the recorded per-step gradients."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, records: _GradientRecords) -> Tensor:
        ctx.records = records
        ctx.dtype = weight.dtype
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, _: Tensor | None) -> tuple[Tensor, None]:
        inputs, grads = ctx.records.take()
        grad = torch.cat(grads).to(ctx.dtype).t().mm(torch.cat(inputs).to(ctx.dtype))
        return grad, None


class _StepProduct(torch.autograd.Function):
    """``base + inputs @ weight.T`` whose weight gradient is left to the weight's backward."""

    @staticmethod
    def forward(
        ctx: Any, base: Tensor, inputs: Tensor, weight: Tensor, records: _GradientRecords
    ) -> Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.records = records
        ctx.bias = base.dim() == 1
        ctx.base_dtype = base.dtype
        return torch.addmm(base, inputs, weight.t())  # autocast may compute it in lower precision

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        inputs, weight = ctx.saved_tensors
        if ctx.needs_input_grad[2]:
            ctx.records.add(inputs, grad)
        grad_base = grad_inputs = None
        if ctx.needs_input_grad[0]:
            grad_base = (grad.sum(dim=0) if ctx.bias else grad).to(ctx.base_dtype)
        if ctx.needs_input_grad[1]:
            grad_inputs = grad.mm(weight.to(grad.dtype)).to(inputs.dtype)
        return grad_base, grad_inputs, None, None


class _GatedOutputEmbedding(nn.Module):
    r"""Chung et al.'s output module: :math:`h^e = \mathrm{ReLU}(\sum_l g^l W_l h^l)`,
    :math:`g^l = \sigma(w_l \cdot [h^1; \dots; h^L])`."""

    sizes: Tensor

    def __init__(self, hidden_sizes: Sequence[int], size: int) -> None:
        super().__init__()
        total = sum(hidden_sizes)
        self.gate = nn.Linear(total, len(hidden_sizes), bias=False)  # rows w_l
        self.projection = nn.Linear(total, size, bias=False)  # [W_1, ..., W_L]
        self.register_buffer("sizes", torch.tensor(hidden_sizes), persistent=False)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden``: ``(..., sum(H_l))``, all layers concatenated."""
        gates = torch.sigmoid(self.gate(hidden))
        scaled = hidden * gates.repeat_interleave(self.sizes, dim=-1, output_size=hidden.shape[-1])
        return torch.relu(self.projection(scaled))


StepFunction = Callable[
    [Tensor, HMRNNState, Sequence[StepWeight], Tensor | None, torch.Generator | None],
    tuple[HMRNNState, Tensor, Tensor],
]


class HMRNN(nn.Module):
    r"""A stack of :class:`HMLSTMCell` run over a sequence (HM-RNN, HM-AN Eq. 1–7).

    See the module docstring for the equations. Each layer has its own boundary
    detector, the top one included (so it can FLUSH); its logit is the extra
    column of the layer's pre-activation.

    Parameters
    ----------
    input_size:
        Size of ``x_t``.
    hidden_size:
        An int (every layer) or one per layer.
    num_layers:
        ``L``.
    boundary:
        ``None``: a fresh ``GumbelSigmoid(0.3)`` per layer (HM-AN). One binary
        :class:`~stochrnn.estimators.Estimator`: that *same instance* in every layer
        (its state is shared: one learnt temperature, or one REINFORCE baseline
        updated once per :meth:`surrogate_loss`). A sequence: one estimator per
        layer. Categorical estimators raise ``TypeError``.
    batch_first:
        ``x`` is ``(B, T, input_size)`` (else ``(T, B, input_size)``; ``mask`` and
        the outputs follow the same layout).
    dropout:
        Dropout probability on the bottom-up input of layers 2..L (the hidden state
        of the layer below), as :class:`torch.nn.LSTM` between its layers.
    layer_norm:
        Layer-normalise each layer's summed pre-activation (see :class:`HMLSTMCell`).
    output_embedding_size:
        ``None``: ``output`` is all layers' hidden states concatenated. An int ``E``:
        ``output`` is Chung et al.'s gated output embedding
        :math:`h^e_t = \mathrm{ReLU}(\sum_l g^l_t W_l h^l_t)` with
        :math:`g^l_t = \sigma(w_l \cdot [h^1_t; \dots; h^L_t])`, of size ``E``.
    compile_step:
        Run the per-step function (all layers, one step) through
        :func:`torch.compile` (named so as not to shadow :meth:`torch.nn.Module.compile`,
        which would unroll the whole time loop). Compiling takes tens of seconds;
        on a 2-core CPU it halves the time of small models (Python-bound) and gains
        little at 512 hidden units (matrix-bound). Random draws then come from the
        compiled graph's generator, so sampling estimators give other draws than in
        eager mode, and the weight gradients are left to autograd (see below).

    Notes
    -----
    Speed: layer 1's input product is one matrix product over all steps; each
    layer then does one product per step, its gated inputs side by side
    (``[z^{l-1}_t h^{l-1}_t, h^l_{t-1}, z^l_{t-1} h^{l+1}_{t-1}]``); and each weight's
    gradient is one product over all ``T·B`` rows (:class:`StepWeight`) instead of
    ``T`` products of ``B`` rows added up. No Python work is done per row. Rows in
    COPY are not skipped: with a pathwise estimator the blend needs every row's
    gates for the boundary's gradient, and the boundary logit needs the row's
    recurrent product at every step.

    Examples
    --------
    >>> rnn = HMRNN(input_size=8, hidden_size=[16, 12], num_layers=2)
    >>> x = torch.randn(4, 10, 8)
    >>> out = rnn(x)
    >>> out.output.shape, [h.shape[-1] for h in out.hidden]
    (torch.Size([4, 10, 28]), [16, 12])
    >>> more = rnn(x, state=out.state.detach())  # the next chunk (truncated BPTT)
    >>> y, state = rnn.step(x[:, 0], state=None)  # one step, for models that feed back
    >>> y.shape
    torch.Size([4, 28])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int = 3,
        boundary: Estimator | Sequence[Estimator] | None = None,
        batch_first: bool = True,
        dropout: float = 0.0,
        layer_norm: bool = False,
        output_embedding_size: int | None = None,
        compile_step: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.hidden_sizes = self._layer_sizes(hidden_size, num_layers)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.batch_first = batch_first
        estimators = self._layer_estimators(boundary, num_layers)
        below = [input_size, *self.hidden_sizes[:-1]]
        above: list[int | None] = [*self.hidden_sizes[1:], None]
        self.cells = nn.ModuleList(
            HMLSTMCell(below[l], self.hidden_sizes[l], above[l], estimators[l], layer_norm)
            for l in range(num_layers)
        )
        self.output_embedding = (
            None
            if output_embedding_size is None
            else _GatedOutputEmbedding(
                self.hidden_sizes, _check_size("output_embedding_size", output_embedding_size)
            )
        )
        self.compile_step = compile_step
        self._compiled_advance: StepFunction | None = None

    @staticmethod
    def _layer_sizes(hidden_size: int | Sequence[int], num_layers: int) -> tuple[int, ...]:
        if isinstance(hidden_size, int):
            return (_check_size("hidden_size", hidden_size),) * num_layers
        sizes = tuple(hidden_size)
        if len(sizes) != num_layers:
            raise ValueError(
                f"hidden_size needs one size per layer ({num_layers}), got {len(sizes)}: {sizes}"
            )
        return tuple(_check_size("hidden_size", s) for s in sizes)

    @staticmethod
    def _layer_estimators(
        boundary: Estimator | Sequence[Estimator] | None, num_layers: int
    ) -> list[Estimator]:
        if boundary is None:
            return [GumbelSigmoid(DEFAULT_BOUNDARY_TEMPERATURE) for _ in range(num_layers)]
        if isinstance(boundary, nn.Module):
            estimators = [boundary] * num_layers
        else:
            estimators = list(boundary)
            if len(estimators) != num_layers:
                raise ValueError(
                    f"boundary needs one estimator per layer ({num_layers}), got {len(estimators)}"
                )
        for l, est in enumerate(estimators):
            require_family(est, "binary", f"HMRNN boundary of layer {l + 1}")
        return estimators

    @property
    def layers(self) -> tuple[HMLSTMCell, ...]:
        """The cells, bottom first (``self.cells`` typed as :class:`HMLSTMCell`)."""
        return tuple(cast(HMLSTMCell, cell) for cell in self.cells)

    @property
    def boundaries(self) -> tuple[Estimator, ...]:
        """The boundary estimator of each layer (the same object repeated when shared)."""
        return tuple(cell.boundary for cell in self.layers)

    @property
    def output_size(self) -> int:
        """The last dimension of ``output`` (and of ``step``'s ``y``)."""
        if self.output_embedding is not None:
            return self.output_embedding.projection.out_features
        return sum(self.hidden_sizes)

    # ------------------------------------------------------------------ state

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HMRNNState:
        """All zeros: no memory and no boundary before the first step.

        ``device``/``dtype`` default to those of the parameters.

        Examples
        --------
        >>> state = HMRNN(3, [4, 2], num_layers=2).initial_state(5)
        >>> [tuple(h.shape) for h in state.h], tuple(state.z[0].shape)
        ([(5, 4), (5, 2)], (5,))
        """
        reference = self.layers[0].bias
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        zeros = [
            torch.zeros(batch_size, size, device=device, dtype=dtype) for size in self.hidden_sizes
        ]
        return HMRNNState(
            tuple(zeros),
            tuple(torch.zeros_like(t) for t in zeros),
            tuple(torch.zeros(batch_size, device=device, dtype=dtype) for _ in zeros),
        )

    def _check_state(self, state: HMRNNState, batch_size: int) -> None:
        if not isinstance(state, tuple) or len(state) != 3:
            raise ValueError(f"state must be an HMRNNState(h, c, z), got {type(state).__name__}")
        for name, tensors in zip(("h", "c", "z"), state, strict=True):
            if len(tensors) != self.num_layers:
                raise ValueError(
                    f"state.{name} needs one tensor per layer ({self.num_layers}), "
                    f"got {len(tensors)}"
                )
            for l, tensor in enumerate(tensors):
                expected = (batch_size,) if name == "z" else (batch_size, self.hidden_sizes[l])
                if tuple(tensor.shape) != expected:
                    raise ValueError(
                        f"state.{name}[{l}] expected shape {expected}, got {tuple(tensor.shape)}"
                    )

    # ------------------------------------------------------------------ running

    def _check_input(self, x: Tensor, dims: int, layout: str) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x!r:.60}")
        if x.dim() != dims or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x expected shape {layout} with input_size={self.input_size}, got {tuple(x.shape)}"
            )

    def _step_weights(self) -> list[StepWeight]:
        """Per layer, the weight of its one fused product per step.

        Layer 1's bottom-up product is done for all steps at once, so its fused
        weight holds only the recurrent and top-down parts.
        """
        return [
            StepWeight(cell.fused_weight(bottom_up=l > 0), deferred=not self.compile_step)
            for l, cell in enumerate(self.layers)
        ]

    def _advance(
        self,
        projected: Tensor,
        state: HMRNNState,
        weights: Sequence[StepWeight],
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[HMRNNState, Tensor]:
        """One step of every layer; ``projected`` is layer 1's ``W_bu x_t + b``.

        Returns the new state (unchanged in rows where ``mask`` is False), the
        ``(B, L)`` log-probability of the new boundaries and their ``(B, L)`` logits.
        """
        h_new: list[Tensor] = []
        c_new: list[Tensor] = []
        z_new: list[Tensor] = []
        log_probs: list[Tensor] = []
        logits: list[Tensor] = []
        last = self.num_layers - 1
        for l, cell in enumerate(self.layers):
            h, c, z = state.h[l], state.c[l], state.z[l]
            parts = [h]
            if l > 0:
                below = F.dropout(h_new[l - 1], self.dropout, self.training)
                parts.insert(0, z_new[l - 1].unsqueeze(1) * below)
            if l < last:
                parts.append(z.unsqueeze(1) * state.h[l + 1])
            inputs = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            s = weights[l].addmm(projected if l == 0 else cell.bias, inputs)
            step = cell.transition(s, h, c, z, z_new[l - 1] if l > 0 else None, generator=generator)
            if mask is None:
                h_new.append(step.h)
                c_new.append(step.c)
                z_new.append(step.z)
            else:
                rows = mask.unsqueeze(1)
                h_new.append(torch.where(rows, step.h, h))
                c_new.append(torch.where(rows, step.c, c))
                z_new.append(torch.where(mask, step.z, z))
            log_probs.append(step.log_prob)
            logits.append(step.logit)
        state = HMRNNState(tuple(h_new), tuple(c_new), tuple(z_new))
        return state, torch.stack(log_probs, 1), torch.stack(logits, 1)

    def _advance_function(self) -> StepFunction:
        if not self.compile_step:
            return self._advance
        if self._compiled_advance is None:
            self._compiled_advance = torch.compile(self._advance)
        return self._compiled_advance

    def _readout(self, hidden: Tensor) -> Tensor:
        return hidden if self.output_embedding is None else self.output_embedding(hidden)

    def forward(
        self,
        x: Tensor,
        state: HMRNNState | None = None,
        mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> HMRNNOutput:
        """Run the whole sequence.

        Parameters
        ----------
        x:
            ``(B, T, input_size)`` (``(T, B, input_size)`` when not ``batch_first``).
        state:
            The state to start from (e.g. ``out.state`` of the previous chunk);
            ``None``: :meth:`initial_state`.
        mask:
            ``(B, T)`` (``(T, B)`` when not ``batch_first``), true (non-zero) at real
            steps. At padded steps no state changes, the boundary and ``log_prob``
            are 0, and ``output``/``hidden`` are 0.
        generator:
            Passed to every boundary estimator, for reproducible draws.
        """
        self._check_input(x, 3, "(B, T, input)" if self.batch_first else "(T, B, input)")
        steps_first = x if not self.batch_first else x.transpose(0, 1)
        num_steps, batch_size = steps_first.shape[:2]
        if num_steps == 0:
            raise ValueError(f"x has no time steps: shape {tuple(x.shape)}")
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"mask expected shape {tuple(x.shape[:2])} (the first two dims of x), "
                    f"got {tuple(mask.shape)}"
                )
            mask = mask != 0
            mask = mask if not self.batch_first else mask.t()
        if state is None:
            state = self.initial_state(batch_size, x.device, x.dtype)
        else:
            self._check_state(state, batch_size)
        first = self.layers[0]
        projected = F.linear(steps_first, first.weight_bottom_up, first.bias)
        weights = self._step_weights()
        advance = self._advance_function()
        hidden: list[list[Tensor]] = [[] for _ in range(self.num_layers)]
        boundaries: list[Tensor] = []
        log_probs: list[Tensor] = []
        logits: list[Tensor] = []
        steps = mask.unbind(0) if mask is not None else (None,) * num_steps
        for projected_t, mask_t in zip(projected.unbind(0), steps, strict=True):
            state, log_prob, logit = advance(projected_t, state, weights, mask_t, generator)
            for layer, h in zip(hidden, state.h, strict=True):
                layer.append(h)
            boundaries.append(torch.stack(state.z, dim=1))
            log_probs.append(log_prob)
            logits.append(logit)
        return self._collect(hidden, boundaries, log_probs, logits, state, mask)

    def _collect(
        self,
        hidden: list[list[Tensor]],
        boundaries: list[Tensor],
        log_probs: list[Tensor],
        logits: list[Tensor],
        state: HMRNNState,
        mask: Tensor | None,
    ) -> HMRNNOutput:
        """Stack the per-step results (steps on dim 1, then to the user's layout)."""
        time_dim = 1 if self.batch_first else 0
        concatenated = torch.cat([torch.stack(h, dim=time_dim) for h in hidden], dim=-1)
        z = torch.stack(boundaries, dim=time_dim)
        log_prob = torch.stack(log_probs, dim=1)  # (B, T, L)
        logit = torch.stack(logits, dim=time_dim)
        if mask is not None:
            steps = mask.t().unsqueeze(-1)  # (B, T, 1)
            user = steps if self.batch_first else mask.unsqueeze(-1)
            concatenated = torch.where(user, concatenated, 0.0)
            z = torch.where(user, z, 0.0)
            logit = torch.where(user, logit, 0.0)
            log_prob = torch.where(steps, log_prob, 0.0)
        layer_log_prob = log_prob.sum(dim=1)
        return HMRNNOutput(
            output=self._readout(concatenated),
            hidden=tuple(torch.split(concatenated, list(self.hidden_sizes), dim=-1)),
            boundaries=z,
            log_prob=layer_log_prob.sum(dim=-1),
            state=state,
            layer_log_prob=layer_log_prob,
            boundary_logits=logit,
        )

    def step(
        self,
        x_t: Tensor,
        state: HMRNNState | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, HMRNNState]:
        """One time step: ``y, state = rnn.step(x_t, state)``.

        ``x_t``: ``(B, input_size)``; ``y``: ``(B, output_size)``, the same as
        ``output`` at that step of :meth:`forward`. The new boundaries are
        ``state.z``. When you also need the boundaries' log-probability (REINFORCE
        boundaries), call ``rnn(x_t.unsqueeze(1), state)`` instead, which is the
        same step with the full :class:`HMRNNOutput`.
        """
        self._check_input(x_t, 2, "(B, input)")
        if state is None:
            state = self.initial_state(x_t.shape[0], x_t.device, x_t.dtype)
        else:
            self._check_state(state, x_t.shape[0])
        first = self.layers[0]
        projected = F.linear(x_t, first.weight_bottom_up, first.bias)
        advance = self._advance_function()
        state, _, _ = advance(projected, state, self._step_weights(), None, generator)
        return self._readout(torch.cat(state.h, dim=-1)), state

    # ------------------------------------------------------------------ losses

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """The boundary estimators' surrogate loss (0 when all are pathwise).

        ``log_prob`` is ``out.log_prob`` ``(B,)`` or ``out.layer_log_prob``
        ``(B, L)``. Each distinct estimator is called once, on the log-probability
        of the layers it serves, and the results are summed; so a shared
        REINFORCE estimator updates its baseline once per call. When layers use
        *different* score-function estimators, their shares of the total cannot be
        told apart: pass ``out.layer_log_prob``.

        Examples
        --------
        >>> from stochrnn import Reinforce
        >>> rnn = HMRNN(3, 4, num_layers=2, boundary=Reinforce(categorical=False))
        >>> out = rnn(torch.randn(5, 6, 3))
        >>> reward = -out.output.detach().pow(2).mean(dim=(1, 2))
        >>> loss = rnn.surrogate_loss(out.log_prob, reward)
        >>> loss.backward()
        """
        groups: dict[int, tuple[Estimator, list[int]]] = {}
        for l, est in enumerate(self.boundaries):
            groups.setdefault(id(est), (est, []))[1].append(l)
        if log_prob.dim() == 2:
            if log_prob.shape[1] != self.num_layers:
                raise ValueError(
                    f"log_prob of shape (B, L) needs L={self.num_layers}, "
                    f"got {tuple(log_prob.shape)}"
                )
            terms = [
                est.surrogate_loss(log_prob[:, layers].sum(dim=1), reward)
                for est, layers in groups.values()
            ]
            return torch.stack(terms).sum()
        if len(groups) > 1 and not all(est.pathwise for est, _ in groups.values()):
            raise ValueError(
                "the layers use different score-function estimators, so the summed "
                f"log_prob of shape {tuple(log_prob.shape)} cannot be split between them: "
                "pass out.layer_log_prob, shape (B, L)"
            )
        terms = [est.surrogate_loss(log_prob, reward) for est, _ in groups.values()]
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={list(self.hidden_sizes)}, "
            f"num_layers={self.num_layers}, batch_first={self.batch_first}, "
            f"dropout={self.dropout}, compile_step={self.compile_step}"
        )
