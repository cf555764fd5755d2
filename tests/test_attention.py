"""Attention pooling: shapes, exact pooling values, gradients, the batch-of-frames path, errors.

Statistical properties (frequencies, unbiasedness) are in test_attention_statistics.py
and the learning test in test_attention_learning.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from stochrnn import (
    AdaptiveTemperature,
    AttentionOutput,
    GumbelSigmoid,
    GumbelSoftmax,
    GumbelSoftmaxAttention,
    HardAttention,
    Reinforce,
    ReinforceAttention,
    Sample,
    SoftAttention,
    StraightThrough,
    doubly_stochastic_penalty,
)
from stochrnn.attention import AdditiveScore, LocationScore

Factory = Callable[..., HardAttention]

HARD_FACTORIES: dict[str, Factory] = {
    "default": HardAttention,
    "gumbel": GumbelSoftmaxAttention,
    "gumbel-adaptive": lambda q, n, **kw: GumbelSoftmaxAttention(
        q, n, temperature=AdaptiveTemperature(q), **kw
    ),
    "reinforce": ReinforceAttention,
}


@st.composite
def attention_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    """Features ``(B, [T,] N, D)``, a matching query, a scoring and a seed."""
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    n, d, q = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(*lead, n, d, generator=g)
    query = torch.randn(*lead, q, generator=g)
    return features, query, draw(st.sampled_from(["location", "additive"])), seed


def _build(
    factory: Callable[..., nn.Module],
    features: torch.Tensor,
    query: torch.Tensor,
    scoring: str,
    seed: int,
) -> nn.Module:
    torch.manual_seed(seed)
    return factory(
        query.shape[-1], features.shape[-2], scoring=scoring, feature_size=features.shape[-1]
    )


# --------------------------------------------------------------------------- values


@given(attention_inputs())
def test_soft_weights_sum_to_one_and_context_is_the_weighted_sum(
    inputs: tuple[torch.Tensor, torch.Tensor, str, int],
) -> None:
    features, query, scoring, seed = inputs
    att = _build(SoftAttention, features, query, scoring, seed)
    out = att(features, query)
    lead = features.shape[:-2]
    assert isinstance(out, AttentionOutput)
    assert out.context.shape == (*lead, features.shape[-1])
    assert out.weights.shape == features.shape[:-1]
    assert out.log_prob.shape == lead
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(lead))
    torch.testing.assert_close(out.weights, att.scores(features, query).softmax(-1))
    weighted_sum = (out.weights.unsqueeze(-1) * features).sum(-2)
    torch.testing.assert_close(out.context, weighted_sum)
    assert torch.equal(out.log_prob, torch.zeros(lead))


@pytest.mark.parametrize("kind", sorted(HARD_FACTORIES))
@given(inputs=attention_inputs())
def test_hard_weights_are_one_hot_and_context_is_the_chosen_region_exactly(
    kind: str, inputs: tuple[torch.Tensor, torch.Tensor, str, int]
) -> None:
    features, query, scoring, seed = inputs
    att = _build(HARD_FACTORIES[kind], features, query, scoring, seed)
    out = att(features, query, generator=torch.Generator().manual_seed(seed))
    weights = out.weights.detach()
    assert torch.equal(weights.sum(-1), torch.ones(features.shape[:-2]))
    assert torch.equal(weights.max(-1).values, torch.ones(features.shape[:-2]))
    chosen = weights.argmax(-1, keepdim=True)
    region = features.gather(-2, chosen.unsqueeze(-1).expand(*chosen.shape, features.shape[-1]))
    assert torch.equal(out.context.detach(), region.squeeze(-2))
    log_p = att.scores(features, query).log_softmax(-1).gather(-1, chosen).squeeze(-1)
    torch.testing.assert_close(out.log_prob, log_p)


def test_relaxed_estimator_gives_relaxed_weights_and_their_weighted_sum() -> None:
    torch.manual_seed(0)
    att = HardAttention(3, 5, estimator=GumbelSoftmax(temperature=1.0, hard=False))
    features, query = torch.randn(4, 5, 2), torch.randn(4, 3)
    out = att(features, query, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4))
    assert bool((out.weights < 1).all())
    torch.testing.assert_close(out.context, (out.weights.unsqueeze(-1) * features).sum(-2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["gumbel", "reinforce"])
def test_hard_attention_keeps_a_low_precision_dtype(kind: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    att = HARD_FACTORIES[kind](3, 5).to(dtype)
    features, query = torch.randn(4, 5, 2, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    out = att(features, query)
    assert out.context.dtype == out.weights.dtype == dtype
    assert torch.equal(out.context, features[torch.arange(4), out.weights.argmax(-1)])


@pytest.mark.parametrize("kind", ["soft", "gumbel", "reinforce"])
def test_empty_batch_gives_empty_outputs(kind: str) -> None:
    att = SoftAttention(4, 9) if kind == "soft" else HARD_FACTORIES[kind](4, 9)
    out = att(torch.randn(0, 3, 9, 5), torch.randn(0, 3, 4))
    assert (out.context.shape, out.weights.shape, out.log_prob.shape) == (
        (0, 3, 5),
        (0, 3, 9),
        (0, 3),
    )


# --------------------------------------------------------------------------- batch of frames


def test_soft_batch_of_frames_equals_a_loop_over_frames() -> None:
    torch.manual_seed(0)
    att = SoftAttention(4, 9, scoring="additive", feature_size=3)
    features, query = torch.randn(2, 5, 9, 3), torch.randn(2, 5, 4)
    out = att(features, query)
    for t in range(5):
        frame = att(features[:, t], query[:, t])
        for got, want in zip(out, frame, strict=True):
            torch.testing.assert_close(got[:, t], want)


@pytest.mark.parametrize("kind", ["gumbel-adaptive", "reinforce"])
def test_hard_batch_of_frames_equals_a_loop_over_frames(kind: str) -> None:
    """One sequence (B = 1): its frames are the rows drawn in order, so with the same seed
    the loop over frames draws the same noise, and every output must match, gradients too."""
    torch.manual_seed(0)
    att = HARD_FACTORIES[kind](4, 9, scoring="additive", feature_size=3)
    features = torch.randn(1, 6, 9, 3, requires_grad=True)
    query = torch.randn(1, 6, 4)
    out = att(features, query, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    frames = [att(features[:, t], query[:, t], generator=g) for t in range(6)]
    for got, want in zip(out, map(torch.stack, zip(*frames, strict=True)), strict=True):
        torch.testing.assert_close(got, want.transpose(0, 1))
    assert torch.equal(out.weights.sum(-1), torch.ones(1, 6))
    (grad,) = torch.autograd.grad(out.context.sum(), features)
    (loop_grad,) = torch.autograd.grad(sum(f.context.sum() for f in frames), features)
    torch.testing.assert_close(grad, loop_grad)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("scoring", ["location", "additive"])
@pytest.mark.parametrize(
    "factory",
    [SoftAttention, HARD_FACTORIES["gumbel"], HARD_FACTORIES["gumbel-adaptive"]],
    ids=["soft", "gumbel", "gumbel-adaptive"],
)
def test_gradient_reaches_every_scoring_parameter(
    factory: Callable[..., nn.Module], scoring: str
) -> None:
    torch.manual_seed(0)
    att = factory(4, 9, scoring=scoring, feature_size=3)
    features = torch.randn(8, 9, 3, requires_grad=True)
    out = att(features, torch.randn(8, 4), generator=torch.Generator().manual_seed(0))
    (out.context * torch.randn(8, 3)).sum().backward()
    for name, param in att.named_parameters():
        assert param.grad is not None, name
        assert bool(param.grad.isfinite().all()), name
        assert float(param.grad.abs().sum()) > 0, name
    assert features.grad is not None and float(features.grad.abs().sum()) > 0


def test_reinforce_choice_has_no_pathwise_gradient() -> None:
    torch.manual_seed(0)
    att = ReinforceAttention(4, 9)
    features = torch.randn(8, 9, 3, requires_grad=True)
    out = att(features, torch.randn(8, 4))
    assert not out.weights.requires_grad
    out.context.sum().backward()
    assert all(p.grad is None for p in att.parameters())
    assert features.grad is not None
    assert torch.equal(features.grad, out.weights.unsqueeze(-1).expand_as(features))


# --------------------------------------------------------------------------- surrogate loss


@pytest.mark.parametrize(
    "att", [SoftAttention(4, 9), GumbelSoftmaxAttention(4, 9)], ids=["soft", "gumbel"]
)
def test_pathwise_attention_surrogate_is_exactly_zero(att: nn.Module) -> None:
    out = att(torch.randn(3, 2, 9, 5), torch.randn(3, 2, 4))
    loss = att.surrogate_loss(out.log_prob, torch.randn(3))
    assert loss.shape == () and float(loss) == 0.0


def test_reinforce_surrogate_is_eq_19_over_a_batch_of_frames() -> None:
    """-λ Σ_b Σ_t (r_b - b) log p(l_bt) / B with the baseline's value from before the batch."""
    torch.manual_seed(0)
    att = ReinforceAttention(4, 9, weight=0.5)
    att.estimator.baseline.update(torch.tensor([2.0]))  # b = 0.2
    out = att(torch.randn(3, 2, 9, 5), torch.randn(3, 2, 4))
    reward = torch.tensor([1.0, -1.0, 0.5])
    loss = att.surrogate_loss(out.log_prob, reward)
    want = -0.5 * ((reward - 0.2).unsqueeze(-1) * out.log_prob).sum() / 3
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(att.estimator.baseline.value(), 0.9 * 0.2 + 0.1 * reward.mean())


