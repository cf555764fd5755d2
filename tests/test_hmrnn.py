"""Semantics of HMLSTMCell / HMRNN, pinned with estimators that return chosen boundaries."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from stochrnn import (
    HMRNN,
    AdaptiveTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    HMLSTMCell,
    HMRNNOutput,
    HMRNNState,
    Reinforce,
    Sample,
    StraightThrough,
)
from stochrnn.functional import binary_log_prob, straight_through

# --------------------------------------------------------------------------- test estimators


class FixedBoundary(Estimator):
    """Emits ``schedule[:, k]`` at its k-th call (one call per step when used by one layer).

    The value is exactly the schedule forward; the gradient is that of
    ``sigmoid(logits)`` (straight-through), so the boundary still has a gradient.
    """

    family: ClassVar[Any] = "binary"

    def __init__(self, schedule: Tensor) -> None:
        super().__init__(validate_args=False)
        self.schedule = schedule
        self.calls = 0

    def sample(
        self, logits: Tensor, context: Tensor | None = None, *, generator: Any = None
    ) -> Tensor:
        hard = self.schedule[:, self.calls].to(logits.dtype)
        self.calls += 1
        return straight_through(hard, torch.sigmoid(logits))


class ThresholdBoundary(Estimator):
    """Deterministic ``1[logit > 0]`` with a straight-through sigmoid gradient; the
    log-probability is that of a Bernoulli(logits), so it is not zero."""

    family: ClassVar[Any] = "binary"

    def __init__(self) -> None:
        super().__init__(validate_args=False)
        self.seen: list[Tensor] = []

    def sample(
        self, logits: Tensor, context: Tensor | None = None, *, generator: Any = None
    ) -> Tensor:
        self.seen.append(logits.detach())
        return straight_through((logits > 0).to(logits.dtype), torch.sigmoid(logits))


class SigmoidBoundary(Estimator):
    """Relaxed, deterministic boundaries ``sigmoid(logits)``: the model is smooth."""

    family: ClassVar[Any] = "binary"

    def sample(
        self, logits: Tensor, context: Tensor | None = None, *, generator: Any = None
    ) -> Tensor:
        return torch.sigmoid(logits)


def fixed(*schedules: Tensor) -> list[Estimator]:
    return [FixedBoundary(s) for s in schedules]


def random_state(rnn: HMRNN, batch: int, gen: torch.Generator, dtype: torch.dtype) -> HMRNNState:
    hs = tuple(torch.randn(batch, h, generator=gen, dtype=dtype) for h in rnn.hidden_sizes)
    cs = tuple(torch.randn(batch, h, generator=gen, dtype=dtype) for h in rnn.hidden_sizes)
    zs = tuple(torch.zeros(batch, dtype=dtype) for _ in rnn.hidden_sizes)
    return HMRNNState(hs, cs, zs)


def assert_outputs_close(a: HMRNNOutput, b: HMRNNOutput, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a.output, b.output, atol=atol, rtol=0)
    torch.testing.assert_close(a.boundaries, b.boundaries, atol=0, rtol=0)
    torch.testing.assert_close(a.log_prob, b.log_prob, atol=atol, rtol=0)
    for x, y in zip(
        a.state.h + a.state.c + a.state.z, b.state.h + b.state.c + b.state.z, strict=True
    ):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


# --------------------------------------------------------------------------- reference


def reference_run(rnn: HMRNN, x: Tensor, schedules: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The HM-LSTM written row by row with if/else on the operation (Chung et al. Eq. 1-7).

    Layer l emits ``schedules[l][:, t]`` at step t. Returns the hidden states of
    all layers ``(B, T, sum H)`` and the final cells ``(B, sum H)``.
    """
    batch, steps, _ = x.shape
    last = rnn.num_layers - 1
    h = [torch.zeros(batch, n, dtype=x.dtype) for n in rnn.hidden_sizes]
    c = [torch.zeros(batch, n, dtype=x.dtype) for n in rnn.hidden_sizes]
    z = [torch.zeros(batch, dtype=x.dtype) for _ in rnn.hidden_sizes]
    outputs = []
    for t in range(steps):
        h_old, z_old = list(h), list(z)
        for l, cell in enumerate(rnn.layers):
            n = cell.hidden_size
            below = x[:, t] if l == 0 else h[l - 1]  # the new state of the layer below
            z_below = torch.ones(batch, dtype=x.dtype) if l == 0 else z[l - 1]  # new, at t
            h_new, c_new = h_old[l].clone(), c[l].clone()
            for b in range(batch):
                s = cell.weight_recurrent @ h_old[l][b] + cell.bias
                if l < last:  # top-down from t-1, gated by this layer's boundary at t-1
                    assert cell.weight_top_down is not None
                    s = s + z_old[l][b] * (cell.weight_top_down @ h_old[l + 1][b])
                s = s + z_below[b] * (cell.weight_bottom_up @ below[b])
                i, f, o = torch.sigmoid(s[: 3 * n]).split(n)
                g = torch.tanh(s[3 * n : 4 * n])
                if z_old[l][b] == 1:  # FLUSH
                    c_new[b] = i * g
                elif z_below[b] == 1:  # UPDATE
                    c_new[b] = f * c[l][b] + i * g
                else:  # COPY
                    continue
                h_new[b] = o * torch.tanh(c_new[b])
            h[l], c[l] = h_new, c_new
            z[l] = schedules[l][:, t].to(x.dtype)
        outputs.append(torch.cat(h, dim=1))
    return torch.stack(outputs, dim=1), torch.cat(c, dim=1)


