"""The conformance suite passes our estimators and names the property a broken one breaks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from stochrnn import (
    AdaptiveTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    Reinforce,
)
from stochrnn.testing import EstimatorCheckError, check_estimator, chi2_critical, normal_critical
from tests.estimator_zoo import all_estimators, ids

OURS = all_estimators()


@pytest.mark.parametrize("est", OURS, ids=ids(OURS))
def test_our_estimators_pass_the_conformance_suite(est: Estimator) -> None:
    passed = check_estimator(est)
    expected = ["shapes", "values", "frequencies", "log_prob", "gradient"]
    assert passed == (expected if est.pathwise else [*expected, "unbiased"])


def test_adaptive_temperature_estimator_passes_with_a_context() -> None:
    est = GumbelSoftmax(AdaptiveTemperature(context_size=4))
    assert "gradient" in check_estimator(est, context=torch.randn(4))


class WrongProbabilities(GumbelSigmoid):
    """Samples from sigmoid(a + 0.3) while claiming sigmoid(a)."""

    def sample(self, logits: Tensor, context: Tensor | None = None, *, generator=None) -> Tensor:  # type: ignore[no-untyped-def]
        return super().sample(logits + 0.3, context, generator=generator)


class NoGradient(GumbelSoftmax):
    def sample(self, logits: Tensor, context: Tensor | None = None, *, generator=None) -> Tensor:  # type: ignore[no-untyped-def]
        return super().sample(logits, context, generator=generator).detach()


class WrongShape(GumbelSigmoid):
    def sample(self, logits: Tensor, context: Tensor | None = None, *, generator=None) -> Tensor:  # type: ignore[no-untyped-def]
        return super().sample(logits, context, generator=generator).flatten()


class PeekingBaseline(Reinforce):
    """Lets half of each sample's own reward into the baseline: biased by a factor 1/2."""

    def surrogate_loss(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        return super().surrogate_loss(log_prob, reward) * 0.5


class Float32LogProb(GumbelSigmoid):
    """Computes log_prob in float32 whatever the logits (so float64 gradchecks fail)."""

    def log_prob(self, logits: Tensor, value: Tensor) -> Tensor:
        return super().log_prob(logits.float(), value.float())


class NotOneHot(GumbelSoftmax):
    def sample(self, logits: Tensor, context: Tensor | None = None, *, generator=None) -> Tensor:  # type: ignore[no-untyped-def]
        return super().sample(logits, context, generator=generator) * 0.999


@pytest.mark.parametrize(
    ("broken", "prop"),
    [
        (WrongProbabilities(0.3), "frequencies"),
        (NoGradient(0.3), "gradient"),
        (WrongShape(0.3), "shapes"),
        (PeekingBaseline(categorical=False), "unbiased"),
        (NotOneHot(0.3), "values"),
        (Float32LogProb(0.3), "shapes"),
    ],
    ids=[
        "wrong-probabilities",
        "no-gradient",
        "wrong-shape",
        "biased",
        "not-one-hot",
        "float32-log-prob",
    ],
)
def test_broken_estimators_fail_naming_the_property(broken: Estimator, prop: str) -> None:
    with pytest.raises(EstimatorCheckError, match=f"'{prop}'") as info:
        check_estimator(broken)
    assert info.value.prop == prop


def test_check_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    check_estimator(GumbelSigmoid(), num_samples=2000)
    assert torch.equal(torch.rand(1), before)


def test_critical_values_match_tables() -> None:
    # Tabulated upper quantiles: z_{0.975} = 1.95996; chi-square (dof, alpha) below.
    assert normal_critical(0.05) == pytest.approx(1.95996, abs=1e-4)
    table = {(3, 1e-3): 16.266, (5, 1e-3): 20.515, (10, 0.01): 23.209, (30, 0.01): 50.892}
    for (dof, alpha), value in table.items():
        assert chi2_critical(dof, alpha) == pytest.approx(value, rel=0.02)
    assert chi2_critical(1, 0.05) == pytest.approx(3.8415, rel=1e-4)
    with pytest.raises(ValueError, match="dof"):
        chi2_critical(0, 0.05)
