"""Statistical properties of hard attention, against exact answers.

* The region chosen follows softmax(scores): chi-square goodness of fit.
* REINFORCE attention's surrogate gradient is unbiased: Monte Carlo mean against the
  gradient of E[reward] computed by enumerating every region.

Both run with fixed seeds, so a pass stays a pass; each states its false-alarm rate,
the chance that a correct implementation would fail it with a fresh seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import pytest
import torch

from stochrnn import (
    AdaptiveTemperature,
    GumbelSoftmaxAttention,
    HardAttention,
    Reinforce,
    ReinforceAttention,
)

#: False-alarm rate of each statistical test below.
FALSE_ALARM = 1e-3


def chi_square_critical_value(dof: int, false_alarm: float) -> float:
    """Upper ``false_alarm`` quantile of chi-square(``dof``), by Wilson–Hilferty.

    ``(X / k)^(1/3)`` is close to normal with mean ``1 - 2/(9k)`` and variance ``2/(9k)``;
    for ``k = 8`` and ``1e-3`` this gives 26.3 against the exact 26.12 (slightly
    conservative, so the stated false-alarm rate is an upper bound).
    """
    z = NormalDist().inv_cdf(1.0 - false_alarm)
    v = 2.0 / (9.0 * dof)
    return dof * (1.0 - v + z * math.sqrt(v)) ** 3


def test_chi_square_critical_value_matches_the_table() -> None:
    # Tabled upper 0.1% points of chi-square with 8 and 48 degrees of freedom.
    assert chi_square_critical_value(8, 1e-3) == pytest.approx(26.124, rel=0.01)
    assert chi_square_critical_value(48, 1e-3) == pytest.approx(84.037, rel=0.01)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: HardAttention(3, 9),
        lambda: GumbelSoftmaxAttention(3, 9, temperature=AdaptiveTemperature(3)),
        lambda: ReinforceAttention(3, 9),
        lambda: HardAttention(3, 9, estimator=Reinforce(), scoring="additive", feature_size=4),
    ],
    ids=["default", "gumbel-adaptive", "reinforce", "reinforce-additive"],
)
def test_region_frequencies_match_the_softmax_of_the_scores(
    factory: Callable[[], HardAttention],
) -> None:
    """Chi-square test with N - 1 = 8 degrees of freedom over 20,000 draws of one
    (features, query) pair, at false-alarm rate 1e-3. Every expected count is above 5,
    where the chi-square approximation holds."""
    torch.manual_seed(0)
    att = factory()
    draws = 20_000
    features = torch.randn(1, 9, 4).expand(draws, 9, 4)
    query = torch.randn(1, 3).expand(draws, 3)
    with torch.no_grad():
        # Scale the last linear map of the scoring so that the scores have standard
        # deviation 1: far enough from uniform to catch a wrong distribution.
        last = att.score.linear if hasattr(att.score, "linear") else att.score.v
        scale = 1.0 / att.scores(features[:1], query[:1]).std()
        for p in last.parameters():
            p.mul_(scale)
        out = att(features, query, generator=torch.Generator().manual_seed(1))
        probs = att.scores(features[:1], query[:1]).softmax(-1)[0].double()
    observed = out.weights.sum(0).double()
    expected = draws * probs
    assert float(expected.min()) > 5.0
    assert float(probs.max() / probs.min()) > 5.0  # not close to uniform
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi_square_critical_value(8, FALSE_ALARM), (observed, expected)


@pytest.mark.parametrize("scoring", ["location", "additive"])
def test_reinforce_surrogate_gradient_is_unbiased(scoring: str) -> None:
    r"""Gradient of the surrogate against :math:`-\lambda\nabla\mathbb{E}[r]` by enumeration.

    One (features, query) pair over N = 4 regions; the reward of region i is
    :math:`r_i = w^\top X_i`, so :math:`\mathbb{E}[r] = \sum_i \operatorname{softmax}(a)_i r_i`
    and its exact gradient is taken by autograd. The estimate is the mean of M = 200
    independent batch gradients of 100 draws each, with the moving-average baseline
    updated every batch as in training (the baseline only uses earlier batches, so the
    estimate stays unbiased). Each parameter must lie within 4.5 standard errors of the
    exact gradient: per parameter the false-alarm rate is 7e-6, so under 1e-3 in all
    by the union bound (CLT over 200 batches). The tolerance is also checked to be small
    against the gradient, so that a biased estimator would fail.
    """
    torch.manual_seed(0)
    weight = 2.0
    att = ReinforceAttention(3, 4, weight=weight, scoring=scoring, feature_size=2)
    params = list(att.parameters())
    features, query = torch.randn(1, 4, 2), torch.randn(1, 3)
    reward_direction = torch.tensor([1.0, -2.0])

    rewards = features[0] @ reward_direction
    expected_reward = (att.scores(features, query).softmax(-1)[0] * rewards).sum()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(expected_reward, params)])

    batches, batch_size = 200, 100
    generator = torch.Generator().manual_seed(1)
    estimates = []
    for _ in range(batches):
        out = att(
            features.expand(batch_size, 4, 2), query.expand(batch_size, 3), generator=generator
        )
        loss = att.surrogate_loss(out.log_prob, out.context @ reward_direction)
        grads = torch.autograd.grad(loss, params)
        estimates.append(-torch.cat([g.flatten() for g in grads]) / weight)
    stacked = torch.stack(estimates)
    mean, standard_error = stacked.mean(0), stacked.std(0) / math.sqrt(batches)

    assert float(att.estimator.baseline.value()) != 0.0
    tolerance = 4.5 * standard_error
    assert float(tolerance.max()) < 0.2 * float(exact.abs().max())
    assert bool(((mean - exact).abs() <= tolerance).all()), (mean, exact, standard_error)