def schedule(gen: torch.Generator, batch: int, steps: int, rate: float = 0.5) -> Tensor:
    return (torch.rand(batch, steps, generator=gen) < rate).double()


# --------------------------------------------------------------------------- semantics


def test_matches_row_by_row_reference_for_random_boundaries() -> None:
    """UPDATE/COPY/FLUSH chosen per row, bottom-up gated by z below at t, top-down by
    this layer's z at t-1, the top layer without top-down: all as the reference."""
    gen = torch.Generator().manual_seed(0)
    batch, steps = 4, 7
    schedules = [schedule(gen, batch, steps) for _ in range(3)]
    rnn = HMRNN(3, [4, 3, 2], 3, boundary=fixed(*schedules)).double()
    x = torch.randn(batch, steps, 3, generator=gen, dtype=torch.float64)
    out = rnn(x)
    expected_h, expected_c = reference_run(rnn, x, schedules)
    torch.testing.assert_close(out.output, expected_h, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat(out.state.c, dim=1), expected_c, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.boundaries, torch.stack(schedules, dim=-1))


def test_zero_boundaries_in_layer_one_leave_upper_layers_at_initial_state() -> None:
    gen = torch.Generator().manual_seed(1)
    batch, steps = 3, 6
    zeros = torch.zeros(batch, steps)
    rnn = HMRNN(4, [5, 4, 3], 3, boundary=fixed(zeros, zeros, zeros)).double()
    start = random_state(rnn, batch, gen, torch.float64)
    out = rnn(torch.randn(batch, steps, 4, generator=gen, dtype=torch.float64), state=start)
    for l in (1, 2):  # COPY at every step: exactly the initial state
        assert torch.equal(out.hidden[l], start.h[l].unsqueeze(1).expand(-1, steps, -1))
        assert torch.equal(out.state.c[l], start.c[l])
    assert not torch.equal(out.state.h[0], start.h[0])  # layer 1 still UPDATEs (z^0 = 1)


def test_all_one_boundaries_flush_every_step() -> None:
    """Starting from z = 1, every step is a FLUSH: the cell state from before is never read."""
    gen = torch.Generator().manual_seed(2)
    batch, steps = 3, 5
    ones = torch.ones(batch, steps)
    x = torch.randn(batch, steps, 4, generator=gen, dtype=torch.float64)
    rnn = HMRNN(4, [5, 3], 2).double()
    start = random_state(rnn, batch, gen, torch.float64)
    start = start._replace(z=tuple(torch.ones_like(z) for z in start.z))
    outs = []
    for cells in (start.c, tuple(torch.randn_like(c) for c in start.c)):
        rnn.cells[0].boundary = FixedBoundary(ones)
        rnn.cells[1].boundary = FixedBoundary(ones)
        outs.append(rnn(x, state=start._replace(c=cells)))
    torch.testing.assert_close(outs[0].output, outs[1].output, atol=0, rtol=0)
    # and the new cell is i * g of the step's pre-activation
    cell = rnn.layers[1]
    h1, h2 = outs[0].hidden[0][:, 0], start.h[1]
    s = torch.cat([h1, h2], 1) @ torch.cat([cell.weight_bottom_up, cell.weight_recurrent], 1).T
    s = s + cell.bias
    i, g = torch.sigmoid(s[:, :3]), torch.tanh(s[:, 9:12])
    torch.testing.assert_close(
        outs[0].hidden[1][:, 0], torch.sigmoid(s[:, 6:9]) * torch.tanh(i * g)
    )


