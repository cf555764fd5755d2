"""Noise and relaxations of stochrnn.functional."""

from __future__ import annotations

import torch

from stochrnn import functional as F


def test_noise_is_finite_even_when_the_uniform_hits_its_bounds() -> None:
    u = F.uniform_open((10,), eps=0.5)  # every draw clamped to exactly 0.5
    assert bool((u == 0.5).all())
    g = F.gumbel_noise((100000,), generator=torch.Generator().manual_seed(0))
    l = F.logistic_noise((100000,), generator=torch.Generator().manual_seed(0))
    assert g.isfinite().all() and l.isfinite().all() and g.dtype == torch.float32


def test_noise_moments_match_gumbel_and_logistic() -> None:
    """Mean of Gumbel is Euler's gamma, variance pi^2/6; logistic: 0 and pi^2/3.

    Tolerances are 6 standard errors at n = 200,000 (false-alarm rate < 1e-8).
    """
    n = 200000
    g = F.gumbel_noise((n,), generator=torch.Generator().manual_seed(1)).double()
    l = F.logistic_noise((n,), generator=torch.Generator().manual_seed(2)).double()
    pi2 = torch.pi**2
    assert abs(g.mean() - 0.5772157) < 6 * (pi2 / 6 / n) ** 0.5
    assert abs(l.mean()) < 6 * (pi2 / 3 / n) ** 0.5
    assert abs(g.var() - pi2 / 6) < 0.05 and abs(l.var() - pi2 / 3) < 0.1


def test_hard_sigmoid_slope() -> None:
    x = torch.tensor([-1.0, -0.25, 0.0, 0.25, 1.0])
    assert F.hard_sigmoid(x, slope=2.0).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_log_probs_work_in_logit_space_at_extremes() -> None:
    a = torch.tensor([-60.0, 60.0])
    lp = F.binary_log_prob(a, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(lp, torch.tensor([-60.0, -60.0]))
    lp = F.categorical_log_prob(torch.tensor([[0.0, -80.0]]), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(lp, torch.tensor([-80.0]))


def test_hard_relaxations_keep_dtype_and_are_exact() -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        a = torch.randn(6, 5).to(dtype)
        z = F.gumbel_softmax(a, 0.05, hard=True)
        assert z.dtype == dtype and bool((z.sum(-1) == 1).all())
        b = F.gumbel_sigmoid(a, 0.05, hard=True)
        assert b.dtype == dtype and bool(((b == 0) | (b == 1)).all())
