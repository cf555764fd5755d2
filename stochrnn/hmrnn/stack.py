"""The HM-LSTM stack run over a sequence: :class:`HMRNN`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..estimators import Estimator, GumbelSigmoid, check_context_size, require_family
from .boundary import boundary_rule
from .cell import (
    DEFAULT_BOUNDARY_TEMPERATURE,
    DEFAULT_INIT_GAIN,
    HMLSTMCell,
    HMRNNOutput,
    HMRNNState,
    _check_size,
)
from .fused import FusedSequence, InputProduct, SequenceConfig, _Inputs, run_inference

StepFunction = Callable[
    [Tensor, HMRNNState, Tensor | None, torch.Generator | None],
    tuple[HMRNNState, Tensor, Tensor],
]

__all__ = ["DEFAULT_PRIOR_RATE", "DEFAULT_PRIOR_WEIGHT", "HMRNN"]

#: Target boundary rate of every layer in the default ``boundary_prior``.
DEFAULT_PRIOR_RATE = 0.5
#: Weight of the default ``boundary_prior``.
DEFAULT_PRIOR_WEIGHT = 0.1


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never on a device autocast does not know,
    such as ``meta``)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


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
    init_gain:
        Each layer's weight is drawn uniform in :math:`\pm g/\sqrt{H}` with this gain
        :math:`g`, by default 3 (three times :class:`torch.nn.LSTM`'s range; why:
        :data:`~stochrnn.hmrnn.cell.DEFAULT_INIT_GAIN`). The biases are drawn in
        :math:`\pm 1/\sqrt{H}` whatever the gain.
    output_embedding_size:
        ``None``: ``output`` is all layers' hidden states concatenated. An int ``E``:
        ``output`` is Chung et al.'s gated output embedding
        :math:`h^e_t = \mathrm{ReLU}(\sum_l g^l_t W_l h^l_t)` with
        :math:`g^l_t = \sigma(w_l \cdot [h^1_t; \dots; h^L_t])`, of size ``E``.
    compile_step:
        Run the per-step path's step function (all layers, one step) through
        :func:`torch.compile` (named so as not to shadow :meth:`torch.nn.Module.compile`,
        which would unroll the whole time loop). Compiling takes tens of seconds.
        Random draws then come from the compiled graph's generator, so sampling
        estimators give other draws than in eager mode. It turns the fused step
        off (the model then always takes the per-step path), which on the CPU is
        the faster one: it is for models that need the per-step path anyway
        (estimators without a closed form, layer norm) and for GPUs. Copies and
        pickles compile their own step.
    fused:
        Run the whole sequence as one fused autograd node where it applies (the
        default). ``False`` always takes the per-step path of plain autograd
        operations, slower: the same function with the same draws, whose numbers
        agree to float rounding (so a hard boundary whose logit plus noise lies
        within rounding of 0 can come out otherwise).
    boundary_prior:
        A prior on the boundary rates, called as ``prior(out, rnn.boundaries,
        mask)``; :meth:`prior_loss` returns it for the training loss. ``"default"``:
        a fresh ``BoundaryRatePrior(0.5, weight=0.1)``
        (:class:`~stochrnn.hierarchy.BoundaryRatePrior`), chosen on UCR/UEA sets
        (the HM-RNN guide's measurements, 3-layer classifiers against a same-size
        ``nn.LSTM``: within 2 points of it on all nine sets after 60 epochs and on
        all seven run for 150, each layer firing on 36–53% of steps, none cut off;
        with target 0.3, the default before, more steps COPY but PLAID falls 2.9
        points under the LSTM at 150 epochs). At this target it guards a layer's
        rate against nearing 0 or 1 more than it shapes the hierarchy; give a
        lower target for sparser boundaries. Its weight suits a loss of order 1
        per sequence (a mean over steps); a loss summed over many steps needs a
        larger one (the action-recognition example's, summed over a clip's
        frames, uses 10, or 30 beside REINFORCE attention). ``None``: no prior
        (:meth:`prior_loss` is 0). The prior acts only through :meth:`prior_loss`:
        a training loop adds it to its loss, as it adds :meth:`surrogate_loss`.

    Attributes
    ----------
    skip_copy_rows:
        ``True`` (default): on the CPU, when nothing is differentiated
        (``torch.no_grad()`` or frozen weights), each row of a step computes only
        what its operation reads: a row in COPY only its boundary logit, and
        (native CPU kernels) a row in FLUSH every gate but the forget gate, a row
        in UPDATE below the top layer its gates from the weights without the layer
        above's part (whose input is 0 for it). Measured at (64, 60, 512, 512) on
        one thread (``benchmarks/hmrnn_sparsity.py``, a 2-core Xeon with AVX-512),
        layer 1's boundary forced to fire at 10%, 30%, 60%, 100% and the layers
        above at 30%: 0.88×, 0.91×, 0.99×, 1.00× an ``nn.LSTM``'s inference (every
        layer at 100%: 1.03×), against about 1.4× without skipping; on two threads
        the ratios move more with the host's load (the HM-RNN guide). ``False``,
        and on any other device (choosing the rows there would wait for the device
        at every step of each layer above the first): every row computes every
        gate. Either way inference agrees with training mode to float rounding,
        not bitwise (the native kernel adds layer 1's input product inside each
        step's, and a COPY row's logit is a dot product), so a hard boundary
        within rounding of its threshold can come out otherwise; and a skipped
        block's zeros are not multiplied, so an infinite state there does not
        turn into NaN as it does when every row computes everything.

    Notes
    -----
    Two paths compute the same function (tested against each other to float64
    rounding, with the same draws from the same seed):

    * The **fused sequence** (:mod:`~stochrnn.hmrnn.fused`): every layer and step
      in one autograd node, with a hand-derived backward that saves only the
      gates and cell states, and each weight's gradient as one product per block
      of steps. On the CPU it runs native kernels (:mod:`~stochrnn.hmrnn.native`,
      compiled at first use; without a compiler it falls back to the same
      algorithm in PyTorch). It serves boundary estimators with a closed form
      (:func:`~stochrnn.hmrnn.boundary.boundary_rule`: ``GumbelSigmoid`` with a
      constant temperature, ``StraightThrough``, binary ``Reinforce``), no layer
      norm, no autocast. Double backward, :mod:`torch.func` (``grad``, ``vmap``,
      ``jacrev``) and compiled autograd work on it: higher-order gradients re-run
      the sequence under autograd.
    * The **per-step path**: one :class:`HMLSTMCell` transition per layer and step
      in plain autograd operations, with any estimator module (one that reads the
      hidden state through an :class:`~stochrnn.estimators.AdaptiveTemperature`,
      or a user's own).

    Layer 1's input product is one matrix product over all steps in both (the
    native inference kernel joins it to each step's instead, so that FLUSH rows
    skip its forget-gate columns too); each layer then does one product per step,
    its gated inputs side by side
    (``[z^{l-1}_t h^{l-1}_t, h^l_{t-1}, z^l_{t-1} h^{l+1}_{t-1}]``). Rows in COPY are
    never skipped when gradients are needed: with a pathwise estimator the blend
    needs every row's gates for the boundary's gradient.

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
        fused: bool = True,
        boundary_prior: nn.Module | Literal["default"] | None = "default",
        init_gain: float = DEFAULT_INIT_GAIN,
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
        for l, est in enumerate(estimators):  # an adaptive temperature reads the layer's h
            check_context_size(
                est, self.hidden_sizes[l], f"HMRNN boundary of layer {l + 1}", "hidden state"
            )
        below = [input_size, *self.hidden_sizes[:-1]]
        above: list[int | None] = [*self.hidden_sizes[1:], None]
        self.cells = nn.ModuleList(
            HMLSTMCell(
                below[l], self.hidden_sizes[l], above[l], estimators[l], layer_norm, init_gain
            )
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
        self.fused = fused
        self.skip_copy_rows = True
        self.boundary_prior = self._prior(boundary_prior, num_layers)
        self._compiled_advance: StepFunction | None = None

    @staticmethod
    def _prior(prior: object, num_layers: int) -> nn.Module | None:
        from ..hierarchy import BoundaryRatePrior  # hierarchy imports this package

        if isinstance(prior, str) and prior == "default":
            return BoundaryRatePrior(DEFAULT_PRIOR_RATE, weight=DEFAULT_PRIOR_WEIGHT)
        if prior is not None and not isinstance(prior, nn.Module):
            raise TypeError(
                "boundary_prior must be a module called as prior(out, estimators, mask) "
                f"(e.g. a BoundaryRatePrior), 'default' or None, got {prior!r:.60}"
            )
        if isinstance(prior, BoundaryRatePrior) and prior.per_layer:
            if prior.targets.numel() != num_layers:
                raise ValueError(
                    f"boundary_prior has {prior.targets.numel()} targets "
                    f"{prior.targets.tolist()}, the model has {num_layers} layers"
                )
        return prior

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
        elif not isinstance(boundary, (list, tuple)):
            raise TypeError(
                "boundary must be an estimator (a torch.nn.Module called as "
                "est(logits, context=None) -> Sample), a list of them or None, "
                f"got {type(boundary).__name__}"
            )
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

    def _check_state(self, state: HMRNNState, batch_size: int, x: Tensor) -> None:
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
                if tensor.device != x.device:
                    raise ValueError(
                        f"state.{name}[{l}] is on {tensor.device} but x is on {x.device}"
                    )
                if tensor.dtype != x.dtype and not _autocast_on(x.device.type):
                    raise TypeError(
                        f"state.{name}[{l}] has dtype {tensor.dtype} but x has {x.dtype}: "
                        f"convert the state (boundaries too: z is 0/1 in x's dtype)"
                    )

    # ------------------------------------------------------------------ running

    def _check_input(self, x: Tensor, dims: int, layout: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        weight = self.layers[0].weight
        if x.dtype != weight.dtype and not _autocast_on(x.device.type):
            raise TypeError(
                f"x has dtype {x.dtype} but the model's parameters are {weight.dtype}: "
                f"convert one (x.to({weight.dtype}) or model.to({x.dtype}))"
            )
        if x.dim() != dims or x.shape[-1] != self.input_size:
            hint = " (one step: use rnn.step)" if x.dim() == 2 and dims == 3 else ""
            raise ValueError(
                f"x expected shape {layout} with input_size={self.input_size}, "
                f"got {tuple(x.shape)}{hint}"
            )

    def _advance(
        self,
        projected: Tensor,
        state: HMRNNState,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[HMRNNState, Tensor, Tensor]:
        """One step of every layer through the cells (the per-step path).

        ``projected`` is layer 1's ``W_bu x_t + b``. Returns the new state
        (unchanged in rows where ``mask`` is False), the ``(B, L)``
        log-probability of the new boundaries and their ``(B, L)`` logits.
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
            weight = cell.fused_weight(bottom_up=l > 0)
            s = torch.addmm(projected if l == 0 else cell.bias, inputs, weight.t())
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

    def __getstate__(self) -> dict[str, Any]:
        # The compiled step is bound to this instance: a copy or an unpickled
        # model compiles its own.
        state = dict(self.__dict__)
        state["_compiled_advance"] = None
        return state

    def _readout(self, hidden: Tensor) -> Tensor:
        return hidden if self.output_embedding is None else self.output_embedding(hidden)

    def _fused_config(self, device_type: str) -> SequenceConfig | None:
        """The fused sequence's configuration, or ``None`` when this model needs the per-step path.

        The fused step covers boundary estimators with a closed form
        (:func:`~stochrnn.hmrnn.boundary.boundary_rule`), no layer norm, eager
        mode (not ``compile_step``) and no autocast.
        """
        if not self.fused or self.compile_step or self.layers[0].norm is not None:
            return None
        if _autocast_on(device_type):
            return None
        rules = [boundary_rule(est) for est in self.boundaries]
        if any(rule is None for rule in rules):
            return None
        return SequenceConfig(self.hidden_sizes, tuple(r for r in rules if r is not None))

    def _run(
        self,
        steps_first: Tensor,
        state: HMRNNState,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, HMRNNState]:
        """All steps, time-major: ``hidden (T, B, sum H)``, ``z``, ``logits``, ``log_prob``
        ``(T, B, L)`` and the last state (padded steps carry the state unchanged)."""
        config = self._fused_config(steps_first.device.type)
        if config is None:
            return self._run_per_step(self._project(steps_first), state, mask, generator)
        return self._run_fused(config, steps_first, state, mask, generator)

    def _project(self, steps_first: Tensor, native: bool = False) -> Tensor:
        """Layer 1's input product over all steps at once, ``W_bu x_t + b``; with
        ``native``, on the CPU, by the native kernels' product where it runs (the fused
        path; ``InputProduct`` has no forward-mode derivative, which the per-step path
        keeps)."""
        first = self.layers[0]
        # contiguous operands: the product over all steps runs at full speed
        weight = first.weight_bottom_up.contiguous()
        x = steps_first.contiguous()
        if native and x.device.type == "cpu":
            out: Tensor = InputProduct.apply(x, weight, first.bias)  # type: ignore[no-untyped-call]
            return out
        return F.linear(x, weight, first.bias)

    def _run_per_step(
        self,
        projected: Tensor,
        state: HMRNNState,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, HMRNNState]:
        advance = self._advance_function()
        hidden: list[Tensor] = []
        z: list[Tensor] = []
        log_probs: list[Tensor] = []
        logits: list[Tensor] = []
        steps = mask.unbind(0) if mask is not None else (None,) * projected.shape[0]
        for projected_t, mask_t in zip(projected.unbind(0), steps, strict=True):
            state, log_prob, logit = advance(projected_t, state, mask_t, generator)
            hidden.append(torch.cat(state.h, dim=-1))
            z.append(torch.stack(state.z, dim=1))
            log_probs.append(log_prob)
            logits.append(logit)
        stack = torch.stack
        return stack(hidden), stack(z), stack(logits), stack(log_probs), state

    def _run_fused(
        self,
        config: SequenceConfig,
        steps_first: Tensor,
        state: HMRNNState,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, HMRNNState]:
        num_steps, batch = steps_first.shape[:2]
        L = self.num_layers
        uniforms: list[list[Tensor]] = [[] for _ in range(L)]
        dropout: list[list[Tensor]] = [[] for _ in range(L)]
        drops = self.training and self.dropout > 0
        shape = torch.Size((batch,))
        for _ in range(num_steps):  # the draws of the per-step path, in its order
            for l, rule in enumerate(config.rules):
                if drops and l > 0:
                    ones = steps_first.new_ones(batch, self.hidden_sizes[l - 1])
                    dropout[l].append(F.dropout(ones, self.dropout, True))
                drawn = rule.draw(shape, steps_first.device, generator)
                if drawn is not None:
                    uniforms[l].append(drawn)
        # layer 1 reads the input itself (its product inside the steps'), for inference
        raw = _Inputs(
            projected=steps_first,
            weights=[cell.weight for cell in self.layers],
            biases=[cell.bias for cell in self.layers],
            h0=list(state.h),
            c0=list(state.c),
            z0=list(state.z),
            noise=[
                rule.noise(torch.stack(u)) if u else None
                for rule, u in zip(config.rules, uniforms, strict=True)
            ],
            dropout=[torch.stack(d) if d else None for d in dropout],
            mask=mask,
        )
        tensors = [t for t in raw.flatten() if isinstance(t, Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            # for a backward: layer 1's input product over all steps at once
            inputs = replace(
                raw,
                projected=self._project(steps_first, native=True),
                weights=[cell.fused_weight(bottom_up=l > 0) for l, cell in enumerate(self.layers)],
                biases=[None, *raw.biases[1:]],
            )
            results: tuple[Tensor, ...] = FusedSequence.apply(  # type: ignore[no-untyped-call]
                config, *inputs.flatten()
            )
            hidden, z, logits = results[:3]
            cells = list(results[3 : 3 + L])
        else:
            # Choosing rows on an accelerator would wait for it at each step of layers 2..L.
            skip = self.skip_copy_rows and steps_first.device.type == "cpu"
            out = run_inference(raw, replace(config, skip_copy=skip))
            hidden, z, logits, cells = out.hidden, out.z, out.logits, out.cells
        self._check_logits(logits, mask)
        log_prob = torch.stack(
            [rule.log_prob(logits[..., l], z[..., l]) for l, rule in enumerate(config.rules)],
            dim=-1,
        )
        last = HMRNNState(
            tuple(torch.split(hidden[-1], list(self.hidden_sizes), dim=-1)),
            tuple(cells),
            tuple(z[-1].unbind(-1)),
        )
        return hidden, z, logits, log_prob, last

    def _check_logits(self, logits: Tensor, mask: Tensor | None) -> None:
        """The per-step path's check, after a fused run: each estimator that validates its
        logits (on the CPU by default; see ``validate_args``) raises on a NaN one, instead
        of the boundary silently reading 0 (every comparison with NaN is false). Padded
        steps count too, as on the per-step path: the gradients of a NaN there are NaN."""
        layers = [l for l, est in enumerate(self.boundaries) if est._should_validate(logits)]
        if not layers:
            return
        nan = torch.isnan(logits[..., layers])  # (T, B, len(layers))
        try:
            first = nan.any(dim=1).nonzero()[:1].tolist()
        except RuntimeError as error:  # vmap refuses data-dependent checks: none there
            if "vmap" not in str(error):
                raise
            return
        if first:
            step, index = first[0]
            est = self.boundaries[layers[index]]
            padded = mask is not None and not bool((nan[..., index] & mask).any())
            hint = " (padded steps only: pad with finite values, such as 0)" if padded else ""
            raise ValueError(
                f"{type(est).__name__} got NaN logits (shape {tuple(logits.shape[1:2])}) in "
                f"layer {layers[index] + 1} at step {step}{hint}"
            )

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
            self._check_state(state, batch_size, x)
        hidden, z, logits, log_prob, last = self._run(steps_first, state, mask, generator)
        if mask is not None:
            steps = mask.unsqueeze(-1)  # (T, B, 1)
            hidden = torch.where(steps, hidden, 0.0)
            z = torch.where(steps, z, 0.0)
            logits = torch.where(steps, logits, 0.0)
            log_prob = torch.where(steps, log_prob, 0.0)
        if self.batch_first:
            hidden, z, logits = hidden.transpose(0, 1), z.transpose(0, 1), logits.transpose(0, 1)
        layer_log_prob = log_prob.sum(dim=0)
        return HMRNNOutput(
            output=self._readout(hidden),
            hidden=tuple(torch.split(hidden, list(self.hidden_sizes), dim=-1)),
            boundaries=z,
            log_prob=layer_log_prob.sum(dim=-1),
            state=last,
            layer_log_prob=layer_log_prob,
            boundary_logits=logits,
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
            self._check_state(state, x_t.shape[0], x_t)
        hidden, _, _, _, state = self._run(x_t.unsqueeze(0), state, None, generator)
        return self._readout(hidden[0]), state

    # ------------------------------------------------------------------ losses

    def prior_loss(self, out: HMRNNOutput, mask: Tensor | None = None) -> Tensor:
        """The boundary prior's loss for ``out`` (0 with ``boundary_prior=None``).

        ``mask`` as given to :meth:`forward`. Add it to the training loss beside
        :meth:`surrogate_loss`; both are what the library's defaults expect a
        training loop to add.

        Examples
        --------
        >>> rnn = HMRNN(3, 4, num_layers=2)  # the default prior: rate 0.5, weight 0.1
        >>> out = rnn(torch.randn(5, 6, 3))
        >>> loss = out.output.pow(2).mean() + rnn.prior_loss(out)
        >>> loss.backward()
        >>> HMRNN(3, 4, num_layers=2, boundary_prior=None).prior_loss(out)
        tensor(0.)
        """
        if self.boundary_prior is None:
            return out.output.new_zeros(())
        return cast(Tensor, self.boundary_prior(out, self.boundaries, mask))

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