def test_update_is_an_lstm_step_with_the_same_weights() -> None:
    """z_{t-1} = 0, z_below = 1 is torch.nn.LSTMCell (gate rows reordered i,f,o,g -> i,f,g,o)."""
    gen = torch.Generator().manual_seed(3)
    cell = HMLSTMCell(input_size=4, hidden_size=5, above_size=3, boundary=StraightThrough())
    lstm = nn.LSTMCell(4, 5)
    order = torch.cat([torch.arange(0, 10), torch.arange(15, 20), torch.arange(10, 15)])
    with torch.no_grad():
        lstm.weight_ih.copy_(cell.weight_bottom_up[order])
        lstm.weight_hh.copy_(cell.weight_recurrent[order])
        lstm.bias_ih.copy_(cell.bias[order])
        lstm.bias_hh.zero_()
    x, h, c = (torch.randn(2, n, generator=gen) for n in (4, 5, 5))
    out = cell(x, h, c, torch.zeros(2), z_below=torch.ones(2), h_above=torch.randn(2, 3))
    expected_h, expected_c = lstm(x, (h, c))
    torch.testing.assert_close(out.h, expected_h)
    torch.testing.assert_close(out.c, expected_c)


def test_cell_matches_the_fused_stack() -> None:
    """Stepping the cells by hand gives what HMRNN computes with its fused products."""
    gen = torch.Generator().manual_seed(4)
    rnn = HMRNN(3, [4, 2], 2, boundary=StraightThrough()).double()
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    out = rnn(x)
    state = rnn.initial_state(2, dtype=torch.float64)
    h, c, z = list(state.h), list(state.c), list(state.z)
    for t in range(4):
        low = rnn.layers[0](x[:, t], h[0], c[0], z[0], h_above=h[1])
        top = rnn.layers[1](low.h, h[1], c[1], z[1], z_below=low.z)
        h, c, z = [low.h, top.h], [low.c, top.c], [low.z, top.z]
        torch.testing.assert_close(out.output[:, t], torch.cat(h, 1))


def test_boundary_gets_gradient_through_the_operation_it_selects() -> None:
    """With no bottom-up weights into layer 2, z^1 reaches layer 2 only through the
    COPY/UPDATE blend; a torch.where choice would give it no gradient."""
    rnn = HMRNN(3, [4, 4], 2, boundary=StraightThrough()).double()
    with torch.no_grad():
        rnn.layers[1].weight_bottom_up.zero_()
    out = rnn(torch.randn(2, 3, 3, dtype=torch.float64))
    out.hidden[1].sum().backward()
    grad = rnn.layers[0].bias.grad
    assert grad is not None and grad[-1].abs() > 1e-6  # the boundary logit's bias