# --------------------------------------------------------------------------- construction


def test_default_estimator_is_a_fresh_gumbel_softmax_per_module() -> None:
    first, second = HardAttention(4, 9), HardAttention(4, 9)
    assert isinstance(first.estimator, GumbelSoftmax)
    assert first.estimator is not second.estimator
    assert float(first.estimator.temperature()) == pytest.approx(0.3)


def test_reinforce_attention_owns_a_fresh_baseline_and_its_weight() -> None:
    first, second = ReinforceAttention(4, 9, weight=0.25), ReinforceAttention(4, 9)
    assert first.estimator.baseline is not second.estimator.baseline
    assert first.estimator.weight == 0.25


def test_scorings_are_the_ones_asked_for() -> None:
    assert isinstance(SoftAttention(4, 9).score, LocationScore)
    additive = SoftAttention(4, 9, scoring="additive", feature_size=3, attention_size=7)
    assert isinstance(additive.score, AdditiveScore)
    assert additive.score.v.in_features == 7
    assert "scoring='additive'" in repr(additive)


@pytest.mark.parametrize(
    "estimator", [GumbelSigmoid(), StraightThrough(), Reinforce(categorical=False)]
)
def test_binary_estimator_is_refused(estimator: nn.Module) -> None:
    with pytest.raises(TypeError, match="HardAttention needs a categorical estimator"):
        HardAttention(4, 9, estimator=estimator)  # type: ignore[arg-type]


