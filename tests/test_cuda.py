"""HMRNN on a GPU: a training step captured in a CUDA graph and replayed equals eager.

Capture needs a step without host synchronisation and without data-dependent
shapes, which the fused path keeps to in training (the native kernels and the
inference-time skipping of COPY rows are CPU-only). These tests need a CUDA
device and run wherever there is one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stochrnn import HMRNN, GumbelSigmoid, StraightThrough

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def training_loss(rnn: HMRNN, x: torch.Tensor) -> torch.Tensor:
    """A loss with everything a training loop adds: a mask, the default boundary prior."""
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    out = rnn(x, mask=mask)
    return out.output.pow(2).mean() + 0.1 * out.boundaries.mean() + rnn.prior_loss(out, mask)


def warm_up_then_capture(
    step: Callable[[], torch.Tensor],
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Three eager calls on a side stream (as capture requires), then ``step`` captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    return graph, static


@cuda
def test_captured_training_step_replays_like_eager() -> None:
    torch.manual_seed(0)
    rnn = HMRNN(16, 32, num_layers=3, boundary=StraightThrough()).cuda()
    params = list(rnn.parameters())
    static_x = torch.randn(8, 12, 16, device="cuda")

    def step() -> torch.Tensor:
        rnn.zero_grad(set_to_none=False)  # in the graph: each replay starts from zero
        loss = training_loss(rnn, static_x)
        loss.backward()
        return loss.detach()

    graph, static_loss = warm_up_then_capture(step)
    static_grads = [p.grad for p in params]  # the tensors each replay writes
    assert any(g is not None for g in static_grads)
    for _ in range(2):
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        eager_loss = training_loss(rnn, static_x)  # the .grad tensors stay the graph's
        eager_grads = torch.autograd.grad(eager_loss, params, allow_unused=True)
        torch.testing.assert_close(static_loss, eager_loss.detach())
        for replayed, eager in zip(static_grads, eager_grads, strict=True):
            assert (replayed is None) == (eager is None)
            if replayed is not None:
                torch.testing.assert_close(replayed, eager)


@cuda
def test_fused_and_per_step_agree_on_cuda() -> None:
    torch.manual_seed(1)
    device = torch.device("cuda")
    rnn = HMRNN(5, 8, num_layers=3, boundary=GumbelSigmoid(0.5, hard=False)).to(device).double()
    x = torch.randn(4, 9, 5, device=device, dtype=torch.float64)
    results = []
    for fused in (True, False):
        rnn.fused = fused
        torch.manual_seed(2)
        out = rnn(x)
        grads = torch.autograd.grad(out.output.pow(2).sum(), list(rnn.parameters()))
        results.append((out.output, grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


@cuda
def test_the_default_model_captures_and_each_replay_draws_afresh() -> None:
    """Gumbel-sigmoid boundaries and the default prior: a graph replays new noise each time."""
    torch.manual_seed(3)
    rnn = HMRNN(16, 32, num_layers=3).cuda()
    static_x = torch.randn(8, 12, 16, device="cuda")
    boundaries: list[torch.Tensor] = []

    def step() -> torch.Tensor:
        rnn.zero_grad(set_to_none=False)
        mask = torch.ones(8, 12, dtype=torch.bool, device="cuda")
        out = rnn(static_x, mask=mask)
        loss = out.output.pow(2).mean() + rnn.prior_loss(out, mask)
        loss.backward()
        boundaries[:] = [out.boundaries.detach()]
        return loss.detach()

    graph, static_loss = warm_up_then_capture(step)
    draws = []
    for _ in range(2):
        graph.replay()
        draws.append(boundaries[0].clone())
        assert torch.isfinite(static_loss)
        assert all(torch.isfinite(p.grad).all() for p in rnn.parameters() if p.grad is not None)
    assert not torch.equal(draws[0], draws[1])


@cuda
def test_captured_inference_replays_like_eager() -> None:
    """Under ``no_grad`` off the CPU every row is computed: nothing to wait for, capturable."""
    torch.manual_seed(4)
    rnn = HMRNN(16, 32, num_layers=3, boundary=StraightThrough()).cuda()
    static_x = torch.randn(8, 12, 16, device="cuda")

    def step() -> torch.Tensor:
        with torch.no_grad():
            return rnn(static_x).output

    graph, static_out = warm_up_then_capture(step)
    static_x.copy_(torch.randn_like(static_x))
    graph.replay()
    torch.testing.assert_close(static_out, step())