def test_step_over_a_sequence_equals_the_full_call() -> None:
    rnn = HMRNN(3, [4, 3, 2], 3)
    x = torch.randn(2, 6, 3)
    full = rnn(x, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    state = None
    for t in range(6):
        y, state = rnn.step(x[:, t], state, generator=gen)
        torch.testing.assert_close(y, full.output[:, t])
        torch.testing.assert_close(torch.stack(state.z, 1), full.boundaries[:, t])


def test_two_chunks_with_carried_state_equal_the_whole_sequence() -> None:
    rnn = HMRNN(3, 4, 3, layer_norm=True)
    x = torch.randn(2, 9, 3)
    whole = rnn(x, generator=torch.Generator().manual_seed(6))
    gen = torch.Generator().manual_seed(6)
    first = rnn(x[:, :4], generator=gen)
    second = rnn(x[:, 4:], state=first.state, generator=gen)
    torch.testing.assert_close(torch.cat([first.output, second.output], 1), whole.output)
    torch.testing.assert_close(first.log_prob + second.log_prob, whole.log_prob)
    assert_outputs_close(
        second._replace(log_prob=whole.log_prob),
        whole._replace(output=second.output, boundaries=second.boundaries),
    )


def test_masked_steps_change_nothing() -> None:
    """Row 1 with steps 2, 3 and 6 padded equals row 1 run on its real steps only;
    padded steps have zero output, boundary and log-probability."""
    torch.manual_seed(7)
    rnn = HMRNN(3, [4, 3], 2, boundary=ThresholdBoundary()).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, [2, 3, 6]] = False
    out = rnn(x, mask=mask)
    real = rnn(x[1:, mask[1]])
    torch.testing.assert_close(out.output[1, mask[1]], real.output[0])
    torch.testing.assert_close(out.log_prob[1], real.log_prob[0])
    torch.testing.assert_close(out.layer_log_prob[1], real.layer_log_prob[0])
    for ours, theirs in zip(out.state, real.state, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a[1], b[0])
    assert not out.output[1, ~mask[1]].any() and not out.boundaries[1, ~mask[1]].any()
    unmasked = rnn(x[:1])  # row 0 is unaffected by row 1's padding
    torch.testing.assert_close(out.output[0], unmasked.output[0])


def test_log_prob_is_the_bernoulli_log_probability_of_the_boundaries() -> None:
    est = ThresholdBoundary()
    rnn = HMRNN(3, [4, 3], 2, boundary=est)
    out = rnn(torch.randn(5, 4, 3))
    logits = torch.stack(est.seen).view(4, 2, 5).permute(2, 0, 1)  # (B, T, L)
    expected = binary_log_prob(logits, out.boundaries.detach()).sum(dim=1)
    torch.testing.assert_close(out.layer_log_prob, expected)
    torch.testing.assert_close(out.log_prob, expected.sum(-1))


def test_time_major_layout_matches_batch_first() -> None:
    rnn = HMRNN(3, 4, 2, boundary=StraightThrough())
    time_major = HMRNN(3, 4, 2, boundary=StraightThrough(), batch_first=False)
    time_major.load_state_dict(rnn.state_dict())
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    a, b = rnn(x, mask=mask), time_major(x.transpose(0, 1), mask=mask.t())
    torch.testing.assert_close(a.output, b.output.transpose(0, 1))
    torch.testing.assert_close(a.boundaries, b.boundaries.transpose(0, 1))
    torch.testing.assert_close(a.hidden[1], b.hidden[1].transpose(0, 1))
    torch.testing.assert_close(a.log_prob, b.log_prob)


def test_dropout_only_touches_the_bottom_up_input_and_only_in_training() -> None:
    rnn = HMRNN(3, 8, 2, boundary=StraightThrough(), dropout=0.5)
    plain = HMRNN(3, 8, 2, boundary=StraightThrough())
    plain.load_state_dict(rnn.state_dict())
    x = torch.randn(4, 3, 3)
    torch.manual_seed(0)
    train = rnn(x)
    torch.testing.assert_close(train.hidden[0][:, 0], plain(x).hidden[0][:, 0])  # layer 1, t=0
    assert not torch.allclose(train.hidden[1], plain(x).hidden[1])
    torch.testing.assert_close(rnn.eval()(x).output, plain(x).output)


def test_gated_output_embedding() -> None:
    """h^e = ReLU(sum_l g^l W_l h^l), g^l = sigm(w_l . [h^1; ...; h^L])."""
    rnn = HMRNN(3, [4, 2], 2, boundary=StraightThrough(), output_embedding_size=5)
    x = torch.randn(2, 3, 3)
    out = rnn(x)
    assert rnn.output_size == 5 and out.output.shape == (2, 3, 5)
    emb = rnn.output_embedding
    assert emb is not None
    hidden = torch.cat(out.hidden, -1)
    gates = torch.sigmoid(hidden @ emb.gate.weight.T)
    w = emb.projection.weight
    expected = torch.relu(
        gates[..., :1] * (out.hidden[0] @ w[:, :4].T)
        + gates[..., 1:] * (out.hidden[1] @ w[:, 4:].T)
    )
    torch.testing.assert_close(out.output, expected)
    y, _ = rnn.step(x[:, 0])
    torch.testing.assert_close(y, out.output[:, 0])