def test_non_module_estimator_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"needs an estimator: a torch\.nn\.Module"):
        HardAttention(4, 9, estimator=lambda a, context=None: a)  # type: ignore[arg-type]


def test_module_that_returns_no_sample_is_refused_at_its_first_call() -> None:
    """A module that declares no family is taken at its word until it is called."""

    class Softmax(nn.Module):  # honours the call's arguments, not its result
        def forward(self, logits: torch.Tensor, context: object = None) -> torch.Tensor:
            return logits.softmax(-1)

    att = HardAttention(4, 9, estimator=Softmax())
    with pytest.raises(TypeError, match=r"must return Sample\(value, log_prob\), got Tensor"):
        att(torch.randn(2, 9, 3), torch.randn(2, 4))


# --------------------------------------------------------------------------- any estimator


class ArgmaxOfNoisyScores(nn.Module):
    """A user's categorical estimator: not a stochrnn Estimator, no ``generator=``
    keyword, no ``family`` attribute, no ``surrogate_loss`` — only the documented call."""

    def forward(self, logits: torch.Tensor, context: torch.Tensor | None = None) -> Sample:
        noisy = logits + torch.randn_like(logits)  # torch's global generator
        value = nn.functional.one_hot(noisy.argmax(-1), logits.shape[-1]).to(logits.dtype)
        log_prob = (value * logits.log_softmax(-1)).sum(-1)
        return Sample(value, log_prob)


