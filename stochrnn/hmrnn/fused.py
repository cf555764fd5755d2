r"""The fused HM-LSTM sequence: every layer and step in one autograd node.

Autograd records about a hundred small operations per layer and step of the
HM-LSTM (gates, the UPDATE/COPY/FLUSH blend, the boundary estimator, masks),
and at small sizes their bookkeeping, not the arithmetic, is the cost. Here the
forward runs with autograd off and saves only what the backward needs: the
gates :math:`i, f, o, g` and the cell state before each step, the boundary
logits and the noise they were drawn with (the hidden states and boundaries are
outputs anyway). The backward is derived by hand below and runs the steps in
reverse, layer above before layer below; each weight's gradient is then one
matrix product over all ``T·B`` rows.

Derivation. One layer at one step, with :math:`z_p` its own boundary at
:math:`t-1`, :math:`z_b` the boundary below at :math:`t` (1 for the first layer),
:math:`u = [z_b x, h, z_p h^{above}]` and :math:`s = W u + b`:

.. math::
    i, f, o = \sigma(s_{i,f,o}),\quad g = \tanh(s_g),\quad a = s_{\tilde z},\quad
    c_F = i g,\quad c_U = c_F + f c,\quad
    w_F = z_p,\ w_U = (1 - z_p) z_b,\ w_C = (1 - z_p)(1 - z_b)

    c' = w_F c_F + w_C c + w_U c_U,\qquad
    h' = o\,(w_F \tanh c_F + w_U \tanh c_U) + w_C h

Given :math:`\bar h = \partial L/\partial h'` and :math:`\bar c = \partial L/\partial c'`:

.. math::
    \bar o &= \bar h (w_F \tanh c_F + w_U \tanh c_U) \\
    \bar c_U &= w_U (\bar c + \bar h o (1 - \tanh^2 c_U)),\quad
    \bar c_F = w_F (\bar c + \bar h o (1 - \tanh^2 c_F)) + \bar c_U \\
    \bar f &= \bar c_U c,\quad \bar i = \bar c_F g,\quad \bar g = \bar c_F i,\quad
    \bar c_{prev} = w_C \bar c + f \bar c_U,\quad \bar h_{prev} \mathrel{+}= w_C \bar h \\
    \bar w_X &= \textstyle\sum_k \bar h_k \cdot \partial h'_k/\partial w_X
                 + \bar c_k \cdot \partial c'_k/\partial w_X\quad (X = F, U, C) \\
    \bar z_p &= \bar w_F - (1 - z_b) \bar w_C - z_b \bar w_U,\quad
    \bar z_b = (1 - z_p)(\bar w_U - \bar w_C)

then :math:`\bar s` through the activations (:math:`\bar s_{\tilde z}` from the
boundary: :math:`\bar v\,\partial v/\partial a + \overline{\log p}\,\partial \log p/\partial a`),
:math:`\bar u = \bar s W`, whose blocks give the gradients of the input below
(times :math:`z_b`), of :math:`h` and of :math:`h^{above}` (times :math:`z_p`), and
the gating terms :math:`\bar z_b \mathrel{+}= \bar u_x \cdot x`, :math:`\bar z_p
\mathrel{+}= \bar u_{above} \cdot h^{above}`. A padded step passes every gradient
to the state before it unchanged.

Higher-order gradients (``create_graph=True``) and :mod:`torch.func` transforms
re-run the same forward under autograd from the saved inputs and noise and
differentiate that, so they are exact too; only first-order ``backward`` takes
the hand-derived path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from . import native
from .boundary import BoundaryRule

__all__ = ["FusedSequence", "InputProduct", "SequenceConfig", "run_inference", "run_sequence"]


@dataclass(frozen=True)
class SequenceConfig:
    """What the fused sequence needs besides tensors."""

    hidden_sizes: tuple[int, ...]
    rules: tuple[BoundaryRule, ...]
    skip_copy: bool = False
    """Nothing to differentiate: rows in COPY (both boundaries exactly 0) skip their
    gate work (and, in the native kernels, rows in FLUSH the forget gate's)."""

    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)