def test_gradcheck_float64_with_a_relaxed_estimator() -> None:
    """Exact gradients w.r.t. input, initial state and every parameter, through the
    blend, layer norm and a mask, with relaxed (smooth) boundaries ``sigmoid(logit)``.
    (GumbelSigmoid(hard=False) with fixed noise would do, but it computes in float32.)"""
    rnn = HMRNN(2, [3, 2], 2, boundary=SigmoidBoundary(), layer_norm=True).double()
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    start = random_state(rnn, 2, gen, torch.float64)
    z0 = tuple(torch.rand(2, generator=gen, dtype=torch.float64) for _ in range(2))
    leaves = [x, *start.h, *start.c, *z0]
    for t in leaves:
        t.requires_grad_(True)
    names = [n for n, _ in rnn.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in rnn.parameters()]

    def run(*args: Tensor) -> tuple[Tensor, Tensor]:
        x, h0, h1, c0, c1, z0, z1, *ps = args
        out = torch.func.functional_call(
            rnn,
            dict(zip(names, ps, strict=True)),
            (x, HMRNNState((h0, h1), (c0, c1), (z0, z1)), mask),
        )
        return out.output, out.boundaries

    assert torch.autograd.gradcheck(run, (*leaves, *params), atol=1e-6)


def test_autocast_bfloat16_trains() -> None:
    """Under autocast the step products run in bfloat16; gradients keep the parameters'
    dtype and agree with float32 to bfloat16 precision (relative 5e-2)."""
    torch.manual_seed(12)
    rnn = HMRNN(3, 8, 2, boundary=StraightThrough())
    x = torch.randn(4, 5, 3)
    rnn(x).output.sum().backward()
    exact = [p.grad.clone() for p in rnn.parameters() if p.grad is not None]
    rnn.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rnn(x)
    out.output.float().sum().backward()
    assert out.layer_log_prob.dtype == torch.bfloat16  # the boundary logits came in bfloat16
    for e, p in zip(exact, [p for p in rnn.parameters() if p.grad is not None], strict=True):
        assert p.grad is not None and p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, e, rtol=5e-2, atol=5e-2 * float(e.abs().max()))


# --------------------------------------------------------------------------- estimators


class TanhThreshold(Estimator):
    """A user's own binary estimator: threshold with a straight-through tanh gradient."""

    family: ClassVar[Any] = "binary"

    def sample(
        self, logits: Tensor, context: Tensor | None = None, *, generator: Any = None
    ) -> Tensor:
        return straight_through((logits > 0).to(logits.dtype), 0.5 * (torch.tanh(logits) + 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GumbelSigmoid(0.5),
        lambda: StraightThrough(stochastic=True, slope_rate=0.04),
        lambda: Reinforce(categorical=False),
        TanhThreshold,
        lambda: [GumbelSigmoid(AdaptiveTemperature(n)) for n in (4, 3)],
    ],
    ids=["gumbel", "straight-through", "reinforce", "user", "adaptive-per-layer"],
)
def test_swapping_the_estimator_needs_no_other_change(make: Any) -> None:
    torch.manual_seed(10)
    rnn = HMRNN(3, [4, 3], 2, boundary=make())
    out = rnn(torch.randn(6, 5, 3))
    reward = -out.output.detach().pow(2).mean(dim=(1, 2))
    loss = out.output.pow(2).mean() + rnn.surrogate_loss(out.log_prob, reward)
    loss.backward()
    assert set(out.boundaries.unique().tolist()) <= {0.0, 1.0}
    boundary_bias_grad = rnn.layers[0].bias.grad
    assert boundary_bias_grad is not None and boundary_bias_grad[-1] != 0  # learns boundaries