class TakesGenerator(ArgmaxOfNoisyScores):
    """Records the generator it is given (as any ``**kwargs`` forward would get it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def forward(
        self, logits: torch.Tensor, context: torch.Tensor | None = None, **kwargs: object
    ) -> Sample:
        self.seen.append(kwargs.get("generator"))
        return super().forward(logits, context)


def test_a_users_module_without_generator_keyword_plugs_in() -> None:
    att = HardAttention(4, 9, estimator=ArgmaxOfNoisyScores())
    features = torch.randn(3, 9, 2)
    out = att(features, torch.randn(3, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.weights.sum(-1), torch.ones(3))
    assert torch.equal(out.context, features[torch.arange(3), out.weights.argmax(-1)])
    assert out.log_prob.shape == (3,)
    # no surrogate_loss of its own: taken as pathwise (0), the reward still checked
    assert float(att.surrogate_loss(out.log_prob, torch.ones(3))) == 0.0
    with pytest.raises(ValueError, match=re.escape("reward of shape (3, 1)")):
        att.surrogate_loss(out.log_prob, torch.ones(3, 1))


def test_the_generator_reaches_a_users_module_that_accepts_it() -> None:
    est = TakesGenerator()
    att = HardAttention(4, 9, estimator=est)
    g = torch.Generator().manual_seed(0)
    att(torch.randn(3, 9, 2), torch.randn(3, 4), generator=g)
    att(torch.randn(3, 9, 2), torch.randn(3, 4))
    assert est.seen == [g, None]


def test_a_users_module_that_declares_binary_is_refused() -> None:
    est = ArgmaxOfNoisyScores()
    est.family = "binary"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="needs a categorical estimator, got ArgmaxOfNoisyScores"):
        HardAttention(4, 9, estimator=est)


def test_a_users_module_returning_a_binary_log_prob_is_refused_naming_shapes() -> None:
    class Elementwise(nn.Module):
        def forward(self, logits: torch.Tensor, context: torch.Tensor | None = None) -> Sample:
            return GumbelSigmoid()(logits)  # log_prob of shape (B, N), not (B,)

    att = HardAttention(4, 9, estimator=Elementwise())
    message = "returned a log_prob of shape (3, 9) for logits of shape (3, 9)"
    with pytest.raises(ValueError, match=re.escape(message)):
        att(torch.randn(3, 9, 2), torch.randn(3, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_size": 0}, "query_size must be a positive int, got 0"),
        ({"num_regions": 2.5}, "num_regions must be a positive int, got 2.5"),
        ({"scoring": "dot"}, "scoring must be 'location' or 'additive', got 'dot'"),
        ({"scoring": "additive"}, "pass feature_size=D"),
        (
            {"scoring": "additive", "feature_size": 3, "attention_size": -1},
            "attention_size must be a positive int, got -1",
        ),
    ],
)
def test_bad_construction_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"query_size": 4, "num_regions": 9, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        SoftAttention(**args)  # type: ignore[arg-type]


def test_adaptive_temperature_must_read_a_query_of_the_query_size() -> None:
    with pytest.raises(ValueError, match=r"query of size 4.*context_size=3"):
        GumbelSoftmaxAttention(4, 9, temperature=AdaptiveTemperature(3))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("features_shape", "query_shape", "expected"),
    [
        ((2, 9, 5), (3, 4), "need a query of shape (B, Q) with the same leading sizes (2,)"),
        ((2, 3, 9, 5), (2, 4, 4), "(B, T, Q) with the same leading sizes (2, 3), got (2, 4, 4)"),
        ((2, 3, 9, 5), (2, 4), "got (2, 4)"),
        ((2, 8, 5), (2, 4), "built for 9 regions, got features of shape (2, 8, 5) with 8"),
        ((2, 9, 5), (2, 3), "expected a query of size 4, got shape (2, 3)"),
        ((2, 9, 6), (2, 4), "expected features of size 5, got shape (2, 9, 6)"),
        ((9, 5), (4,), "features of shape (B, N, D) or (B, T, N, D), got (9, 5)"),
    ],
)
def test_bad_input_names_expected_and_got(
    features_shape: tuple[int, ...], query_shape: tuple[int, ...], expected: str
) -> None:
    att = SoftAttention(4, 9, scoring="additive", feature_size=5)
    features, query = torch.randn(features_shape), torch.randn(query_shape)
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        att(features, query)
    assert str(error.value).startswith("SoftAttention")


def test_non_tensor_input_is_refused() -> None:
    with pytest.raises(TypeError, match=r"query must be a torch\.Tensor, got list"):
        SoftAttention(4, 9)(torch.randn(2, 9, 5), [[0.0] * 4] * 2)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- penalty


def test_doubly_stochastic_penalty_is_the_sum_of_squared_deficits() -> None:
    weights = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]]])
    # per region, 1 - Σ_t l_ti: (-0.5, 0.5, 1) and (0.6, 0.4, 0); squares sum to 1.5 and 0.52
    per_sequence = torch.tensor([1.5, 0.52])
    torch.testing.assert_close(
        doubly_stochastic_penalty(weights, 2.0, reduction="none"), 2.0 * per_sequence
    )
    torch.testing.assert_close(doubly_stochastic_penalty(weights, 2.0), 2.0 * per_sequence.mean())
    torch.testing.assert_close(
        doubly_stochastic_penalty(weights, reduction="sum"), per_sequence.sum()
    )


def test_doubly_stochastic_penalty_ignores_padded_steps() -> None:
    weights = torch.tensor([[[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    assert float(doubly_stochastic_penalty(weights, mask=mask)) == 0.0
    # unmasked, the regions get 2 and 1: (1 - 2)^2 + (1 - 1)^2 = 1
    torch.testing.assert_close(doubly_stochastic_penalty(weights), torch.tensor(1.0))


def test_doubly_stochastic_penalty_gradient_reaches_soft_attention() -> None:
    torch.manual_seed(0)
    att = SoftAttention(4, 9)
    out = att(torch.randn(2, 5, 9, 3), torch.randn(2, 5, 4))
    doubly_stochastic_penalty(out.weights).backward()
    assert att.score.linear.bias.grad is not None
    assert float(att.score.linear.bias.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("weights_shape", "kwargs", "message"),
    [
        ((2, 9), {}, "weights must have shape (B, T, N), got (2, 9)"),
        ((2, 3, 9), {"mask": torch.ones(2, 4)}, "mask must have shape (B, T) = (2, 3), got (2, 4)"),
        ((2, 3, 9), {"reduction": "max"}, "reduction must be 'mean', 'sum' or 'none', got 'max'"),
    ],
)
def test_doubly_stochastic_penalty_bad_input(
    weights_shape: tuple[int, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        doubly_stochastic_penalty(torch.rand(weights_shape), **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- torch.compile


def test_attention_compiles_without_graph_breaks() -> None:
    """``fullgraph=True`` fails on any graph break. The ``aot_eager`` backend traces forward
    and backward as inductor does, without its C++ code generation (too slow for this suite)."""
    torch.manual_seed(0)
    att = GumbelSoftmaxAttention(4, 9, temperature=AdaptiveTemperature(4))
    compiled = torch.compile(att, backend="aot_eager", fullgraph=True)
    features = torch.randn(2, 3, 9, 5, requires_grad=True)
    out = compiled(features, torch.randn(2, 3, 4))
    assert torch.equal(out.weights.detach().sum(-1), torch.ones(2, 3))
    chosen = out.weights.detach().argmax(-1)
    assert torch.equal(
        out.context.detach(), features.detach()[torch.arange(2)[:, None], torch.arange(3), chosen]
    )
    out.context.sum().backward()
    assert all(p.grad is not None for p in att.parameters())
