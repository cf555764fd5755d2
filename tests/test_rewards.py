"""Rewards given to ``surrogate_loss`` (issue 14, item 5).

The rule (:func:`stochrnn.estimators.validate_reward`): a reward is a 0-dim
tensor (or a number), one for everything, or has the *leading* dims of
``log_prob`` (``(B,)`` against ``(B,)`` or ``(B, T)``; ``(B, T)`` against
``(B, T)``). Any other shape is refused with a ``ValueError`` naming both shapes,
in particular ``(B, 1)`` against ``(B,)``, which would broadcast into a
``(B, B)`` outer product. Integer and boolean rewards are converted to the
log-probability's floating dtype, so the moving-average baseline never truncates.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from stochrnn import (
    HMRNN,
    GumbelSigmoid,
    GumbelSoftmax,
    GumbelSoftmaxAttention,
    MovingAverageBaseline,
    Reinforce,
    ReinforceAttention,
    SoftAttention,
    StraightThrough,
    estimators,
)

B, T, K = 4, 3, 5


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def reference_loss(log_prob: Tensor, reward: Tensor, baseline: float) -> Tensor:
    """Eq. 19 written out: -(1/B) sum_rows (r_row - b) * log_prob_row."""
    advantage = reward.double() - baseline
    while advantage.dim() < log_prob.dim():
        advantage = advantage.unsqueeze(-1)
    return -(advantage.expand_as(log_prob) * log_prob.double()).sum() / log_prob.shape[0]


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("kind", [torch.long, torch.int32, torch.bool])
def test_integer_reward_gives_the_loss_of_the_same_float_reward(kind: torch.dtype) -> None:
    """Accuracy as ``long``: the baseline (0.3 after a few batches) must not truncate to 0."""
    hits = torch.tensor([1, 0, 1, 1])
    losses = []
    for reward in (hits.to(kind), hits.float()):
        est = Reinforce(categorical=True)
        for _ in range(5):  # warm the baseline up: b = 1 - 0.9**5 times the mean reward
            est.surrogate_loss(torch.zeros(B), reward)
        a = torch.randn(B, K, generator=seeded(), requires_grad=True)
        s = est(a, generator=seeded())
        losses.append(est.surrogate_loss(s.log_prob, reward))
        assert losses[-1].dtype == torch.float32
    assert torch.equal(losses[0], losses[1]), losses


def test_moving_average_baseline_averages_an_integer_reward_as_a_float() -> None:
    b = MovingAverageBaseline(0.5)
    b.update(torch.tensor([0, 1, 1, 1]))
    assert b.value().dtype == torch.float32
    assert float(b.value()) == pytest.approx(0.375)


def test_integer_reward_takes_the_float64_dtype_of_the_log_prob() -> None:
    est = Reinforce(categorical=False).double()
    est.baseline.update(torch.tensor([1, 0]))
    log_prob = torch.full((2, 3), -0.25, dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([1, 0])
    loss = est.surrogate_loss(log_prob, reward)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, reference_loss(log_prob, reward, 0.05), rtol=0, atol=1e-15)


def test_complex_reward_is_refused() -> None:
    with pytest.raises(TypeError, match="reward must be real"):
        Reinforce().surrogate_loss(torch.zeros(B), torch.zeros(B, dtype=torch.complex64))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("log_shape", "reward"),
    [
        ((B,), torch.tensor(0.7)),  # one reward for everything
        ((B,), 0.7),  # a Python number is a 0-dim reward
        ((B,), torch.linspace(-1, 1, B)),  # one per row
        ((B, T), torch.linspace(-1, 1, B)),  # one per sequence, over its steps
        ((B, T), torch.linspace(-1, 1, B * T).reshape(B, T)),  # one per step
        ((B, T, K), torch.linspace(-1, 1, B * T).reshape(B, T)),  # leading dims of 3
    ],
)
def test_accepted_reward_shapes_give_eq_19(log_shape: tuple[int, ...], reward: object) -> None:
    log_prob = -torch.rand(log_shape, generator=seeded(), dtype=torch.float64)
    got = Reinforce().double().surrogate_loss(log_prob, reward)  # type: ignore[arg-type]
    want = reference_loss(log_prob, torch.as_tensor(reward, dtype=torch.float64), 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


BAD_SHAPES = [
    ((B,), (B, 1)),  # the outer-product trap: (B, 1) * (B,) -> (B, B)
    ((B,), (1,)),  # one element, but not 0-dim
    ((B,), (B + 1,)),
    ((B, T), (T,)),  # trailing, not leading dims
    ((B, T), (B, T, 1)),
    ((B, T), (B, 1)),
]

OWNERS: dict[str, Callable[[], nn.Module]] = {
    "Reinforce": lambda: Reinforce(),
    "Reinforce-binary": lambda: Reinforce(categorical=False),
    "GumbelSigmoid": lambda: GumbelSigmoid(),
    "GumbelSoftmax": lambda: GumbelSoftmax(),
    "StraightThrough": lambda: StraightThrough(),
    "SoftAttention": lambda: SoftAttention(3, 4),
    "GumbelSoftmaxAttention": lambda: GumbelSoftmaxAttention(3, 4),
    "ReinforceAttention": lambda: ReinforceAttention(3, 4),
}


@pytest.mark.parametrize("owner", sorted(OWNERS))
@pytest.mark.parametrize(("log_shape", "reward_shape"), BAD_SHAPES, ids=str)
def test_reward_of_another_shape_is_refused_naming_both_shapes(
    owner: str, log_shape: tuple[int, ...], reward_shape: tuple[int, ...]
) -> None:
    """Refused by every owner of a surrogate loss alike, pathwise or not."""
    module = OWNERS[owner]()
    message = f"reward of shape {reward_shape} does not fit a log_prob of shape {log_shape}"
    with pytest.raises(ValueError, match=re.escape(message)):
        module.surrogate_loss(torch.zeros(log_shape), torch.ones(reward_shape))


def test_outer_product_reward_is_refused_before_the_baseline_moves() -> None:
    est = Reinforce()
    with pytest.raises(ValueError, match=re.escape("(4, 1)")):
        est.surrogate_loss(torch.zeros(B), torch.ones(B, 1))
    assert float(est.baseline.value()) == 0.0


def test_hmrnn_surrogate_refuses_an_outer_product_reward() -> None:
    rnn = HMRNN(2, 3, num_layers=2, boundary=Reinforce(categorical=False))
    out = rnn(torch.randn(B, T, 2), generator=seeded())
    with pytest.raises(ValueError, match=re.escape("reward of shape (4, 1)")):
        rnn.surrogate_loss(out.log_prob, torch.ones(B, 1))
    rnn.surrogate_loss(out.log_prob, torch.ones(B)).backward()  # the right shape works


def test_validate_reward_returns_a_detached_float_reward() -> None:
    reward = torch.tensor([1.0, 2.0], requires_grad=True)
    out = estimators.validate_reward(torch.zeros(2, 3, dtype=torch.float16), reward)
    assert not out.requires_grad and out.dtype == torch.float32
    assert estimators.validate_reward(
        torch.zeros(2, dtype=torch.float16), torch.tensor([1, 2])
    ).dtype == (torch.float16)