@dataclass
class _Inputs:
    """The tensors of one call, unpacked from :meth:`FusedSequence.apply`'s flat list."""

    projected: Tensor  # (T, B, 4H_1 + 1): layer 1's W_bu x_t + b
    weights: list[Tensor]  # per layer (4H + 1, K): layer 1 without W_bu
    biases: list[Tensor | None]  # per layer, None for layer 1 (inside projected)
    h0: list[Tensor]
    c0: list[Tensor]
    z0: list[Tensor]
    noise: list[Tensor | None]  # per layer (T, B) or None
    dropout: list[Tensor | None]  # per layer (T, B, H_{l-1}) scaled masks, None for layer 1
    mask: Tensor | None  # (T, B) bool

    @staticmethod
    def unflatten(num_layers: int, flat: Sequence[Any]) -> _Inputs:
        L = num_layers
        it = iter(flat)
        projected = next(it)
        parts = [[next(it) for _ in range(L)] for _ in range(7)]
        mask = next(it)
        weights, biases, h0, c0, z0, noise, dropout = parts
        return _Inputs(projected, weights, biases, h0, c0, z0, noise, dropout, mask)

    def flatten(self) -> list[Any]:
        return [
            self.projected,
            *self.weights,
            *self.biases,
            *self.h0,
            *self.c0,
            *self.z0,
            *self.noise,
            *self.dropout,
            self.mask,
        ]


class _Outputs:
    """What the forward returns: per-step results stacked, and what the backward needs."""

    hidden: Tensor  # (T, B, sum H)
    z: Tensor  # (T, B, L)
    logits: Tensor  # (T, B, L)
    cells: list[Tensor]  # the last cell state of each layer
    activations: list[Tensor]  # per layer (T, B, 4H + 1): i, f, o, g after their nonlinearity
    c_prev: list[Tensor]  # per layer (T, B, H): the cell state before each step


def run_sequence(inp: _Inputs, cfg: SequenceConfig) -> _Outputs:
    """The forward, step by step; every operation is recorded when autograd is on.

    This is the forward of :class:`FusedSequence` (run without autograd) and,
    run under autograd, the graph its higher-order gradients differentiate.
    Boundaries are kept as ``(B, 1)`` columns with their complements ``1 - z``,
    computed once when drawn.
    """
    recording = torch.is_grad_enabled()
    T = inp.projected.shape[0]
    L = cfg.num_layers
    sizes = cfg.hidden_sizes
    transposed = [w.t().contiguous() for w in inp.weights]
    projected = inp.projected.unbind(0)
    noise = [(None,) * T if n is None else n.unsqueeze(-1).unbind(0) for n in inp.noise]
    dropout = [None if d is None else d.unbind(0) for d in inp.dropout]
    real_steps = None if inp.mask is None else inp.mask.unsqueeze(-1).unbind(0)
    h, c = list(inp.h0), list(inp.c0)
    z = [z0.unsqueeze(1) for z0 in inp.z0]
    not_z = [1.0 - zl for zl in z]
    hs: list[list[Tensor]] = [[] for _ in range(L)]
    zs: list[list[Tensor]] = [[] for _ in range(L)]
    acts: list[list[Tensor]] = [[] for _ in range(L)]
    c_prev: list[list[Tensor]] = [[] for _ in range(L)]
    for t in range(T):
        real = None if real_steps is None else real_steps[t]
        for l in range(L):
            H = sizes[l]
            flush, not_flush = z[l], not_z[l]
            parts = [h[l]]
            if l > 0:
                below = h[l - 1]
                drop = dropout[l]
                if drop is not None:
                    below = below * drop[t]
                parts.insert(0, z[l - 1] * below)  # z[l - 1] is already this step's
            if l < L - 1:
                parts.append(flush * h[l + 1])
            u = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            base = projected[t] if l == 0 else inp.biases[l]
            assert base is not None
            if cfg.skip_copy and l > 0 and not recording:
                s = _pre_activation_skipping_copy(base, u, transposed[l], flush, z[l - 1], H)
            else:
                s = torch.addmm(base, u, transposed[l])
            if recording:  # out of place: each nonlinearity keeps its result for backward
                gates, proposal, logit = torch.split(s, [3 * H, H, 1], dim=1)
                s = torch.cat([torch.sigmoid(gates), torch.tanh(proposal), logit], dim=1)
            else:  # in place: s is ours, and is saved as the activations
                s.narrow(1, 0, 3 * H).sigmoid_()
                s.narrow(1, 3 * H, H).tanh_()
            i, f, o, g, a = torch.split(s, [H, H, H, H, 1], dim=1)
            c_flush = i * g
            c_update = torch.addcmul(c_flush, f, c[l])
            tanh_flush, tanh_update = torch.tanh(c_flush), torch.tanh(c_update)
            if l == 0:  # z^0 = 1: UPDATE or FLUSH
                c_new = torch.addcmul(flush * c_flush, not_flush, c_update)
                h_new = o * torch.addcmul(flush * tanh_flush, not_flush, tanh_update)
            else:
                update = z[l - 1] * not_flush
                copy = not_z[l - 1] * not_flush
                c_new = torch.addcmul(torch.addcmul(flush * c_flush, update, c_update), copy, c[l])
                h_new = o * torch.addcmul(flush * tanh_flush, update, tanh_update)
                h_new = torch.addcmul(h_new, copy, h[l])
            v = cfg.rules[l].value(a, noise[l][t])
            if real is not None:
                h_new = torch.where(real, h_new, h[l])
                c_new = torch.where(real, c_new, c[l])
                v = torch.where(real, v, flush)
            acts[l].append(s)
            c_prev[l].append(c[l])
            h[l], c[l], z[l], not_z[l] = h_new, c_new, v, 1.0 - v
            hs[l].append(h_new)
            zs[l].append(v)
    out = _Outputs()
    out.hidden = torch.cat([torch.stack(x) for x in hs], dim=-1)
    out.z = torch.cat([torch.stack(x) for x in zs], dim=-1)
    activations = [torch.stack(x) for x in acts]
    out.logits = torch.cat([x[..., -1:] for x in activations], dim=-1)
    out.cells = c
    out.activations = [] if recording else activations
    out.c_prev = [] if recording else [torch.stack(x) for x in c_prev]
    return out


