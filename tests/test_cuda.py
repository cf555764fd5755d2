"""HMRNN on a GPU: a training step captured in a CUDA graph and replayed equals eager.

Capture needs a step without host synchronisation and without data-dependent
shapes, which the fused path keeps to in training (the native kernels and the
inference-time skipping of COPY rows are CPU-only). These tests need a CUDA
device and run wherever there is one.
"""

from __future__ import annotations

import pytest
import torch

from stochrnn import HMRNN, GumbelSigmoid, StraightThrough

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def training_step(rnn: HMRNN, x: torch.Tensor) -> torch.Tensor:
    out = rnn(x)
    loss = out.output.pow(2).mean() + 0.1 * out.boundaries.mean()
    loss.backward()
    return loss.detach()


@cuda
def test_captured_training_step_replays_like_eager() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    rnn = HMRNN(16, 32, num_layers=3, boundary=StraightThrough()).to(device)
    static_x = torch.randn(8, 12, 16, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as capture requires
        for _ in range(3):
            rnn.zero_grad(set_to_none=False)
            training_step(rnn, static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    rnn.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_loss = training_step(rnn, static_x)
    for _ in range(2):
        new_x = torch.randn_like(static_x)
        static_x.copy_(new_x)
        for p in rnn.parameters():
            assert p.grad is not None
            p.grad.zero_()
        graph.replay()
        replayed = [p.grad.clone() for p in rnn.parameters() if p.grad is not None]
        replayed_loss = static_loss.clone()
        rnn.zero_grad(set_to_none=True)
        eager_loss = training_step(rnn, new_x)
        torch.testing.assert_close(replayed_loss, eager_loss)
        for a, p in zip(replayed, [p for p in rnn.parameters() if p.grad is not None], strict=True):
            torch.testing.assert_close(a, p.grad)
        rnn.zero_grad(set_to_none=False)


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
