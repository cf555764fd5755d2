"""HMRNN on a GPU: training and inference steps captured in a CUDA graph replay like eager.

Capture needs a step without host synchronisation and without data-dependent
shapes (checked without a GPU in ``tests/test_no_host_sync.py``; the native kernels
and the inference-time skipping of COPY rows are CPU-only). A replay draws its
random numbers from the generator's state at replay, so after the same
``torch.cuda.manual_seed`` a replay and an eager step draw the same boundaries and
dropout masks, and can be compared value for value. These tests need a CUDA device
and run wherever there is one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stochrnn import HMRNN, GumbelSigmoid, StraightThrough

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# A replay and an eager call run the same kernels; the margin allows for a library
# that picks another algorithm on the capture stream.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}

MODELS = {
    "straight-through": lambda: HMRNN(16, 32, num_layers=3, boundary=StraightThrough()),
    "defaults": lambda: HMRNN(16, 32, num_layers=3, dropout=0.2),  # Gumbel-sigmoid, the prior
    "defaults-per-step": lambda: HMRNN(16, 32, num_layers=3, dropout=0.2, fused=False),
}


def padded_mask(device: str = "cuda") -> torch.Tensor:
    mask = torch.ones(8, 12, dtype=torch.bool, device=device)
    mask[1, 8:] = False
    return mask


def training_loss(rnn: HMRNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loss with what a training loop adds (a mask with padding, the boundary prior),
    and the boundaries drawn."""
    mask = padded_mask(x.device.type)
    out = rnn(x, mask=mask)
    loss = out.output.pow(2).mean() + 0.1 * out.boundaries.mean() + rnn.prior_loss(out, mask)
    return loss, out.boundaries


def warm_up_then_capture(
    step: Callable[[], tuple[torch.Tensor, ...]],
) -> tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]:
    """Three eager calls on a side stream (as capture requires), then ``step`` captured;
    returns the graph and the tensors each replay writes ``step``'s results to."""
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
@pytest.mark.parametrize("model", list(MODELS))
def test_captured_training_step_replays_like_eager(model: str) -> None:
    torch.manual_seed(0)
    rnn = MODELS[model]().cuda()
    params = list(rnn.parameters())
    static_x = torch.randn(8, 12, 16, device="cuda")

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        rnn.zero_grad(set_to_none=False)  # in the graph: each replay starts from zero
        loss, boundaries = training_loss(rnn, static_x)
        loss.backward()
        return loss.detach(), boundaries.detach()

    graph, (static_loss, static_boundaries) = warm_up_then_capture(step)
    static_grads = [p.grad for p in params]  # the tensors each replay writes
    assert any(g is not None for g in static_grads)
    for seed in (1, 2):
        with torch.no_grad():  # as an optimizer would: the graph must read the new weights
            for p in params:
                p.add_(0.01 * torch.randn_like(p))
        static_x.copy_(torch.randn_like(static_x))
        torch.cuda.manual_seed(seed)
        graph.replay()
        torch.cuda.manual_seed(seed)
        eager_loss, eager_boundaries = training_loss(rnn, static_x)  # .grad stays the graph's
        eager_grads = torch.autograd.grad(eager_loss, params, allow_unused=True)
        torch.testing.assert_close(static_boundaries, eager_boundaries.detach(), **TOLERANCE)
        torch.testing.assert_close(static_loss, eager_loss.detach(), **TOLERANCE)
        for replayed, eager in zip(static_grads, eager_grads, strict=True):
            assert (replayed is None) == (eager is None)
            if replayed is not None:
                torch.testing.assert_close(replayed, eager, **TOLERANCE)


@cuda
def test_each_replay_draws_afresh() -> None:
    """Without reseeding, a graph with Gumbel-sigmoid boundaries draws new ones each time."""
    torch.manual_seed(3)
    rnn = MODELS["defaults"]().cuda()
    static_x = torch.randn(8, 12, 16, device="cuda")

    def step() -> tuple[torch.Tensor]:
        with torch.no_grad():
            return (rnn(static_x).boundaries,)

    graph, (static_boundaries,) = warm_up_then_capture(step)
    draws = []
    for _ in range(2):
        graph.replay()
        draws.append(static_boundaries.clone())
    assert not torch.equal(draws[0], draws[1])


@cuda
@pytest.mark.parametrize("model", ["straight-through", "defaults"])
def test_captured_inference_replays_like_eager(model: str) -> None:
    """Under ``no_grad`` off the CPU every row is computed: nothing waits for the device."""
    torch.manual_seed(4)
    rnn = MODELS[model]().cuda()
    static_x = torch.randn(8, 12, 16, device="cuda")

    def step() -> tuple[torch.Tensor]:
        with torch.no_grad():
            return (rnn(static_x, mask=padded_mask()).output,)

    graph, (static_out,) = warm_up_then_capture(step)
    static_x.copy_(torch.randn_like(static_x))
    torch.cuda.manual_seed(5)
    graph.replay()
    torch.cuda.manual_seed(5)
    torch.testing.assert_close(static_out, step()[0], **TOLERANCE)


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