def test_default_boundaries_are_fresh_gumbel_sigmoids_and_a_single_one_is_shared() -> None:
    rnn = HMRNN(3, 4, 3)
    assert all(isinstance(b, GumbelSigmoid) for b in rnn.boundaries)
    assert len({id(b) for b in rnn.boundaries}) == 3
    assert len({id(b) for b in HMRNN(3, 4, 3).boundaries} | {id(b) for b in rnn.boundaries}) == 6
    assert float(rnn.boundaries[0].temperature()) == pytest.approx(0.3)
    shared = StraightThrough()
    assert all(b is shared for b in HMRNN(3, 4, 3, boundary=shared).boundaries)


def test_surrogate_loss_of_a_shared_reinforce_updates_its_baseline_once() -> None:
    est = Reinforce(categorical=False)
    rnn = HMRNN(3, 4, 2, boundary=est)
    out = rnn(torch.randn(4, 3, 3))
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = rnn.surrogate_loss(out.log_prob, reward)
    torch.testing.assert_close(loss, -(reward * out.log_prob).sum() / 4)
    torch.testing.assert_close(est.baseline.value(), torch.tensor(0.25))  # 0.1 * mean, once


def test_surrogate_loss_per_layer_estimators() -> None:
    ests = [Reinforce(categorical=False), Reinforce(categorical=False, weight=2.0)]
    rnn = HMRNN(3, 4, 2, boundary=ests)
    out = rnn(torch.randn(4, 3, 3))
    reward = torch.ones(4)
    loss = rnn.surrogate_loss(out.layer_log_prob, reward)
    expected = -(out.layer_log_prob[:, 0].sum() + 2 * out.layer_log_prob[:, 1].sum()) / 4
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match=r"layer_log_prob"):
        rnn.surrogate_loss(out.log_prob, reward)
    with pytest.raises(ValueError, match=r"L=2"):
        rnn.surrogate_loss(out.layer_log_prob[:, :1], reward)
    assert HMRNN(3, 4, 2).surrogate_loss(out.log_prob, reward) == 0  # pathwise: zero


# --------------------------------------------------------------------------- state and errors


def test_initial_state_and_detach() -> None:
    rnn = HMRNN(3, [4, 2], 2).double()
    state = rnn.initial_state(5)
    assert [h.shape for h in state.h] == [(5, 4), (5, 2)] and state.z[1].shape == (5,)
    assert all(t.dtype == torch.float64 and not t.any() for t in state.h + state.c + state.z)
    assert rnn.initial_state(1, dtype=torch.float32).h[0].dtype == torch.float32
    out = rnn(torch.randn(2, 3, 3, dtype=torch.float64))
    assert all(t.grad_fn is None for t in out.state.detach().h)


def _with_z(state: HMRNNState, dtype: torch.dtype) -> HMRNNState:
    return state._replace(z=tuple(z.to(dtype) for z in state.z))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r(torch.randn(2, 3, 5)), ValueError, r"input_size=3, got \(2, 3, 5\)"),
        (lambda r: r(torch.randn(2, 3)), ValueError, r"\(B, T, input\).*got \(2, 3\)"),
        (lambda r: r(torch.ones(2, 3, 3, dtype=torch.long)), TypeError, "floating-point"),
        (
            lambda r: r(torch.randn(2, 4, 3), mask=torch.ones(4, 2)),
            ValueError,
            r"mask expected shape \(2, 4\).*got \(4, 2\)",
        ),
        (
            lambda r: r(torch.randn(2, 4, 3), state=r.initial_state(3)),
            ValueError,
            r"state.h\[0\] expected shape \(2, 4\), got \(3, 4\)",
        ),
        (
            lambda r: r(torch.randn(2, 4, 3), state=HMRNN(3, 4, 3).initial_state(2)),
            ValueError,
            r"one tensor per layer \(2\), got 3",
        ),
        (
            lambda r: r(torch.randn(2, 4, 3), state=HMRNN(3, [4, 5], 2).initial_state(2)),
            ValueError,
            r"state.h\[1\] expected shape \(2, 4\), got \(2, 5\)",
        ),
        (lambda r: r(torch.randn(2, 4, 3), state=(1, 2)), ValueError, "HMRNNState"),
        (lambda r: r(torch.randn(2, 0, 3)), ValueError, r"no time steps: shape \(2, 0, 3\)"),
        (lambda r: r.step(torch.randn(2, 4)), ValueError, r"\(B, input\)"),
        (lambda r: r.step(torch.randn(2, 3), r.initial_state(1)), ValueError, "expected shape"),
        (
            lambda r: r(torch.randn(2, 4, 3), state=r.initial_state(2, dtype=torch.float64)),
            TypeError,
            r"state.h\[0\] has dtype torch.float64 but x has torch.float32",
        ),
        (
            lambda r: r.step(torch.randn(2, 3), _with_z(r.initial_state(2), torch.bool)),
            TypeError,
            r"state.z\[0\] has dtype torch.bool but x has torch.float32",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call(HMRNN(3, 4, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"boundary": GumbelSoftmax()}, TypeError, "binary estimator, got GumbelSoftmax"),
        ({"boundary": Reinforce()}, TypeError, "binary estimator, got Reinforce"),
        ({"boundary": object()}, TypeError, "boundary must be an estimator"),
        ({"boundary": [StraightThrough()]}, ValueError, r"one estimator per layer \(2\), got 1"),
        ({"hidden_size": [4, 4, 4]}, ValueError, r"one size per layer \(2\), got 3"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be a positive int, got 0"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        ({"output_embedding_size": -1}, ValueError, "output_embedding_size"),
        ({"init_gain": 0.0}, ValueError, "init_gain must be a finite number > 0, got 0.0"),
        ({"init_gain": float("nan")}, ValueError, "init_gain must be a finite number > 0"),
        ({"init_gain": "3"}, TypeError, "init_gain must be a number, got str"),
    ],
)
def test_bad_construction_is_a_clear_error(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"input_size": 3, "hidden_size": 4, "num_layers": 2, **kwargs}
    with pytest.raises(error, match=message):
        HMRNN(**arguments)


