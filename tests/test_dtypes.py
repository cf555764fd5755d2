"""The dtype matrix: every estimator, temperature, baseline and attention after
``.to(dtype)`` in float64, float32, float16 and bfloat16 (issue 14, item 4).

Each row runs a module converted to the dtype on inputs of that dtype and checks
that it runs, keeps the dtype, and agrees with the same computation in float64
within the dtype's precision. float64 must be *exact* to float64 precision (so
``gradcheck`` passes: log-probabilities are computed in float64, not float32);
float16/bfloat16 compute in float32 and return their own dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from stochrnn import (
    HMRNN,
    AdaptiveTemperature,
    AnnealedTemperature,
    ConstantTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    GumbelSoftmaxAttention,
    HardAttention,
    LearnedTemperature,
    MovingAverageBaseline,
    Reinforce,
    ReinforceAttention,
    SoftAttention,
    StraightThrough,
)
from stochrnn import functional as F
from tests.estimator_zoo import all_estimators, ids

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Agreement with the float64 computation: exact to float64 rounding for float64;
# for the others, the rounding of the result in the dtype (eps * |value|, plus
# the rounding of the inputs, which are the float64 values cast to the dtype).
TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-2,
    torch.bfloat16: 1e-1,
}


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def close(got: Tensor, want: Tensor, dtype: torch.dtype) -> bool:
    tol = TOLERANCE[dtype]
    return torch.allclose(got.double(), want.double(), rtol=tol, atol=tol)


# --------------------------------------------------------------------------- estimators


def representable(x: Tensor) -> Tensor:
    """``x`` rounded to bfloat16 values, which every dtype here holds exactly, in float64."""
    return x.bfloat16().double()


def reference_log_prob(est: Estimator, a: Tensor, value: Tensor) -> Tensor:
    """``log p(value)`` computed independently, in float64, by torch.distributions."""
    a, value = a.double(), value.double()
    if isinstance(est, StraightThrough):
        if not est.stochastic:
            return torch.zeros_like(a)
        p = F.hard_sigmoid(a, est.slope).clamp(1e-6, 1 - 1e-6)
        return torch.distributions.Bernoulli(probs=p).log_prob((value > 0.5).double())
    if est.family == "binary":
        return torch.distributions.Bernoulli(logits=a).log_prob((value > 0.5).double())
    one_hot = F.one_hot_argmax(value)
    return torch.distributions.OneHotCategorical(logits=a).log_prob(one_hot)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", range(len(all_estimators())), ids=ids(all_estimators()))
def test_estimator_keeps_dtype_and_log_prob_matches_float64(index: int, dtype: torch.dtype) -> None:
    est = all_estimators()[index].to(dtype)
    a64 = representable(torch.linspace(-4.0, 4.0, 24, dtype=torch.float64).reshape(4, 6))
    s = est(a64.to(dtype), generator=seeded())
    assert s.value.dtype == dtype and s.log_prob.dtype == dtype
    assert s.value.isfinite().all() and s.log_prob.isfinite().all()
    assert close(s.log_prob, reference_log_prob(est, a64, s.value), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("categorical", [False, True])
def test_distribution_is_in_the_logits_precision(categorical: bool, dtype: torch.dtype) -> None:
    est = GumbelSoftmax() if categorical else GumbelSigmoid()
    a = torch.linspace(-3.0, 3.0, 12, dtype=dtype).reshape(2, 6)
    logits = est.distribution(a).logits
    assert logits.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


# --------------------------------------------------------------------------- temperatures

TEMPERATURES: dict[str, Callable[[], nn.Module]] = {
    "constant": lambda: ConstantTemperature(0.5),
    "learned": lambda: LearnedTemperature(0.5),
    "annealed": lambda: AnnealedTemperature(1.0, 0.3, 0.1),
    "adaptive": lambda: AdaptiveTemperature(5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", sorted(TEMPERATURES))
@pytest.mark.parametrize("categorical", [False, True])
def test_temperature_module_works_after_conversion(
    kind: str, categorical: bool, dtype: torch.dtype
) -> None:
    """The relaxed sample equals the float64 one (same rounded weights and inputs);
    the gradient reaches the logits and every parameter, in the dtype."""
    torch.manual_seed(0)
    temperature = TEMPERATURES[kind]()
    est: Estimator = (
        GumbelSoftmax(temperature, hard=False)
        if categorical
        else GumbelSigmoid(temperature, hard=False)
    )
    est = est.to(dtype)
    twin = copy.deepcopy(est).double()  # the same (rounded) parameters, in float64
    context64 = representable(torch.randn(4, 5, dtype=torch.float64))
    a64 = representable(torch.randn(4, 6, dtype=torch.float64))
    ref = twin(a64, context64, generator=seeded()).value

    a = a64.to(dtype).requires_grad_()
    value = est(a, context64.to(dtype), generator=seeded()).value
    assert value.dtype == dtype
    assert close(value, ref, dtype), (value - ref).abs().max()
    value.square().sum().backward()
    assert a.grad is not None and a.grad.isfinite().all()
    for p in est.parameters():
        assert p.dtype == dtype and p.grad is not None and p.grad.isfinite().all()


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_baseline_buffer_follows_the_module_but_not_below_float32(dtype: torch.dtype) -> None:
    b = MovingAverageBaseline(0.9).to(dtype)
    assert b.baseline.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for _ in range(200):  # converges to 1/3: a half-precision buffer would stall short of it
        b.update(torch.full((8,), 1.0 / 3.0, dtype=dtype))
    assert abs(float(b.value()) - float(torch.tensor(1.0 / 3.0, dtype=dtype))) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("categorical", [False, True])
def test_reinforce_surrogate_in_each_dtype_matches_float64(
    categorical: bool, dtype: torch.dtype
) -> None:
    a64 = representable(torch.randn(8, 5, generator=seeded(), dtype=torch.float64))
    reward64 = representable(torch.randn(8, generator=seeded(), dtype=torch.float64))

    def loss(dt: torch.dtype) -> tuple[Tensor, Tensor]:
        est = Reinforce(categorical=categorical).to(dt)
        est.baseline.update(torch.tensor(0.25))  # a non-zero baseline, b = 0.025
        a = a64.to(dt).requires_grad_()
        s = est(a, generator=seeded())
        out = est.surrogate_loss(s.log_prob, reward64.to(dt))
        out.backward()
        assert a.grad is not None
        return out, a.grad

    got, grad = loss(dtype)
    want, want_grad = loss(torch.float64)
    assert got.dtype == dtype and grad.dtype == dtype
    assert close(got, want, dtype) and close(grad, want_grad, dtype), (got, want)


# --------------------------------------------------------------------------- attention

Q, N, D = 5, 6, 3
ATTENTIONS: dict[str, Callable[[], nn.Module]] = {
    "soft": lambda: SoftAttention(Q, N),
    "soft-additive": lambda: SoftAttention(Q, N, scoring="additive", feature_size=D),
    "hard-reinforce": lambda: HardAttention(Q, N, estimator=Reinforce()),
    "gumbel": lambda: GumbelSoftmaxAttention(Q, N, temperature=0.3),
    "gumbel-adaptive": lambda: GumbelSoftmaxAttention(Q, N, temperature=AdaptiveTemperature(Q)),
    "gumbel-learned": lambda: GumbelSoftmaxAttention(Q, N, temperature=LearnedTemperature(0.5)),
    "reinforce": lambda: ReinforceAttention(Q, N),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", sorted(ATTENTIONS))
def test_attention_works_after_conversion(kind: str, dtype: torch.dtype) -> None:
    """Outputs in the dtype and equal to the float64 computation with the same rounded
    weights and inputs; gradients reach every parameter, finite, in the dtype."""
    torch.manual_seed(0)
    att = ATTENTIONS[kind]().to(dtype)
    twin = copy.deepcopy(att).double()
    features64 = representable(torch.randn(4, N, D, dtype=torch.float64))
    query64 = representable(torch.randn(4, Q, dtype=torch.float64))
    ref = twin(features64, query64, generator=seeded())

    out = att(features64.to(dtype), query64.to(dtype), generator=seeded())
    assert out.context.dtype == dtype and out.weights.dtype == dtype
    assert out.log_prob.dtype == dtype
    for got, want in zip(out, ref, strict=True):
        assert close(got, want, dtype), (got, want)
    reward = torch.randn(4, dtype=dtype)
    loss = out.context.float().square().sum() + att.surrogate_loss(out.log_prob, reward)
    loss.backward()
    for name, p in att.named_parameters():
        assert p.dtype == dtype, name
        assert p.grad is not None and p.grad.isfinite().all(), name


def test_soft_attention_weights_are_float64_softmax_in_float64() -> None:
    att = SoftAttention(Q, N).double()
    features = torch.randn(2, N, D, dtype=torch.float64)
    query = torch.randn(2, Q, dtype=torch.float64)
    weights = att(features, query).weights
    want = torch.softmax(att.scores(features, query), dim=-1)
    assert torch.equal(weights, want)


# --------------------------------------------------------------------------- HM-RNN


def test_hmrnn_with_adaptive_temperature_boundaries_runs_in_float64() -> None:
    torch.manual_seed(0)
    sizes = [4, 3]
    boundary = [GumbelSigmoid(AdaptiveTemperature(h)) for h in sizes]
    rnn = HMRNN(3, sizes, num_layers=2, boundary=boundary).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    out = rnn(x, generator=seeded())
    assert out.output.dtype == torch.float64 and out.log_prob.dtype == torch.float64
    out.output.sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    for name, p in rnn.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float64, name


# --------------------------------------------------------------------------- gradcheck


def test_gradcheck_log_probs_of_the_functional_module() -> None:
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    binary = (torch.rand(3, 4, generator=seeded()) > 0.5).double()
    one_hot = F.one_hot_argmax(torch.randn(3, 4, generator=seeded(), dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: F.binary_log_prob(x, binary), (a,))
    assert torch.autograd.gradcheck(lambda x: F.categorical_log_prob(x, one_hot), (a,))


SCORED = [e for e in all_estimators() if not (isinstance(e, StraightThrough) and not e.stochastic)]


@pytest.mark.parametrize("est", SCORED, ids=ids(SCORED))
def test_gradcheck_estimator_log_prob_in_float64(est: Estimator) -> None:
    """The sample is fixed by the seeded generator; ``log p(sample)`` is smooth in the logits
    (in (-0.9, 0.9) the hard sigmoid of the straight-through estimator is linear)."""
    a = (torch.rand(3, 4, generator=seeded(), dtype=torch.float64) * 1.8 - 0.9).requires_grad_()

    def log_prob(x: Tensor) -> Tensor:
        return est(x, generator=seeded()).log_prob

    assert torch.autograd.gradcheck(log_prob, (a,))


@pytest.mark.parametrize("relax", [F.gumbel_sigmoid, F.gumbel_softmax])
def test_gradcheck_relaxations_in_logits_and_temperature(relax: Callable[..., Tensor]) -> None:
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.4, 0.7, 1.3], dtype=torch.float64, requires_grad=True)

    def sample(x: Tensor, t: Tensor) -> Tensor:
        return relax(x, t[:, None], hard=False, generator=seeded())

    assert torch.autograd.gradcheck(sample, (a, tau))


def test_gradcheck_relaxed_sample_through_an_adaptive_temperature() -> None:
    torch.manual_seed(0)
    est = GumbelSoftmax(AdaptiveTemperature(5), hard=False).double()
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    context = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def sample(x: Tensor, c: Tensor) -> Tensor:
        return est(x, c, generator=seeded()).value

    assert torch.autograd.gradcheck(sample, (a, context))
