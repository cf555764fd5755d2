"""Exact enumeration and the bias/variance report."""

from __future__ import annotations

import pytest
import torch

from stochrnn import GumbelSigmoid, GumbelSoftmax, Reinforce, StraightThrough
from stochrnn.diagnostics import (
    enumerate_values,
    estimate_gradients,
    exact_gradient,
    gradient_bias_variance,
)


def test_enumeration_covers_every_configuration_once() -> None:
    binary = enumerate_values((2, 3), "binary")
    assert binary.shape == (64, 2, 3)
    assert len({tuple(v.flatten().tolist()) for v in binary}) == 64
    cat = enumerate_values((2, 4), "categorical")
    assert cat.shape == (16, 2, 4) and bool((cat.sum(-1) == 1).all())
    assert len({tuple(v.argmax(-1).tolist()) for v in cat}) == 16


def test_exact_gradient_matches_closed_form() -> None:
    a = torch.tensor([0.3, -1.2, 2.0])
    w = torch.tensor([1.0, -2.0, 0.5])
    # E[w·z] = Σ w_i sigmoid(a_i) ⇒ gradient w_i sigmoid'(a_i).
    grad = exact_gradient(a, lambda z: (z * w).sum(-1), "binary")
    s = torch.sigmoid(a.double())
    torch.testing.assert_close(grad, w.double() * s * (1 - s))
    # Categorical: E[w·z] = w·softmax(a) ⇒ J^T w with J = diag(p) - p p^T.
    p = torch.softmax(a.double(), -1)
    grad = exact_gradient(a, lambda z: (z * w).sum(-1), "categorical")
    torch.testing.assert_close(grad, (torch.diag(p) - torch.outer(p, p)) @ w.double())


def test_straight_through_and_gumbel_are_biased_reinforce_is_not() -> None:
    """With a non-linear f, relaxed estimators show bias far beyond sampling error."""
    a = torch.tensor([0.5, -1.0, 1.5])

    def f(z: torch.Tensor) -> torch.Tensor:
        return (z[..., 0] - z[..., 1] * z[..., 2]) ** 2

    torch.manual_seed(0)
    st = gradient_bias_variance(StraightThrough(), a, f, num_samples=4000)
    gs = gradient_bias_variance(GumbelSigmoid(0.5), a, f, num_samples=4000)
    rf = gradient_bias_variance(Reinforce(categorical=False), a, f, num_samples=4000)
    # A bias beyond 5 standard errors has probability < 1e-6 for an unbiased estimator.
    assert st.max_abs_z > 5 and gs.max_abs_z > 5
    assert rf.max_abs_z < 4.0  # 3 logits: false-alarm rate below 2e-4
    assert rf.rmse > 0 and gs.relative_bias > 0 and st.total_variance >= 0
    assert rf.bias_norm == pytest.approx(float(rf.bias.norm()))


def test_estimates_have_one_row_per_sample() -> None:
    grads = estimate_gradients(
        GumbelSoftmax(0.5), torch.zeros(4), lambda z: z[..., 0], 1200, batch_size=500
    )
    assert grads.shape == (1200, 4) and grads.dtype == torch.float64


def test_too_large_problems_and_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="configurations"):
        enumerate_values((20,), "binary")
    with pytest.raises(ValueError, match="family"):
        enumerate_values((3,), "ternary")
    with pytest.raises(ValueError, match="last dimension"):
        enumerate_values((), "categorical")
    with pytest.raises(ValueError, match="num_samples"):
        estimate_gradients(GumbelSigmoid(), torch.zeros(2), lambda z: z.sum(-1), 0)
    with pytest.raises(ValueError, match="rewards of shape"):
        exact_gradient(torch.zeros(2), lambda z: z, "binary")


def test_estimator_demo_table_separates_biased_from_unbiased(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from examples.estimator_demo import main

    main(["--samples", "4000", "--seed", "1"])
    table = {
        line.split("|")[1].strip(): float(line.split("|")[4])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and not line.startswith("| estimator")
    }
    assert table["Reinforce()"] < 4 and table["Reinforce(categorical=False)"] < 4
    assert table["GumbelSigmoid(1.0)"] > 4 and table["StraightThrough()"] > 4