@pytest.mark.parametrize("gain", [0.5, 1.0, 3.0])
def test_init_gain_scales_the_weights_range_and_not_the_bias(gain: float) -> None:
    torch.manual_seed(0)
    rnn = HMRNN(16, [64, 32], 2, init_gain=gain)
    for cell in rnn.layers:
        bound = 1.0 / cell.hidden_size**0.5
        weight, bias = cell.weight.detach(), cell.bias.detach()
        # thousands of uniform draws: the extremes lie within 1% of the bounds
        assert gain * bound * 0.99 < weight.abs().max() <= gain * bound
        assert bound * 0.9 < bias.abs().max() <= bound
        # the mean |w| of U(-a, a) is a/2: rules out a range that is right only at the edges
        assert weight.abs().mean() == pytest.approx(gain * bound / 2, rel=0.05)


def test_cell_requires_h_above_exactly_when_it_has_a_layer_above() -> None:
    h, c, z = torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2)
    with pytest.raises(ValueError, match="above_size=3"):
        HMLSTMCell(3, 4, above_size=3)(torch.zeros(2, 3), h, c, z)
    with pytest.raises(ValueError, match=r"above_size=None.*\(2, 3\)"):
        HMLSTMCell(3, 4)(torch.zeros(2, 3), h, c, z, h_above=torch.zeros(2, 3))


def test_weight_blocks_are_views_of_one_parameter() -> None:
    low, top = HMRNN(3, [4, 2], 2).layers
    assert low.weight_top_down is not None and top.weight_top_down is None
    blocks = (low.weight_bottom_up, low.weight_recurrent, low.weight_top_down)
    assert [tuple(b.shape) for b in blocks] == [(17, 3), (17, 4), (17, 2)]
    assert torch.equal(torch.cat(blocks, dim=1), low.weight)
    assert all(
        b.untyped_storage().data_ptr() == low.weight.untyped_storage().data_ptr() for b in blocks
    )
    assert [n for n, _ in top.named_parameters()] == ["weight", "bias"]


def test_repr_and_output_size() -> None:
    rnn = HMRNN(3, [4, 2], 2)
    assert "hidden_size=[4, 2]" in repr(rnn) and "above_size=2" in repr(rnn)
    assert rnn.output_size == 6


# --------------------------------------------------------------------------- compile and devices


