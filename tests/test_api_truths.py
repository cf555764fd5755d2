"""What the API says is what it does (issue 14, item 6).

``family`` is true per instance; every estimator has an explicit evaluation
choice (``eval_mode``); ``StraightThrough``'s slope never exceeds ``max_slope``;
an adaptive temperature of the wrong size is refused at construction; and a
``generator=`` survives activation checkpointing with ``preserve_generators``.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stochrnn import (
    HMRNN,
    AdaptiveTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    GumbelSoftmaxAttention,
    HardAttention,
    Reinforce,
    ReinforceAttention,
    Sample,
    StraightThrough,
)
from stochrnn import estimators as E
from stochrnn import functional as F
from tests.estimator_zoo import all_estimators, ids


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- family


def test_reinforce_family_is_true_per_instance() -> None:
    assert Reinforce().family == "categorical" and Reinforce().event_family == "categorical"
    binary = Reinforce(categorical=False)
    assert binary.family == "binary" and binary.event_family == "binary"
    # estimators of one family still say it at class level
    assert GumbelSoftmax.family == "categorical" and GumbelSigmoid.family == "binary"
    assert StraightThrough.family == "binary"


def test_family_says_the_shape_of_log_prob_for_every_estimator() -> None:
    a = torch.randn(3, 4)
    for est in all_estimators():
        log_prob = est(a, generator=seeded()).log_prob
        want = (3, 4) if est.family == "binary" else (3,)
        assert tuple(log_prob.shape) == want, (est, est.family, log_prob.shape)


def test_setting_reinforce_family_switches_what_it_draws() -> None:
    est = Reinforce()
    est.family = "binary"
    assert not est.categorical
    assert est(torch.randn(3, 4), generator=seeded()).log_prob.shape == (3, 4)
    with pytest.raises(ValueError, match="got 'gaussian'"):
        est.family = "gaussian"  # type: ignore[assignment]


# --------------------------------------------------------------------------- eval_mode


def reference_mode(est: Estimator, a: Tensor) -> Tensor:
    if est.family == "binary":
        return (a > 0).to(a.dtype)
    return F.one_hot_argmax(a)


def test_eval_mode_mode_returns_the_most_likely_value_and_its_log_prob() -> None:
    a = torch.randn(64, 5, generator=seeded())
    for est in all_estimators():
        est.eval_mode = "mode"
        est.eval()
        first = est(a, generator=seeded(1))
        second = est(a, generator=seeded(2))
        want = reference_mode(est, a)
        assert torch.equal(first.value, want) and torch.equal(second.value, want), est
        torch.testing.assert_close(first.log_prob, est.log_prob(a, want))


@pytest.mark.parametrize("index", range(len(all_estimators())), ids=ids(all_estimators()))
def test_eval_mode_is_taken_by_every_constructor(index: int) -> None:
    est = all_estimators()[index]
    twin = type(est)(eval_mode="mode")  # type: ignore[call-arg]
    assert twin.eval_mode == "mode" and est.eval_mode == "sample"
    assert "eval_mode='mode'" in repr(twin)


def test_training_mode_samples_whatever_the_eval_mode() -> None:
    est = GumbelSoftmax(eval_mode="mode")
    a = torch.zeros(256, 4)  # uniform: a draw is anything, the mode is category 0
    assert est(a, generator=seeded()).value[:, 1:].sum() > 0
    est.eval()
    assert torch.equal(est(a, generator=seeded()).value.argmax(-1), torch.zeros(256).long())


def test_default_eval_mode_is_sample_so_eval_draws() -> None:
    est = GumbelSigmoid().eval()
    a = torch.zeros(512)
    assert est.eval_mode == "sample"
    assert 0 < float(est(a, generator=seeded()).value.mean()) < 1


def test_bad_eval_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval_mode must be 'sample' or 'mode', got 'argmax'"):
        GumbelSigmoid(eval_mode="argmax")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["gumbel", "reinforce"])
def test_attention_in_mode_attends_to_the_highest_score(kind: str) -> None:
    att = (
        GumbelSoftmaxAttention(4, 6, eval_mode="mode")
        if kind == "gumbel"
        else ReinforceAttention(4, 6, eval_mode="mode")
    ).eval()
    features, query = torch.randn(8, 6, 3), torch.randn(8, 4)
    out = att(features, query, generator=seeded())
    chosen = att.scores(features, query).argmax(-1)
    assert torch.equal(out.context, features[torch.arange(8), chosen])


def test_hmrnn_boundaries_in_mode_are_the_logits_sign() -> None:
    rnn = HMRNN(3, 4, num_layers=2, boundary=[GumbelSigmoid(eval_mode="mode") for _ in "ab"])
    out = rnn.eval()(torch.randn(5, 7, 3), generator=seeded())
    assert torch.equal(out.boundaries, (out.boundary_logits > 0).to(out.boundaries.dtype))


# --------------------------------------------------------------------------- slope


@pytest.mark.parametrize("rate", [0.0, 0.04])
def test_straight_through_slope_given_above_five_is_kept(rate: float) -> None:
    """The ceiling is max(5, slope) unless given: annealing never lowers a slope."""
    est = StraightThrough(slope=10, slope_rate=rate)
    assert est.slope == 10 and est.max_slope == 10
    est.step()
    assert est.slope == 10
    a = torch.tensor([0.02], requires_grad=True)
    est(a).value.sum().backward()
    assert a.grad is not None and float(a.grad) == pytest.approx(5.0)  # d hardsigm(10 a)/da
    chung = StraightThrough(slope_rate=1.0)  # Chung et al.'s ceiling stays 5
    for _ in range(10):
        chung.step()
    assert chung.slope == 5.0 and chung.max_slope == 5.0


def test_straight_through_slope_above_an_explicit_max_is_refused() -> None:
    with pytest.raises(ValueError, match="slope=10 exceeds max_slope=5"):
        StraightThrough(slope=10, max_slope=5)


# --------------------------------------------------------------------------- context size


def test_check_context_size_finds_a_shared_temperature_anywhere_inside() -> None:
    shared = AdaptiveTemperature(8)
    E.check_context_size(GumbelSigmoid(shared), 8, "layer 1")
    with pytest.raises(ValueError, match=re.escape("layer 2: the adaptive temperature reads the")):
        E.check_context_size(GumbelSigmoid(shared), 16, "layer 2")


class Wrapped(nn.Module):
    """A user's estimator (not a stochrnn Estimator) around a Gumbel-softmax."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: Tensor, context: Tensor | None = None) -> Sample:
        sample: Sample = self.inner(logits, context)
        return sample


