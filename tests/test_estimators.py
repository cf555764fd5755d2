"""Estimators: semantics, statistics against torch's own samplers, numerics, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stochrnn import (
    AdaptiveTemperature,
    AnnealedTemperature,
    ConstantTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    LearnedTemperature,
    MovingAverageBaseline,
    Reinforce,
    StraightThrough,
)
from stochrnn.diagnostics import gradient_bias_variance
from stochrnn.testing import float_dtypes, logits, normal_critical, temperatures
from tests.estimator_zoo import all_estimators, ids

ALPHA = 1e-3  # false-alarm rate of each statistical test below (seeds are fixed)


def ks_critical(n: int, m: int, alpha: float) -> float:
    """Two-sample Kolmogorov–Smirnov critical value (asymptotic)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def ks_statistic(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().sort().values, y.double().sort().values
    grid = torch.cat([x, y])
    cdf_x = torch.searchsorted(x, grid, right=True) / len(x)
    cdf_y = torch.searchsorted(y, grid, right=True) / len(y)
    return float((cdf_x - cdf_y).abs().max())


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("tau", [0.1, 0.3, 1.0])
def test_gumbel_sigmoid_hard_frequencies_match_sigmoid(tau: float) -> None:
    """Binomial z-test per logit, Bonferroni over 5 logits, false-alarm rate ALPHA."""
    a = torch.tensor([-3.0, -0.7, 0.0, 0.4, 2.5])
    n = 40000
    g = torch.Generator().manual_seed(1)
    z = GumbelSigmoid(tau)(a.expand(n, 5), generator=g).value
    p = torch.sigmoid(a)
    se = (p * (1 - p) / n).sqrt()
    assert ((z.mean(0) - p).abs() <= normal_critical(ALPHA / 5) * se).all()


def test_gumbel_softmax_hard_frequencies_match_softmax() -> None:
    """Chi-square test over 6 categories (5 dof), critical value at ALPHA = 1e-3 is 20.52."""
    a = torch.tensor([1.5, 0.0, -1.0, 0.3, -2.0, 0.8])
    n = 40000
    g = torch.Generator().manual_seed(2)
    z = GumbelSoftmax(0.3)(a.expand(n, 6), generator=g).value
    expected = n * torch.softmax(a, -1)
    chi2 = float(((z.sum(0) - expected) ** 2 / expected).sum())
    assert chi2 < 20.52


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_relaxed_gumbel_sigmoid_matches_torch_relaxed_bernoulli(tau: float) -> None:
    """Two-sample KS test per logit against torch's RelaxedBernoulli (Bonferroni over 3)."""
    a = torch.tensor([-1.0, 0.0, 2.0])
    n = 20000
    torch.manual_seed(3)
    ours = GumbelSigmoid(tau, hard=False)(a.expand(n, 3)).value
    theirs = torch.distributions.RelaxedBernoulli(torch.tensor(tau), logits=a).sample((n,))
    # float32 saturates differently near 0 and 1 in the two implementations (torch clamps
    # its samples); clamping both the same way keeps the test exact for equal distributions.
    ours, theirs = ours.clamp(1e-4, 1 - 1e-4), theirs.clamp(1e-4, 1 - 1e-4)
    crit = ks_critical(n, n, ALPHA / 3)
    for i in range(3):
        assert ks_statistic(ours[:, i], theirs[:, i]) < crit


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_relaxed_gumbel_softmax_matches_torch_gumbel_softmax(tau: float) -> None:
    """Two-sample KS test per coordinate against torch.nn.functional.gumbel_softmax."""
    a = torch.tensor([1.0, 0.0, -0.5, 0.5])
    n = 20000
    torch.manual_seed(4)
    ours = GumbelSoftmax(tau, hard=False)(a.expand(n, 4)).value
    theirs = torch.nn.functional.gumbel_softmax(a.expand(n, 4), tau=tau, hard=False)
    crit = ks_critical(n, n, ALPHA / 4)
    for i in range(4):
        assert ks_statistic(ours[:, i], theirs[:, i]) < crit


@pytest.mark.parametrize("categorical", [False, True])
def test_reinforce_with_moving_average_baseline_is_unbiased(categorical: bool) -> None:
    """Mean of 20,000 REINFORCE gradients vs exact enumeration: z-test per logit, Bonferroni.

    The baseline is warmed first so that a non-zero b is subtracted.
    """
    torch.manual_seed(5)
    a = (
        torch.tensor([[0.5, -1.0, 0.2], [1.0, 0.0, -0.3]])
        if categorical
        else torch.tensor([0.5, -1.0, 0.2, 1.5])
    )
    w = torch.linspace(-1, 2, a.numel()).reshape(a.shape)

    def f(z: torch.Tensor) -> torch.Tensor:  # non-linear reward
        s = (z * w.to(z.dtype)).reshape(z.shape[0], -1).sum(-1)
        return s**2 + 3.0

    est = Reinforce(categorical=categorical)
    est.baseline.baseline.fill_(2.0)
    report = gradient_bias_variance(est, a, f, num_samples=20000)
    assert float(est.baseline.value()) != 2.0  # the baseline moved during the run
    assert report.max_abs_z < normal_critical(ALPHA / a.numel())


def test_baseline_subtracts_the_value_from_before_the_current_reward() -> None:
    est = Reinforce(baseline=MovingAverageBaseline(0.9), categorical=False)
    a = torch.zeros(4, requires_grad=True)
    s = est(a)
    reward = torch.tensor([10.0, 0.0, 10.0, 0.0])
    est.surrogate_loss(s.log_prob, reward).backward()
    # b was 0 before this batch: the gradient is -(r - 0) * dlogp/da / B.
    expected = -(reward * (s.value - torch.sigmoid(a.detach()))) / 4
    torch.testing.assert_close(a.grad, expected)
    assert float(est.baseline.value()) == pytest.approx(0.1 * 5.0)

    a.grad = None
    s = est(a)
    est.surrogate_loss(s.log_prob, reward).backward()
    expected = -((reward - 0.5) * (s.value - torch.sigmoid(a.detach()))) / 4
    torch.testing.assert_close(a.grad, expected)


def test_baseline_frozen_in_eval_mode_and_saved_in_state_dict() -> None:
    est = Reinforce()
    est.surrogate_loss(torch.zeros(3), torch.ones(3))
    saved = est.state_dict()
    assert float(saved["baseline.baseline"]) == pytest.approx(0.1)
    est.eval()
    est.surrogate_loss(torch.zeros(3), torch.ones(3))
    assert float(est.baseline.value()) == pytest.approx(0.1)
    fresh = Reinforce()
    fresh.load_state_dict(saved)
    assert float(fresh.baseline.value()) == pytest.approx(0.1)


# --------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("est", all_estimators(), ids=ids(all_estimators()))
def test_pathwise_surrogate_is_exactly_zero(est: Estimator) -> None:
    a = torch.randn(3, 4, requires_grad=True)
    s = est(a)
    loss = est.surrogate_loss(s.log_prob, torch.randn(3))
    if est.pathwise:
        assert loss.item() == 0.0
    else:
        assert loss.requires_grad


def test_reinforce_value_carries_no_gradient() -> None:
    s = Reinforce()(torch.zeros(2, 3, requires_grad=True))
    assert not s.value.requires_grad and s.log_prob.requires_grad


def test_straight_through_forward_is_threshold_and_backward_is_hard_sigmoid() -> None:
    a = torch.tensor([-0.3, 0.1, 0.9, 3.0], requires_grad=True)
    est = StraightThrough(slope=2.0)
    s = est(a)
    assert s.value.tolist() == [0.0, 1.0, 1.0, 1.0]
    s.value.sum().backward()
    # d/da clamp((2a + 1)/2, 0, 1) = 1 inside (-0.5, 0.5), 0 outside.
    assert a.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert s.log_prob.eq(0).all()


def test_straight_through_slope_follows_chung_schedule_and_is_saved() -> None:
    est = StraightThrough(slope=1.0, slope_rate=0.04, max_slope=5.0)
    for epoch in range(150):
        assert est.slope == pytest.approx(min(5.0, 1.0 + 0.04 * epoch))
        est.step()
    fresh = StraightThrough(slope=1.0, slope_rate=0.04)
    fresh.load_state_dict(est.state_dict())
    assert fresh.slope == 5.0


def test_stochastic_straight_through_frequencies_match_hard_sigmoid() -> None:
    """Binomial z-test per logit (Bonferroni over 4), false-alarm rate ALPHA."""
    a = torch.tensor([-0.8, -0.2, 0.3, 0.6])
    n = 40000
    z = StraightThrough(stochastic=True)(a.expand(n, 4), generator=torch.Generator().manual_seed(6))
    p = ((a + 1) / 2).clamp(0, 1)
    se = (p * (1 - p) / n).sqrt()
    assert ((z.value.mean(0) - p).abs() <= normal_critical(ALPHA / 4) * se).all()


def test_generator_makes_samples_reproducible() -> None:
    a = torch.randn(5, 7)
    for est in all_estimators():
        v1 = est(a, generator=torch.Generator().manual_seed(9)).value
        v2 = est(a, generator=torch.Generator().manual_seed(9)).value
        assert torch.equal(v1, v2), type(est).__name__


# --------------------------------------------------------------------------- temperatures


def test_adaptive_temperature_is_eq21_one_per_row() -> None:
    t = AdaptiveTemperature(context_size=3)
    h = torch.randn(5, 3)
    tau = t(h)
    expected = 1 / (torch.nn.functional.softplus(t.linear(h).squeeze(-1)) + 1)
    torch.testing.assert_close(tau, expected)
    assert tau.shape == (5,) and bool(((tau > 0) & (tau <= 1)).all())


def test_adaptive_temperature_scales_each_row_and_learns() -> None:
    t = AdaptiveTemperature(context_size=2)
    est = GumbelSoftmax(t, hard=False)
    a = torch.zeros(4, 6)
    s = est(a, torch.randn(4, 2))
    s.value[:, 0].sum().backward()
    assert t.linear.weight.grad is not None and t.linear.weight.grad.abs().sum() > 0


def test_learned_temperature_gets_gradient_and_stays_above_minimum() -> None:
    t = LearnedTemperature(0.5)
    assert t().item() == pytest.approx(0.5)
    GumbelSigmoid(t, hard=False)(torch.randn(8)).value.sum().backward()
    assert t.raw.grad is not None
    with torch.no_grad():
        t.raw.fill_(-1e4)
    assert t().item() >= t.min_tau


def test_annealed_temperature_schedule_is_saved_and_resumed() -> None:
    t = AnnealedTemperature(start=1.0, end=0.3, rate=0.01)
    for _ in range(50):
        t.step()
    assert t().item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    resumed = AnnealedTemperature(start=1.0, end=0.3, rate=0.01)
    resumed.load_state_dict(t.state_dict())
    assert resumed().item() == t().item()
    for _ in range(1000):
        t.step()
    assert t().item() == pytest.approx(0.3)


def test_float_temperature_becomes_constant_module() -> None:
    est = GumbelSigmoid(0.7)
    assert isinstance(est.temperature, ConstantTemperature)
    assert est.temperature().item() == pytest.approx(0.7)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("est", all_estimators(), ids=ids(all_estimators()))
def test_extreme_logits_and_low_temperature_stay_finite(est: Estimator, dtype: torch.dtype) -> None:
    if hasattr(est, "temperature"):
        est.temperature = ConstantTemperature(0.05)
    a = torch.tensor([[-50.0, 50.0, 0.0, -50.0], [50.0, 50.0, -50.0, 1.0]], dtype=dtype)
    a.requires_grad_(True)
    s = est(a)
    assert s.value.dtype == dtype
    assert s.value.isfinite().all() and s.log_prob.isfinite().all()
    if getattr(est, "hard", True):
        assert bool(((s.value == 0) | (s.value == 1)).all())
        if est.event_family == "categorical":
            assert bool((s.value.sum(-1) == 1).all())
    reward = torch.ones(2, dtype=dtype)
    loss = s.value.float().sum() + est.surrogate_loss(s.log_prob, reward).float()
    loss.backward()
    assert a.grad is not None and a.grad.isfinite().all()


@given(a=logits(dtype=float_dtypes()), tau=temperatures(), hard=st.booleans())
def test_property_binary_shapes_dtypes_values(a: torch.Tensor, tau: float, hard: bool) -> None:
    s = GumbelSigmoid(tau, hard=hard)(a)
    assert s.value.shape == a.shape and s.value.dtype == a.dtype
    assert s.log_prob.shape == a.shape and bool((s.log_prob <= 0).all())
    if hard:
        assert bool(((s.value == 0) | (s.value == 1)).all())
    else:
        assert bool(((s.value >= 0) & (s.value <= 1)).all())


@given(a=logits(dtype=float_dtypes()), tau=temperatures())
def test_property_categorical_hard_rows_are_one_hot(a: torch.Tensor, tau: float) -> None:
    for est in (GumbelSoftmax(tau), Reinforce()):
        s = est(a)
        assert s.value.shape == a.shape and s.log_prob.shape == a.shape[:-1]
        assert bool((s.value.sum(-1) == 1).all())
        assert bool(((s.value == 0) | (s.value == 1)).all())


# --------------------------------------------------------------------------- compile


@pytest.mark.parametrize("est", all_estimators(), ids=ids(all_estimators()))
def test_runs_under_torch_compile(est: Estimator) -> None:
    torch._dynamo.reset()
    a = torch.randn(4, 5, requires_grad=True)

    def run(x: torch.Tensor) -> torch.Tensor:
        s = est(x)
        return s.value.sum() + s.log_prob.sum()

    compiled = torch.compile(run)
    out = compiled(a)
    out.backward()
    assert out.isfinite() and a.grad is not None


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_temperature_is_refused_naming_the_value(bad: float) -> None:
    for make in (GumbelSigmoid, GumbelSoftmax, ConstantTemperature, LearnedTemperature):
        with pytest.raises(ValueError, match="temperature"):
            make(bad)
    with pytest.raises(ValueError, match=str(bad)):
        AnnealedTemperature(start=bad)


def test_temperature_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="str"):
        GumbelSigmoid("0.3")  # type: ignore[arg-type]


