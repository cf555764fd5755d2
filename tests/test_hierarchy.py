"""Tests of stochrnn.hierarchy: boundary diagnostics and the boundary-rate prior."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import stochrnn
from stochrnn import (
    HMRNN,
    BoundaryRatePrior,
    GumbelSigmoid,
    HierarchyMeter,
    HMRNNOutput,
    HMRNNState,
    Reinforce,
    StraightThrough,
    boundary_probability,
    hierarchy_stats,
)

# --------------------------------------------------------------------------- helpers


def boundaries(*layers: list[int]) -> Tensor:
    """One sequence, (1, T, L), from one list of 0/1 per layer."""
    return torch.tensor(layers, dtype=torch.float32).t().unsqueeze(0)


def output_with_logits(logits: Tensor) -> HMRNNOutput:
    """A real HMRNNOutput whose boundary_logits are replaced by ``logits`` (B, T, L)."""
    batch, steps, layers = logits.shape
    out = HMRNN(2, 3, num_layers=layers)(torch.zeros(batch, steps, 2))
    return out._replace(boundary_logits=logits)


# --------------------------------------------------------------------------- diagnostics


def test_hand_built_two_layers() -> None:
    # t:        0  1  2  3  4  5
    z1 = [1, 0, 1, 0, 0, 1]
    z2 = [0, 0, 1, 0, 0, 0]
    stats = hierarchy_stats(boundaries(z1, z2))
    one, two = stats.layers
    # Layer 1: previous own boundary [0,1,0,1,0,0]: FLUSH at t=1,3, UPDATE elsewhere.
    assert one.firing_rate == pytest.approx(3 / 6)
    assert (one.update_share, one.copy_share, one.flush_share) == pytest.approx((4 / 6, 0, 2 / 6))
    assert one.input_share == 1.0
    assert one.segments == 3  # ends at t=0, 2, 5: lengths 1, 2, 3
    assert one.segment_mean == pytest.approx(2.0)
    assert dict(one.segment_quantiles)[0.5] == pytest.approx(2.0)
    # Layer 2: previous own boundary [0,0,0,1,0,0]; below [1,0,1,0,0,1].
    assert two.firing_rate == pytest.approx(1 / 6)
    assert (two.update_share, two.copy_share, two.flush_share) == pytest.approx(
        (3 / 6, 2 / 6, 1 / 6)
    )
    assert two.input_share == pytest.approx(3 / 6)
    assert two.segments == 2  # ends at t=2 (boundary) and t=5 (sequence end): 3, 3
    assert [length for _, length in two.segment_quantiles] == [3.0, 3.0, 3.0]
    assert stats.cut_off == ()


def test_shares_sum_to_one_and_steps_counted() -> None:
    z = (torch.rand(3, 17, 3, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    mask = torch.ones(3, 17, dtype=torch.bool)
    mask[1, 11:] = False
    for layer in hierarchy_stats(z, mask).layers:
        assert layer.steps == 3 * 17 - 6
        assert layer.update_share + layer.copy_share + layer.flush_share == pytest.approx(1.0)


def test_boundaries_are_thresholded_at_one_half() -> None:
    soft = boundaries([0.2, 0.7, 0.51, 0.49])
    assert hierarchy_stats(soft).firing_rates == (0.5,)


def test_initial_state_z_makes_the_first_step_a_flush() -> None:
    z = boundaries([0, 0, 0, 0])
    assert hierarchy_stats(z).layers[0].flush_share == 0.0
    state = HMRNNState(h=(torch.zeros(1, 4),), c=(torch.zeros(1, 4),), z=(torch.ones(1),))
    assert hierarchy_stats(z, state=state).layers[0].flush_share == pytest.approx(1 / 4)


def test_padding_carries_the_previous_boundary_across_the_gap() -> None:
    # Real steps 0, 1, 4, 5; the boundary at step 1 makes step 4 (the next real one) a FLUSH.
    z = boundaries([0, 1, 0, 0, 0, 0])
    mask = torch.tensor([[True, True, False, False, True, True]])
    padded = hierarchy_stats(z, mask).layers[0]
    compact = hierarchy_stats(boundaries([0, 1, 0, 0])).layers[0]
    assert padded == compact
    assert padded.flush_share == pytest.approx(1 / 4)


def test_padded_steps_are_ignored_whatever_their_value() -> None:
    z = boundaries([1, 0, 1, 1, 1], [0, 1, 0, 1, 1])
    mask = torch.tensor([[True, True, True, False, False]])
    expected = hierarchy_stats(boundaries([1, 0, 1], [0, 1, 0]))
    assert hierarchy_stats(z, mask) == expected


def test_time_major_layout() -> None:
    z = (torch.rand(4, 9, 2, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[2, 5:] = False
    assert hierarchy_stats(z.transpose(0, 1), mask.t(), batch_first=False) == hierarchy_stats(
        z, mask
    )


def test_cut_off_below_one_percent_and_above_a_cut_layer() -> None:
    steps = 200
    z1 = [0] * steps
    z1[50] = 1  # layer 1 fires on 0.5% of the steps
    z2 = [1] * steps  # layer 2 fires always, but carries (almost) nothing from the input
    stats = hierarchy_stats(boundaries(z1, z2, [0] * steps))
    assert [layer.cut_off for layer in stats.layers] == [False, True, True]
    assert stats.layers[2].input_share == 1.0  # receives from below, yet cut off
    assert stats.cut_off == (2, 3)


def test_cut_off_threshold_is_strict() -> None:
    z1 = [0] * 100
    z1[10] = 1  # exactly 1%
    assert hierarchy_stats(boundaries(z1, [0] * 100)).cut_off == ()
    assert hierarchy_stats(boundaries(z1, [0] * 100), cut_off_below=0.02).cut_off == (2,)


def test_layer_that_never_fires_has_one_segment_per_sequence() -> None:
    z = torch.zeros(3, 7, 1)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    layer = hierarchy_stats(z, mask).layers[0]
    assert layer.segments == 3
    assert sorted(length for _, length in layer.segment_quantiles)[-1] == 7.0
    assert layer.segment_mean == pytest.approx((4 + 7 + 7) / 3)


def test_meter_pools_batches_like_one_call() -> None:
    gen = torch.Generator().manual_seed(2)
    z = (torch.rand(6, 11, 3, generator=gen) > 0.7).float()
    mask = torch.rand(6, 11, generator=gen) > 0.2
    meter = HierarchyMeter()
    meter.update(z[:2], mask[:2])
    meter.update(z[2:], mask[2:])
    assert meter.compute() == hierarchy_stats(z, mask)
    meter.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        meter.compute()


def test_copy_share_matches_the_steps_where_hmrnn_keeps_its_state() -> None:
    torch.manual_seed(0)
    rnn = HMRNN(3, 5, num_layers=3)
    x = torch.randn(4, 15, 3)
    mask = torch.ones(4, 15, dtype=torch.bool)
    mask[1, 9:] = False
    with torch.no_grad():
        out = rnn(x, mask=mask)
    stats = hierarchy_stats(out, mask)
    for l, (layer, h) in enumerate(zip(stats.layers, out.hidden, strict=True)):
        previous = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        unchanged = ((h == previous).all(-1) & mask).sum().item()
        assert unchanged == round(layer.copy_share * layer.steps), f"layer {l + 1}"


def test_str_and_as_dict() -> None:
    stats = hierarchy_stats(boundaries([1, 0, 0, 0], [0] * 4))
    text = str(stats)
    assert text.splitlines()[0].startswith("layer 1: fires 0.250")
    assert "CUT OFF" not in text.splitlines()[0]
    flat = stats.as_dict()
    assert flat["layer2/input_share"] == 0.25
    assert flat["layer1/segment_q50"] == pytest.approx(2.0)  # lengths 1 and 3
    assert isinstance(flat["layer2/cut_off"], bool)


def test_diagnostics_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 4\)"):
        hierarchy_stats(torch.zeros(2, 5, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(B, T, L\)"):
        hierarchy_stats(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="quantiles"):
        hierarchy_stats(torch.zeros(1, 2, 1), quantiles=(1.5,))
    meter = HierarchyMeter()
    meter.update(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="3 layers"):
        meter.update(torch.zeros(1, 2, 3))


# --------------------------------------------------------------------------- probability


class _Bare(nn.Module):
    """A user's estimator with neither ``probs`` nor ``distribution``."""

    def forward(self, logits: Tensor, context: Tensor | None = None) -> stochrnn.Sample:
        value = (logits > 0).float()
        return stochrnn.Sample(value, torch.zeros_like(logits))


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        (GumbelSigmoid(0.3), torch.sigmoid),
        (Reinforce(categorical=False), torch.sigmoid),
        (_Bare(), torch.sigmoid),
        (StraightThrough(slope=2.0), lambda a: ((2.0 * a + 1) / 2).clamp(0, 1)),
        (StraightThrough(slope=1.0, stochastic=True), lambda a: ((a + 1) / 2).clamp(0, 1)),
    ],
)
def test_boundary_probability(estimator: nn.Module, expected: object) -> None:
    a = torch.linspace(-3, 3, 13, requires_grad=True)
    p = boundary_probability(estimator, a)
    torch.testing.assert_close(p, expected(a.detach()))  # type: ignore[operator]
    p[6].backward()  # a = 0: every form has a gradient there
    assert a.grad is not None and a.grad[6] > 0