def test_compiled_step_matches_eager() -> None:
    """torch.compile of the per-step function: same values and gradients (slow: ~15 s)."""
    torch.manual_seed(11)
    eager = HMRNN(3, 4, 2, boundary=TanhThreshold())
    compiled = HMRNN(3, 4, 2, boundary=TanhThreshold(), compile_step=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 4, 3)
    a, b = eager(x), compiled(x)
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.boundaries, b.boundaries)
    a.output.sum().backward()
    b.output.sum().backward()
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda() -> None:
    rnn = HMRNN(3, [4, 3], 2).cuda()
    x = torch.randn(2, 5, 3, device="cuda")
    out = rnn(x, mask=torch.ones(2, 5, device="cuda"))
    out.output.sum().backward()
    assert out.output.device.type == "cuda" and out.state.z[0].device.type == "cuda"
    cpu = HMRNN(3, [4, 3], 2, boundary=StraightThrough())
    gpu = HMRNN(3, [4, 3], 2, boundary=StraightThrough()).cuda()
    gpu.load_state_dict(cpu.state_dict())
    torch.testing.assert_close(gpu(x).output.cpu(), cpu(x.cpu()).output, atol=1e-5, rtol=1e-4)


def test_prior_loss_is_the_boundary_prior_and_reaches_the_boundary_weights() -> None:
    from stochrnn import BoundaryRatePrior

    torch.manual_seed(21)
    prior = BoundaryRatePrior([0.5, 0.1], weight=2.0)
    rnn = HMRNN(3, 4, num_layers=2, boundary_prior=prior)
    x = torch.randn(5, 6, 3)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[0, 3:] = False
    out = rnn(x, mask=mask)
    loss = rnn.prior_loss(out, mask)
    torch.testing.assert_close(loss, prior(out, rnn.boundaries, mask))
    assert loss > 0
    loss.backward()
    boundary_rows = [cell.weight.grad[-1] for cell in rnn.layers]  # the logits' rows
    assert all(g is not None and g.abs().sum() > 0 for g in boundary_rows)
    assert HMRNN(3, 4, num_layers=2, boundary_prior=None).prior_loss(out).item() == 0.0


def test_default_prior_is_a_fresh_weak_rate_prior_outside_the_state_dict() -> None:
    from stochrnn import BoundaryRatePrior

    a, b = HMRNN(3, 4, num_layers=2), HMRNN(3, 4, num_layers=2)
    assert (
        isinstance(a.boundary_prior, BoundaryRatePrior) and a.boundary_prior is not b.boundary_prior
    )
    assert a.boundary_prior.weight == 0.1
    torch.testing.assert_close(a.boundary_prior.targets, torch.tensor([0.5], dtype=torch.float64))
    assert not any(key.startswith("boundary_prior") for key in a.state_dict())
    torch.manual_seed(0)
    out = a(torch.randn(2, 5, 3))
    assert a.prior_loss(out) > 0


class NoGeneratorThreshold(nn.Module):
    """A user's boundary module honouring ``est(logits, context=None) -> Sample`` only:
    no ``generator`` keyword, no stochrnn base class, no declared family."""

    def forward(self, logits: Tensor, context: Tensor | None = None) -> Sample:
        soft = torch.sigmoid(logits)
        value = straight_through((logits > 0).to(logits.dtype), soft)
        return Sample(value, binary_log_prob(logits, value.detach()))


def test_a_module_without_a_generator_keyword_plugs_in() -> None:
    torch.manual_seed(22)
    rnn = HMRNN(3, 4, num_layers=2, boundary=NoGeneratorThreshold())
    out = rnn(torch.randn(2, 5, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.boundaries, (out.boundary_logits > 0).float())
    out.output.sum().backward()
    assert rnn.cells[0].weight.grad is not None


def test_bad_priors_and_dtypes_are_clear_errors_at_the_start() -> None:
    from stochrnn import BoundaryRatePrior

    with pytest.raises(TypeError, match="boundary_prior must be a module"):
        HMRNN(3, 4, num_layers=2, boundary_prior="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"3 targets \[0.3, 0.3, 0.3\], the model has 2 layers"):
        HMRNN(3, 4, num_layers=2, boundary_prior=BoundaryRatePrior([0.3, 0.3, 0.3]))
    rnn = HMRNN(3, 4, num_layers=2)
    with pytest.raises(TypeError, match=r"x has dtype torch\.float64 but the model.s parameters"):
        rnn(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"one step: use rnn\.step"):
        rnn(torch.randn(2, 3))