def _pre_activation_skipping_copy(
    base: Tensor, u: Tensor, transposed: Tensor, zp: Tensor, z_below: Tensor, H: int
) -> Tensor:
    """``base + u @ W^T`` where rows in COPY get only their boundary column.

    COPY rows (``z_p = 0`` and ``z_b = 0``) keep their state, so of their
    pre-activation only the boundary logit is used (their other columns are 0).
    """
    active = ((zp > 0) | (z_below > 0)).squeeze(1).nonzero().squeeze(1)
    s = u.new_zeros(u.shape[0], transposed.shape[1])
    s[:, 4 * H] = torch.addmv(base[..., 4 * H], u, transposed[:, 4 * H])  # every row's logit
    if active.numel() > 0:
        rows = torch.addmm(base, u[active], transposed)  # layers 2..L: base is the bias
        s[active, : 4 * H] = rows[:, : 4 * H]
    return s


#: Elements per precomputed backward term: the backward precomputes, for a block of
#: steps at once, every term that does not depend on the incoming gradient.
_BLOCK_ELEMENTS = 1 << 20


class _LayerTerms:
    """The backward's per-step terms of one layer for steps ``[start, stop)``, as tuples.

    Everything here depends only on the forward's values, so it is computed
    for a block of steps with a few large operations, and the step loop only
    indexes tuples.
    """

    def __init__(
        self, inp: _Inputs, saved: _Outputs, layer_h: list[Tensor], l: int, start: int, stop: int
    ) -> None:
        H = saved.c_prev[l].shape[-1]
        z = saved.z
        act = saved.activations[l][start:stop]
        i, f, o, g = torch.split(act[..., : 4 * H], H, dim=-1)
        c = saved.c_prev[l][start:stop]
        c_flush = i * g
        c_update = torch.addcmul(c_flush, f, c)
        tanh_flush, tanh_update = torch.tanh(c_flush), torch.tanh(c_update)
        flush = _previous(z[..., l : l + 1], inp.z0[l].unsqueeze(-1), start, stop)
        h_prev = _previous(layer_h[l], inp.h0[l], start, stop)
        not_flush = 1.0 - flush
        if l == 0:
            update = not_flush
            copy = None
        else:
            below = z[start:stop, :, l - 1 : l]
            update = not_flush * below
            copy = not_flush - update
        o_flush, o_update = o * tanh_flush, o * tanh_update
        # derivative of each pre-activation's nonlinearity; 1 for the boundary logit
        gates = act[..., : 3 * H]
        slope = torch.cat([gates * (1.0 - gates), 1.0 - g * g, torch.ones_like(act[..., -1:])], -1)
        self.i, self.f, self.g, self.c = i.unbind(0), f.unbind(0), g.unbind(0), c.unbind(0)
        self.flush, self.update = flush.unbind(0), update.unbind(0)
        self.copy = None if copy is None else copy.unbind(0)
        self.not_flush = not_flush.unbind(0)
        self.below = None if l == 0 else z[start:stop, :, l - 1 : l].unbind(0)
        self.mix = (flush * tanh_flush + update * tanh_update).unbind(0)
        self.d_update = (o - o_update * tanh_update).unbind(0)  # o (1 - tanh² c_U)
        self.d_flush = (o - o_flush * tanh_flush).unbind(0)
        # rows of the per-row dot products: [g_h, g_c] · [o tanh c_X, c_X] for X = F, U, C
        terms = [torch.cat([o_flush, c_flush], -1), torch.cat([o_update, c_update], -1)]
        if copy is not None:
            terms.append(torch.cat([h_prev, c], -1))
        self.dots = torch.stack(terms, dim=2).unbind(0)  # each (B, 3 or 2, 2H)
        self.slope = slope.unbind(0)
        self.h_above = (
            None
            if l + 1 == len(layer_h)
            else _previous(layer_h[l + 1], inp.h0[l + 1], start, stop).unbind(0)
        )


