"""Gradients of HMRNN beyond ``loss.backward()``: double backward, torch.func, compiled autograd.

Both of its paths are checked: the fused sequence (one autograd node whose
higher-order and functorch gradients re-run its forward under autograd) and the
per-step path (plain autograd operations). References are central finite
differences in float64 (step 1e-6: truncation error ~1e-12, far below the
tolerance 1e-6) or plain autograd.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call, grad, jacrev, vmap

from stochrnn import HMRNN, GumbelSigmoid, StraightThrough

PATHS = pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-step"])


def smooth_rnn(fused: bool) -> HMRNN:
    """Relaxed boundaries: every output is a smooth function, so finite differences apply."""
    torch.manual_seed(0)
    rnn = HMRNN(3, 4, num_layers=2, boundary=GumbelSigmoid(0.5, hard=False), fused=fused)
    return rnn.double()


def params_of(rnn: HMRNN) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in rnn.named_parameters()}


def run(rnn: HMRNN, params: dict[str, Tensor], x: Tensor) -> Tensor:
    generator = torch.Generator().manual_seed(0)  # the same draws at every call
    return functional_call(rnn, params, (x,), {"generator": generator}).output


@PATHS
def test_gradient_penalty_weight_gradient_matches_finite_differences(fused: bool) -> None:
    """d/dW of |d loss / d x|², the double backward a gradient penalty runs."""
    rnn = smooth_rnn(fused)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)

    def penalty(params: dict[str, Tensor]) -> Tensor:
        (gx,) = torch.autograd.grad(run(rnn, params, x).pow(2).sum(), x, create_graph=True)
        return gx.pow(2).sum()

    params = {k: v.requires_grad_() for k, v in params_of(rnn).items()}
    penalty(params).backward()
    eps = 1e-6
    for name in ("cells.0.weight", "cells.1.weight", "cells.1.bias"):
        analytic = params[name].grad
        assert analytic is not None
        flat = params[name].detach().flatten()
        for index in (0, flat.numel() // 2, flat.numel() - 1):
            values = []
            for sign in (1, -1):
                shifted = params_of(rnn)
                shifted[name].view(-1)[index] += sign * eps
                values.append(penalty({k: v.requires_grad_() for k, v in shifted.items()}).item())
            numeric = (values[0] - values[1]) / (2 * eps)
            assert abs(analytic.flatten()[index].item() - numeric) < 1e-6, (name, index)


def test_input_gradient_penalty_agrees_between_the_paths() -> None:
    """The fused path's double backward equals plain autograd's (the per-step path)."""
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    results = []
    for fused in (True, False):
        rnn = smooth_rnn(fused)
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(
            run(rnn, params_of(rnn), xi).pow(2).sum(), xi, create_graph=True
        )
        (second,) = torch.autograd.grad(gx.pow(2).sum(), xi)
        results.append(second)
    torch.testing.assert_close(results[0], results[1], atol=1e-10, rtol=1e-8)


def test_hard_boundaries_double_backward_agrees_between_the_paths() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        torch.manual_seed(1)
        rnn = HMRNN(3, 4, 3, boundary=StraightThrough(), fused=fused).double()
        params = {k: v.requires_grad_() for k, v in params_of(rnn).items()}
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(run(rnn, params, xi).sum(), xi, create_graph=True)
        grads.append(torch.autograd.grad(gx.pow(2).sum(), list(params.values())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@PATHS
def test_torch_func_grad_equals_backward(fused: bool) -> None:
    rnn = smooth_rnn(fused)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    params = params_of(rnn)
    functional = grad(lambda p: run(rnn, p, x).pow(2).sum())(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    run(rnn, leaves, x).pow(2).sum().backward()
    for name, value in functional.items():
        torch.testing.assert_close(value, leaves[name].grad, atol=1e-12, rtol=1e-10)


def test_per_sample_gradients_with_vmap_of_grad() -> None:
    """vmap(grad) (e.g. for differential privacy) equals one backward per sample (fused path;
    the per-step path's estimators check their logits for NaN, which vmap refuses: pass
    ``validate_args=False`` there)."""
    rnn = smooth_rnn(fused=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    params = params_of(rnn)

    def loss(p: dict[str, Tensor], sample: Tensor) -> Tensor:
        return run(rnn, p, sample.unsqueeze(0)).pow(2).sum()

    batched = vmap(grad(loss), in_dims=(None, 0), randomness="same")(params, x)
    for i in range(x.shape[0]):
        single = grad(loss)(params, x[i])
        for name, value in single.items():
            torch.testing.assert_close(batched[name][i], value, atol=1e-12, rtol=1e-10)


@PATHS
def test_jacrev_with_respect_to_the_input(fused: bool) -> None:
    rnn = smooth_rnn(fused)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    params = params_of(rnn)
    jacobian = jacrev(lambda xx: run(rnn, params, xx).sum(-1))(x)
    reference = torch.autograd.functional.jacobian(lambda xx: run(rnn, params, xx).sum(-1), x)
    torch.testing.assert_close(jacobian, reference, atol=1e-12, rtol=1e-10)


@PATHS
def test_compiled_autograd_equals_eager(fused: bool) -> None:
    torch.manual_seed(2)
    rnn = HMRNN(3, 4, 2, boundary=StraightThrough(), fused=fused)
    x = torch.randn(2, 5, 3)
    rnn(x).output.pow(2).sum().backward()
    eager = [p.grad.clone() for p in rnn.parameters() if p.grad is not None]
    rnn.zero_grad()
    compiled_autograd = pytest.importorskip("torch._dynamo.compiled_autograd")
    with compiled_autograd._enable(torch.compile(backend="eager")):
        rnn(x).output.pow(2).sum().backward()
    compiled = [p.grad for p in rnn.parameters() if p.grad is not None]
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)