# --------------------------------------------------------------------------- prior

rates = st.floats(0.02, 0.98)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@settings(max_examples=30, deadline=None)
@given(target=rates, layers=st.integers(1, 3))
def test_prior_is_zero_at_the_target(target: float, layers: int) -> None:
    logits = torch.full((2, 5, layers), _logit(target), dtype=torch.float64)
    loss = BoundaryRatePrior(target)(output_with_logits(logits), GumbelSigmoid(0.3))
    assert abs(loss.item()) < 1e-9


@settings(max_examples=30, deadline=None)
@given(
    target=st.lists(rates, min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
    weight=st.floats(0.0, 10.0),
)
def test_prior_is_non_negative(target: list[float], seed: int, weight: float) -> None:
    logits = 3 * torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(seed))
    loss = BoundaryRatePrior(target, weight)(output_with_logits(logits), GumbelSigmoid(0.3))
    assert loss.item() >= 0


@settings(max_examples=40, deadline=None)
@given(
    target=st.lists(rates, min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
    straight_through=st.booleans(),
)
def test_a_gradient_step_moves_each_rate_toward_its_target(
    target: list[float], seed: int, straight_through: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Inside the hard sigmoid's sloped part, so that every form has a gradient.
    logits = (torch.rand(3, 8, 2, generator=gen, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    est: nn.Module = (
        StraightThrough(slope=1.0) if straight_through else Reinforce(categorical=False)
    )
    prior = BoundaryRatePrior(target)
    out = output_with_logits(logits)
    before = prior.rates(out, est).detach()
    prior(out, est).backward()
    assert logits.grad is not None
    with torch.no_grad():
        stepped = logits - 1e-3 * logits.grad / logits.grad.abs().max()
    after = prior.rates(output_with_logits(stepped), est)
    goal = torch.tensor(target, dtype=torch.float64)
    for l in range(2):
        if abs(before[l] - goal[l]) > 1e-3:
            assert abs(after[l] - goal[l]) < abs(before[l] - goal[l]), f"layer {l + 1}"


def test_per_layer_targets_act_per_layer() -> None:
    logits = torch.zeros(2, 4, 2, requires_grad=True)  # both layers at rate 0.5
    BoundaryRatePrior([0.5, 0.1])(output_with_logits(logits), GumbelSigmoid(0.3)).backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[..., 0] == 0)
    assert torch.all(logits.grad[..., 1] > 0)  # descent lowers layer 2's rate toward 0.1


def test_prior_ignores_padded_steps() -> None:
    logits = torch.zeros(2, 5, 1)
    logits[0, 3:] = 10.0  # padded steps with a rate near 1
    logits.requires_grad_()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    prior = BoundaryRatePrior(0.5)
    loss = prior(output_with_logits(logits), GumbelSigmoid(0.3), mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad[0, 3:] == 0)
    assert prior(output_with_logits(logits), GumbelSigmoid(0.3)).item() > 0.01  # unmasked


def test_prior_value_is_the_bernoulli_kl() -> None:
    logits = torch.full((1, 4, 1), _logit(0.2), dtype=torch.float64)
    loss = BoundaryRatePrior(0.5, weight=2.0)(output_with_logits(logits), GumbelSigmoid(0.3))
    kl = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert loss.item() == pytest.approx(2 * kl)


@pytest.mark.parametrize(
    "make", [lambda: GumbelSigmoid(0.3), lambda: Reinforce(categorical=False), StraightThrough]
)
def test_prior_gradient_reaches_the_weights_for_every_estimator(make: object) -> None:
    torch.manual_seed(0)
    rnn = HMRNN(3, 4, num_layers=2, boundary=[make(), make()])  # type: ignore[operator]
    out = rnn(torch.randn(3, 6, 3))
    BoundaryRatePrior([0.9, 0.05])(out, rnn.boundaries).backward()
    for l, cell in enumerate(rnn.layers):
        grads = [p.grad for p in cell.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"layer {l + 1}"


def test_prior_composes_with_the_surrogate_loss() -> None:
    torch.manual_seed(0)
    rnn = HMRNN(3, 4, num_layers=2, boundary=Reinforce(categorical=False))
    prior = BoundaryRatePrior([0.3, 0.1], weight=0.5)
    out = rnn(torch.randn(4, 7, 3), mask=torch.ones(4, 7))
    reward = -out.output.detach().pow(2).mean(dim=(1, 2))
    loss = out.output.pow(2).mean() + rnn.surrogate_loss(out.log_prob, reward)
    loss = loss + prior(out, rnn.boundaries, torch.ones(4, 7))
    assert loss.dim() == 0
    loss.backward()


def test_prior_errors() -> None:
    out = output_with_logits(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"3 targets .* 2 layers"):
        BoundaryRatePrior([0.1, 0.2, 0.3])(out, GumbelSigmoid(0.3))
    with pytest.raises(ValueError, match="one estimator per layer"):
        BoundaryRatePrior(0.1)(out, [GumbelSigmoid(0.3)])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        BoundaryRatePrior(0.1)(out, GumbelSigmoid(0.3), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"1\.5"):
        BoundaryRatePrior(1.5)
    with pytest.raises(ValueError, match="weight"):
        BoundaryRatePrior(0.2, weight=-1.0)


def test_exported_at_top_level() -> None:
    for name in (
        "BoundaryRatePrior",
        "HierarchyMeter",
        "HierarchyStats",
        "LayerStats",
        "boundary_probability",
        "hierarchy_stats",
    ):
        assert name in stochrnn.__all__ and hasattr(stochrnn, name)