@pytest.mark.parametrize("est", all_estimators(), ids=ids(all_estimators()))
def test_nan_logits_are_refused(est: Estimator) -> None:
    with pytest.raises(ValueError, match="NaN"):
        est(torch.tensor([[0.0, float("nan")]]))


@pytest.mark.parametrize("est", [GumbelSoftmax(), Reinforce()], ids=["gumbel", "reinforce"])
def test_categorical_estimator_refuses_a_scalar(est: Estimator) -> None:
    with pytest.raises(ValueError, match="categorical"):
        est(torch.tensor(0.5))


def test_adaptive_temperature_refuses_a_context_of_the_wrong_size() -> None:
    est = GumbelSoftmax(AdaptiveTemperature(context_size=8))
    with pytest.raises(ValueError, match=r"\(batch, 8\).*\(4, 7\)"):
        est(torch.zeros(4, 5), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="context="):
        est(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="batch size 3"):
        est(torch.zeros(4, 5), torch.zeros(3, 8))


def test_integer_logits_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="floating point"):
        GumbelSigmoid()(torch.zeros(3, dtype=torch.long))


def test_validation_can_be_switched_off() -> None:
    est = GumbelSigmoid(validate_args=False)
    assert est(torch.tensor([float("nan")])).value.shape == (1,)


@pytest.mark.parametrize(
    "make",
    [
        GumbelSigmoid,
        lambda **kw: StraightThrough(stochastic=True, **kw),
        lambda **kw: Reinforce(categorical=False, **kw),
    ],
    ids=["gumbel-sigmoid", "straight-through", "reinforce"],
)
def test_distribution_is_validated_as_the_estimator_says(make: Callable[..., Estimator]) -> None:
    """torch's own check of a binary estimator's distribution follows ``validate_args`` (on
    the CPU by default): off, nothing reads the values, as on a GPU, where it would wait."""
    nan = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="nan"):
        make().distribution(nan)
    dist = make(validate_args=False).distribution(nan)
    assert dist.batch_shape[0] == 1


def test_reinforce_refuses_a_baseline_that_is_not_one() -> None:
    with pytest.raises(TypeError, match="Baseline"):
        Reinforce(baseline=0.9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decay"):
        MovingAverageBaseline(1.5)