def test_attention_refuses_a_wrong_size_temperature_inside_a_users_module() -> None:
    with pytest.raises(ValueError, match=r"query of size 4, but was built with context_size=3"):
        HardAttention(4, 9, estimator=Wrapped(GumbelSoftmax(AdaptiveTemperature(3))))


# --------------------------------------------------------------------------- checkpointing


def test_preserve_generators_makes_checkpointed_gradients_exact() -> None:
    """Without it the recomputation draws other noise (torch restores only the global
    generator) and the gradient is that of another sample."""
    est = GumbelSoftmax(0.5, hard=False)
    weight = torch.randn(6, 6, generator=seeded(5))

    def block(x: Tensor, g: torch.Generator) -> Tensor:
        return (est(x @ weight, generator=g).value ** 2).sum(-1)

    def grad_and_state(use_checkpoint: bool) -> tuple[Tensor, Tensor]:
        g = seeded(3)
        x = torch.randn(4, 6, generator=seeded(4), requires_grad=True)
        if use_checkpoint:
            y = checkpoint(block, x, g, use_reentrant=False, context_fn=E.preserve_generators(g))
        else:
            y = block(x, g)
        y.sum().backward()
        assert x.grad is not None
        return x.grad, g.get_state()

    plain_grad, plain_state = grad_and_state(False)
    ckpt_grad, ckpt_state = grad_and_state(True)
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=0, atol=0)
    assert torch.equal(ckpt_state, plain_state)  # the stream goes on as without checkpointing


def test_preserve_generators_refuses_what_is_not_a_generator() -> None:
    with pytest.raises(TypeError, match=r"takes torch\.Generator, got int"):
        E.preserve_generators(0)  # type: ignore[arg-type]