def _split_layers(hidden: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """``hidden`` ``(..., sum H)`` as one view per layer."""
    return list(torch.split(hidden, list(sizes), dim=-1))


def _below_input(inp: _Inputs, layer_h: Sequence[Tensor], l: int) -> Tensor:
    """``(T, B, H_{l-1})``: the bottom-up input of layer ``l`` at every step (after dropout)."""
    drop = inp.dropout[l]
    return layer_h[l - 1] if drop is None else layer_h[l - 1] * drop


def _previous(seq: Tensor, initial: Tensor, start: int, stop: int) -> Tensor:
    """``seq`` shifted by one step (``initial`` before the first), for steps ``[start, stop)``."""
    if start > 0:
        return seq[start - 1 : stop - 1]
    return torch.cat([initial.unsqueeze(0), seq[: stop - 1]])


def _backward(
    inp: _Inputs,
    cfg: SequenceConfig,
    saved: _Outputs,
    grad_hidden: Tensor | None,
    grad_z: Tensor | None,
    grad_logits: Tensor | None,
    grad_cells: Sequence[Tensor | None],
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """The hand-derived backward (module docstring), steps in reverse, upper layer first.

    Returns each layer's ``(T, B, 4H + 1)`` gradient of its pre-activation (layer
    1's is that of ``projected``) and the gradients of the initial ``h``, ``c``, ``z``.
    """
    T, B = inp.projected.shape[:2]
    L = cfg.num_layers
    sizes = cfg.hidden_sizes
    hidden = saved.hidden
    layer_h = _split_layers(hidden, sizes)
    below_in = [None if l == 0 else _below_input(inp, layer_h, l) for l in range(L)]
    boundary_slope = _boundary_slope(inp, cfg, saved)
    outer_grad_z = None if grad_z is None else grad_z.unbind(0)
    outer_grad_a = None if grad_logits is None else grad_logits.unbind(0)
    slopes = boundary_slope.unbind(0)
    outer_grad_h = (
        [None] * L
        if grad_hidden is None
        else [g.unbind(0) for g in _split_layers(grad_hidden, sizes)]
    )
    real_steps = None if inp.mask is None else inp.mask.unsqueeze(-1).to(hidden.dtype).unbind(0)
    keep_steps = None if inp.mask is None else inp.mask.unsqueeze(-1).unbind(0)
    below_steps = [None if b is None else b.unbind(0) for b in below_in]
    drop_steps = [None if d is None else d.unbind(0) for d in inp.dropout]
    gh = [torch.zeros_like(h) for h in inp.h0]
    gc = [torch.zeros_like(c) if g is None else g for c, g in zip(inp.c0, grad_cells, strict=True)]
    gz = [torch.zeros_like(z0).unsqueeze(1) for z0 in inp.z0]
    # Written functionally (no in-place, no out=), so that torch.func can batch it.
    grad_s_steps: list[list[Tensor]] = [[] for _ in sizes]
    weights = [w.contiguous() for w in inp.weights]
    block = max(1, _BLOCK_ELEMENTS // (B * 8 * max(sizes)))
    terms: list[_LayerTerms | None] = [None] * L
    for t in range(T - 1, -1, -1):
        if t % block == block - 1 or t == T - 1:
            start = t - t % block
            terms = [_LayerTerms(inp, saved, layer_h, l, start, t + 1) for l in range(L)]
        real = None if real_steps is None else real_steps[t]
        for l in range(L - 1, -1, -1):
            H = sizes[l]
            k = terms[l]
            assert k is not None
            j = t - (t - t % block)
            outer_h = outer_grad_h[l]
            g_h = gh[l] if outer_h is None else gh[l] + outer_h[t]
            g_c = gc[l]
            g_v = gz[l] if outer_grad_z is None else gz[l] + outer_grad_z[t][:, l : l + 1]
            g_a = g_v * slopes[t][:, l : l + 1]
            if outer_grad_a is not None:
                g_a = g_a + outer_grad_a[t][:, l : l + 1]
            g_cu = k.update[j] * torch.addcmul(g_c, g_h, k.d_update[j])
            g_cf = torch.addcmul(g_cu, k.flush[j], torch.addcmul(g_c, g_h, k.d_flush[j]))
            dots = torch.bmm(k.dots[j], torch.cat([g_h, g_c], 1).unsqueeze(2)).squeeze(2)
            g_c_prev = k.f[j] * g_cu
            if k.copy is not None:
                assert k.below is not None
                d_flush, d_update, d_copy = torch.split(dots, 1, dim=1)
                d_new = d_update - d_copy
                g_zp = d_flush - torch.addcmul(d_copy, k.below[j], d_new)
                g_zb = k.not_flush[j] * d_new
                g_c_prev = torch.addcmul(g_c_prev, k.copy[j], g_c)
                g_h_prev = k.copy[j] * g_h
            else:
                d_flush, d_update = torch.split(dots, 1, dim=1)
                g_zp = d_flush - d_update
                g_zb = None
                g_h_prev = None
            gs = torch.cat([g_cf * k.g[j], g_cu * k.c[j], g_h * k.mix[j], g_cf * k.i[j], g_a], 1)
            gs = gs * k.slope[j] if real is None else gs * k.slope[j] * real
            grad_s_steps[l].append(gs)
            g_u = gs.mm(weights[l])
            width = 0 if l == 0 else sizes[l - 1]
            g_rec = g_u[:, width : width + H]
            g_h_prev = g_rec if g_h_prev is None else g_h_prev + g_rec
            if l < L - 1:
                g_above = g_u[:, width + H :]
                assert k.h_above is not None
                g_zp = g_zp + (g_above * k.h_above[j]).sum(1, keepdim=True)
                gh[l + 1] = torch.addcmul(gh[l + 1], k.flush[j], g_above)
            if keep_steps is None:
                gh[l], gc[l], gz[l] = g_h_prev, g_c_prev, g_zp
            else:
                keep = keep_steps[t]
                gh[l] = torch.where(keep, g_h_prev, g_h)
                gc[l] = torch.where(keep, g_c_prev, g_c)
                gz[l] = torch.where(keep, g_zp, g_v)
            if l > 0:
                assert g_zb is not None and k.below is not None
                g_below = g_u[:, :width]
                below = below_steps[l]
                assert below is not None
                g_zb = g_zb + (g_below * below[t]).sum(1, keepdim=True)
                g_below = k.below[j] * g_below
                drop = drop_steps[l]
                if drop is not None:
                    g_below = g_below * drop[t]
                if real is not None:
                    g_zb = g_zb * real
                gh[l - 1] = gh[l - 1] + g_below
                gz[l - 1] = gz[l - 1] + g_zb
    grad_s = [torch.stack(steps[::-1]) for steps in grad_s_steps]
    return grad_s, gh, gc, [g.squeeze(1) for g in gz]


def _boundary_slope(inp: _Inputs, cfg: SequenceConfig, saved: _Outputs) -> Tensor:
    """``(T, B, L)``: the derivative of each drawn boundary with respect to its logit."""
    return torch.stack(
        [
            rule.derivatives(saved.logits[..., l], inp.noise[l], saved.z[..., l])[0]
            for l, rule in enumerate(cfg.rules)
        ],
        dim=-1,
    )


def _parameter_grads(
    inp: _Inputs, saved: _Outputs, grad_s: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor | None]]:
    """Each weight's gradient as one product over all ``T·B`` rows, and the biases'."""
    T = inp.projected.shape[0]
    L = len(grad_s)
    z = saved.z
    layer_h = _split_layers(saved.hidden, [g.shape[-1] // 4 for g in grad_s])
    grad_weights: list[Tensor] = []
    grad_biases: list[Tensor | None] = []
    for l in range(L):
        parts = [_previous(layer_h[l], inp.h0[l], 0, T)]
        if l > 0:
            parts.insert(0, z[..., l - 1 : l] * _below_input(inp, layer_h, l))
        if l < L - 1:
            flush = _previous(z[..., l : l + 1], inp.z0[l].unsqueeze(-1), 0, T)
            parts.append(flush * _previous(layer_h[l + 1], inp.h0[l + 1], 0, T))
        u = torch.cat(parts, dim=-1).flatten(0, 1)
        gs = grad_s[l].flatten(0, 1)
        grad_weights.append(gs.t().mm(u))
        grad_biases.append(None if l == 0 else gs.sum(0))
    return grad_weights, grad_biases


def _kernels_reading(
    ref: Tensor, tensors: Sequence[Tensor], dtypes: tuple[torch.dtype, ...]
) -> Any:
    """The native kernels if they can read ``tensors`` (``ref`` on the CPU in one of
    ``dtypes``; none wrapped by a torch.func transform), else ``None``."""
    if ref.device.type != "cpu" or ref.dtype not in dtypes:
        return None
    kernels = native.kernels()
    return kernels if kernels is not None and kernels.supported(list(tensors)) else None


def _native_kernels(inp: _Inputs, *more: Any) -> Any:
    """The native kernels when they can run this call (``inp`` and ``more`` tensors), else
    ``None``: not on the CPU, not float32/float64, or wrapped by a torch.func transform."""
    tensors = [t for t in (*inp.flatten(), *more) if isinstance(t, Tensor)]
    return _kernels_reading(inp.projected, tensors, (torch.float32, torch.float64))


def _product_kernels(*tensors: Tensor) -> Any:
    """The native kernels where their matrix product can take these float32 CPU tensors
    (on CPUs with AVX-512 about twice MKL's speed at the input product's shapes), else
    ``None``: elsewhere torch's product is as fast; under CPU autocast (which lowers
    ``F.linear``'s precision) and for empty tensors torch's runs."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() == 0 for t in tensors):
        return None
    if torch.is_autocast_enabled("cpu"):
        return None
    return _kernels_reading(tensors[0], tensors, (torch.float32,))


class InputProduct(torch.autograd.Function):
    """Layer 1's input product over all steps, ``F.linear(x, weight, bias)``, by the native
    kernels' matrix product where it runs (:func:`_product_kernels`), else by torch's; its
    backward likewise. A backward that is itself recorded (``create_graph=True``) and
    :mod:`torch.func` transforms use torch's products, which autograd differentiates.

    Example::

        >>> import torch
        >>> from stochrnn.hmrnn.fused import InputProduct
        >>> x, w, b = torch.randn(5, 2, 3), torch.randn(4, 3), torch.randn(4)
        >>> out = InputProduct.apply(x, w, b)
        >>> out.shape, torch.allclose(out, torch.nn.functional.linear(x, w, b), atol=1e-5)
        (torch.Size([5, 2, 4]), True)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        operands = (x, weight) if bias is None else (x, weight, bias)
        kernels = _product_kernels(*operands)
        if kernels is None:
            return F.linear(x, weight, bias)
        rows = x.reshape(-1, x.shape[-1])
        base = rows.new_empty(0) if bias is None else bias
        out: Tensor = kernels.matrix_product(rows, weight.t().contiguous(), base)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        kernels = None if torch.is_grad_enabled() else _product_kernels(g, rows, weight)
        empty = g.new_empty(0)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            gx = g.mm(weight) if kernels is None else kernels.matrix_product(g, weight, empty)
            grad_x = gx.view_as(x)
        if ctx.needs_input_grad[1]:
            t = g.t()
            grad_weight = t.mm(rows) if kernels is None else kernels.matrix_product(t, rows, empty)
        if ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        return grad_x, grad_weight, grad_bias


def _native_arguments(inp: _Inputs, cfg: SequenceConfig) -> list[Any]:
    empty = inp.projected.new_empty(0)
    opt = [
        [empty if t is None else t for t in group] for group in (inp.biases, inp.noise, inp.dropout)
    ]
    return [
        inp.projected,
        list(inp.weights),
        opt[0],
        inp.h0,
        inp.c0,
        inp.z0,
        opt[1],
        opt[2],
        torch.empty(0, dtype=torch.bool) if inp.mask is None else inp.mask,
        [int(rule.kind) for rule in cfg.rules],
        [float(rule.param()) for rule in cfg.rules],
        list(cfg.hidden_sizes),
    ]


def _native_forward(kernels: Any, inp: _Inputs, cfg: SequenceConfig) -> _Outputs:
    """The native forward, saving every step's activations for the backward."""
    L = cfg.num_layers
    result = kernels.forward(*_native_arguments(inp, cfg))
    out = _Outputs()
    out.hidden, out.z, out.logits = result[:3]
    out.cells = list(result[3 : 3 + L])
    out.activations = list(result[3 + L : 3 + 2 * L])
    out.c_prev = list(result[3 + 2 * L :])
    return out


def _native_inference(kernels: Any, inp: _Inputs, cfg: SequenceConfig) -> _Outputs:
    """The native forward without autograd: each row's gate work only where its operation
    reads it (``cfg.skip_copy``), and only the state is kept."""
    result = kernels.infer(*_native_arguments(inp, cfg), cfg.skip_copy)
    out = _Outputs()
    out.hidden, out.z, out.logits = result[:3]
    out.cells = list(result[3:])
    return out


def _native_backward(
    kernels: Any,
    inp: _Inputs,
    cfg: SequenceConfig,
    saved: _Outputs,
    grad_hidden: Tensor | None,
    grad_z: Tensor | None,
    grad_logits: Tensor | None,
    grad_cells: Sequence[Tensor | None],
) -> tuple[Tensor, list[Tensor], list[Tensor | None], list[Tensor], list[Tensor], list[Tensor]]:
    """The native backward: ``projected``'s gradient, the weights' and biases' (each one
    product per block of steps, so no layer keeps its whole pre-activation gradient), and
    the initial state's."""
    L = cfg.num_layers
    empty = inp.projected.new_empty(0)
    result = kernels.backward(
        inp.projected,
        inp.weights,
        inp.h0,
        inp.z0,
        [empty if d is None else d for d in inp.dropout],
        torch.empty(0, dtype=torch.bool) if inp.mask is None else inp.mask,
        saved.hidden,
        saved.z,
        saved.activations,
        saved.c_prev,
        empty if grad_hidden is None else grad_hidden,
        empty if grad_z is None else grad_z,
        empty if grad_logits is None else grad_logits,
        [empty if g is None else g for g in grad_cells],
        _boundary_slope(inp, cfg, saved),
        list(cfg.hidden_sizes),
    )
    g_w, g_b = list(result[1 : 1 + L]), list(result[1 + L : 1 + 2 * L])
    g_h, g_c, g_z = (list(result[1 + (2 + i) * L : 1 + (3 + i) * L]) for i in range(3))
    return result[0], g_w, [None, *g_b[1:]], g_h, g_c, g_z


def run_inference(inp: _Inputs, cfg: SequenceConfig) -> _Outputs:
    """The forward without autograd (nothing to differentiate), natively where possible.

    Unlike the other entry points, ``inp.projected`` holds the input itself ``(T, B, I)``
    and ``weights[0]``, ``biases[0]`` the first cell's whole weight and its bias: the
    native kernel joins layer 1's input product to each step's, so that rows in FLUSH
    skip its forget-gate columns too.
    """
    kernels = _native_kernels(inp)
    with torch.no_grad():
        if kernels is not None:
            return _native_inference(kernels, inp, cfg)
        width = inp.projected.shape[-1]  # else layer 1's input product over all steps at once
        first, bias = inp.weights[0], inp.biases[0]
        projected = F.linear(inp.projected, first[:, :width].contiguous(), bias)
        weights = [first[:, width:], *inp.weights[1:]]
        inp = replace(inp, projected=projected, weights=weights, biases=[None, *inp.biases[1:]])
        return run_sequence(inp, cfg)


class FusedSequence(torch.autograd.Function):
    """The whole sequence as one autograd node (module docstring).

    ``apply(config, *flat_inputs)`` returns ``(hidden, z, logits, *cells,
    *activations, *c_prev)``; the last two groups are saved for the backward and
    carry no gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(cfg: SequenceConfig, *flat: Any) -> tuple[Tensor, ...]:
        inp = _Inputs.unflatten(cfg.num_layers, flat)
        kernels = _native_kernels(inp)
        out = run_sequence(inp, cfg) if kernels is None else _native_forward(kernels, inp, cfg)
        return (out.hidden, out.z, out.logits, *out.cells, *out.activations, *out.c_prev)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        cfg, *flat = inputs
        L = cfg.num_layers
        ctx.cfg = cfg
        intermediates = output[3 + L :]
        ctx.mark_non_differentiable(*intermediates)
        # the gradients of unused outputs stay None: the intermediates' would otherwise be
        # filled with zeros, (T, B, 4H + 1) per layer, and never read
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*flat, *output[:3], *intermediates)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        cfg: SequenceConfig = ctx.cfg
        L = cfg.num_layers
        saved = ctx.saved_tensors
        num_flat = len(saved) - 3 - 2 * L
        outputs = _FusedSequenceGrad.apply(cfg, *saved, *grads[: 3 + L])  # type: ignore[no-untyped-call]
        flat_grads: list[Tensor | None] = [None] * num_flat
        for position, grad in zip(_differentiable_positions(L), outputs, strict=True):
            flat_grads[position] = grad
        needs = ctx.needs_input_grad[1:]
        return (None, *(g if need else None for g, need in zip(flat_grads, needs, strict=True)))


def _differentiable_positions(num_layers: int) -> list[int]:
    """Where, in the flat inputs, are ``projected``, the weights, the biases of layers
    2..L and the initial ``h``, ``c``, ``z``: the inputs that have gradients."""
    L = num_layers
    return [0, *range(1, L + 1), *range(L + 2, 2 * L + 1), *range(2 * L + 1, 5 * L + 1)]


class _FusedSequenceGrad(torch.autograd.Function):
    """The backward of :class:`FusedSequence` as an autograd node of its own.

    Its forward is the hand-derived backward (native or pure PyTorch); it is
    only recorded when the first backward itself is differentiated
    (``create_graph=True``), and then its backward re-runs the sequence under
    autograd from detached copies of the inputs and differentiates that twice,
    locally. Written as a function of tensors only, so :mod:`torch.func` can
    batch it (``generate_vmap_rule``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(cfg: SequenceConfig, *args: Any) -> tuple[Tensor, ...]:
        L = cfg.num_layers
        num_flat = len(args) - (3 + 2 * L) - (3 + L)
        inp = _Inputs.unflatten(L, args[:num_flat])
        saved = _Outputs()
        saved.hidden, saved.z, saved.logits = args[num_flat : num_flat + 3]
        rest = args[num_flat + 3 : num_flat + 3 + 2 * L]
        saved.activations, saved.c_prev = list(rest[:L]), list(rest[L:])
        grad_hidden, grad_z, grad_logits, *grad_cells = args[num_flat + 3 + 2 * L :]
        grads = (grad_hidden, grad_z, grad_logits, grad_cells)
        kernels = _native_kernels(inp, *args[num_flat:])
        if kernels is None:
            grad_s, g_h, g_c, g_z = _backward(inp, cfg, saved, *grads)
            g_w, g_b = _parameter_grads(inp, saved, grad_s)
            g_projected = grad_s[0]
        else:
            g_projected, g_w, g_b, g_h, g_c, g_z = _native_backward(
                kernels, inp, cfg, saved, *grads
            )
        return (g_projected, *g_w, *(g for g in g_b if g is not None), *g_h, *g_c, *g_z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        cfg, *args = inputs
        L = cfg.num_layers
        num_flat = len(args) - (3 + 2 * L) - (3 + L)
        ctx.cfg = cfg
        ctx.num_flat = num_flat
        ctx.num_args = len(args)
        ctx.save_for_backward(*args[:num_flat], *args[num_flat + 3 + 2 * L :])

    @staticmethod
    def backward(ctx: Any, *grad_grads: Tensor | None) -> tuple[Tensor | None, ...]:
        cfg: SequenceConfig = ctx.cfg
        L = cfg.num_layers
        saved = ctx.saved_tensors
        flat = list(saved[: ctx.num_flat])
        cotangents = list(saved[ctx.num_flat :])
        positions = _differentiable_positions(L)
        with torch.enable_grad():
            leaves = {i: flat[i].detach().requires_grad_() for i in positions}
            for i, leaf in leaves.items():
                flat[i] = leaf
            given = [i for i, g in enumerate(cotangents) if g is not None]
            cotangent_leaves = {i: cotangents[i].detach().requires_grad_() for i in given}
            out = run_sequence(_Inputs.unflatten(L, flat), cfg)
            outputs = [out.hidden, out.z, out.logits, *out.cells]
            first = torch.autograd.grad(
                [outputs[i] for i in given],
                list(leaves.values()),
                [cotangent_leaves[i] for i in given],
                create_graph=True,
                allow_unused=True,
            )
            terms = [
                (f, gg)
                for f, gg in zip(first, grad_grads, strict=True)
                if f is not None and gg is not None and f.requires_grad
            ]
            wrt = [*leaves.values(), *cotangent_leaves.values()]
            second = torch.autograd.grad(
                [f for f, _ in terms], wrt, [gg for _, gg in terms], allow_unused=True
            )
        result: list[Tensor | None] = [None] * ctx.num_args
        for position, g in zip(positions, second[: len(leaves)], strict=True):
            result[position] = g
        offset = ctx.num_flat + 3 + 2 * L
        for i, g in zip(given, second[len(leaves) :], strict=True):
            result[offset + i] = g
        return (None, *result)
