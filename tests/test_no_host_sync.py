"""Training steps that never read a value back to the host, checked without a GPU.

A tensor on PyTorch's ``meta`` device has a shape, a dtype and no values, so
anything that reads a value on the host raises there: ``.item()``, ``bool(t)``,
``.tolist()``, a validity check such as ``if torch.isnan(x).any()``, and every
operation whose output shape depends on values (``nonzero``, boolean indexing).
On a GPU each of these waits for the device and makes a step impossible to
capture in a CUDA graph. A forward and backward that run on ``meta`` are free of
both. They also run under :class:`~tests.one_device.OneDevice`, which fails on any
tensor handed to an operator from the host (a host-to-device copy, or a 0-dim host
tensor read as a number, which a CUDA graph would replay with its value at capture).
``tests/test_cuda.py`` captures and replays steps wherever a GPU exists.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stochrnn import (
    HMRNN,
    AdaptiveTemperature,
    AnnealedTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmaxAttention,
    HardAttention,
    LearnedTemperature,
    Reinforce,
    ReinforceAttention,
    SoftAttention,
    StraightThrough,
)
from tests.one_device import OneDevice

META = torch.device("meta")
HIDDEN = 8

BOUNDARIES: dict[str, Callable[[], Estimator]] = {
    "straight-through": StraightThrough,
    "straight-through-stochastic": lambda: StraightThrough(stochastic=True),
    "gumbel-hard": lambda: GumbelSigmoid(0.5),
    "gumbel-soft": lambda: GumbelSigmoid(0.5, hard=False),
    "reinforce": lambda: Reinforce(categorical=False),
    # without a closed form (boundary_rule): the per-step path only
    "gumbel-learnt-temperature": lambda: GumbelSigmoid(LearnedTemperature()),
    "gumbel-annealed-temperature": lambda: GumbelSigmoid(AnnealedTemperature()),
    "gumbel-adaptive-temperature": lambda: GumbelSigmoid(AdaptiveTemperature(HIDDEN)),
}
PER_STEP_ONLY = {
    "gumbel-learnt-temperature",
    "gumbel-annealed-temperature",
    "gumbel-adaptive-temperature",
}


def hmrnn(boundary: str | None, **options: object) -> HMRNN:
    """A 3-layer HMRNN on ``meta`` with ``boundary``'s estimator in every layer (``None``:
    the library's defaults)."""
    chosen = {} if boundary is None else {"boundary": [BOUNDARIES[boundary]() for _ in range(3)]}
    return HMRNN(6, HIDDEN, num_layers=3, **chosen, **options).to(META)  # type: ignore[arg-type]


PATHS = [
    (None, True),
    (None, False),
    *(
        (name, fused)
        for name in BOUNDARIES
        for fused in (True, False)
        if not (fused and name in PER_STEP_ONLY)
    ),
]


@pytest.mark.parametrize(
    ("boundary", "fused"),
    PATHS,
    ids=[f"{name or 'defaults'}-{'fused' if fused else 'per-step'}" for name, fused in PATHS],
)
def test_hmrnn_training_steps_read_nothing_back(boundary: str | None, fused: bool) -> None:
    rnn = hmrnn(boundary, fused=fused, dropout=0.1)
    assert (rnn._fused_config(META.type) is not None) == fused  # the path the id names
    x = torch.randn(4, 4, 6, device=META)
    mask = torch.ones(4, 4, dtype=torch.bool, device=META)
    state = None
    for _ in range(2):  # the second chunk starts from the first's state
        with OneDevice(META):
            out = rnn(x, state, mask=mask)
            reward = -out.output.pow(2).mean(dim=(1, 2)).detach()
            loss = (
                out.output.pow(2).mean()
                + rnn.prior_loss(out, mask)
                + rnn.surrogate_loss(out.layer_log_prob, reward)
            )
            loss.backward()
        assert out.output.device == META and out.output.shape == (4, 4, 3 * HIDDEN)
        state = out.state.detach()
    assert all(p.grad is not None for p in rnn.parameters() if p.requires_grad)


def test_hmrnn_layer_norm_and_output_embedding_read_nothing_back() -> None:
    rnn = hmrnn("gumbel-hard", layer_norm=True, output_embedding_size=5)
    with OneDevice(META):
        out = rnn(torch.randn(4, 4, 6, device=META))
        (out.output.sum() + rnn.prior_loss(out)).backward()
        y, _ = rnn.step(torch.randn(4, 6, device=META))
    assert y.shape == (4, 5)


@pytest.mark.parametrize("boundary", [None, "gumbel-hard", "reinforce"])
def test_hmrnn_inference_off_the_cpu_computes_every_row(boundary: str | None) -> None:
    """Skipping rows in COPY needs their indices on the host: only on the CPU."""
    rnn = hmrnn(boundary)
    assert rnn.skip_copy_rows
    x = torch.randn(4, 4, 6, device=META)
    with torch.no_grad(), OneDevice(META):
        assert rnn(x).output.shape == (4, 4, 3 * HIDDEN)
    with torch.inference_mode(), OneDevice(META):
        assert rnn.eval()(x).output.shape == (4, 4, 3 * HIDDEN)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SoftAttention(5, 4),
        lambda: HardAttention(5, 4),
        lambda: GumbelSoftmaxAttention(5, 4),
        lambda: GumbelSoftmaxAttention(5, 4, temperature=AdaptiveTemperature(5)),
        lambda: ReinforceAttention(5, 4),
        lambda: HardAttention(5, 4, scoring="additive", feature_size=9),
    ],
    ids=["soft", "hard", "gumbel", "gumbel-adaptive", "reinforce", "hard-additive"],
)
def test_attention_training_steps_read_nothing_back(make: Callable[[], torch.nn.Module]) -> None:
    att = make().to(META)
    features = torch.randn(3, 6, 4, 9, device=META)
    with OneDevice(META):
        out = att(features, torch.randn(3, 6, 5, device=META))
        loss = out.context.sum()
        if hasattr(att, "surrogate_loss"):
            loss = loss + att.surrogate_loss(out.log_prob, torch.randn(3, device=META))
        loss.backward()
    assert out.context.shape == (3, 6, 9)


def test_a_host_read_fails_here() -> None:
    """The check itself: what these tests rely on raises on ``meta``."""
    t = torch.ones(3, device=META)
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.isnan(t).any())
    with pytest.raises((RuntimeError, NotImplementedError)):
        t.nonzero()


class _HostTensorInBackward(torch.autograd.Function):
    """The identity, whose backward multiplies by a host tensor."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * torch.tensor(2.0)


def test_a_host_tensor_fails_here() -> None:
    """The other check: a host tensor handed to an operator raises, forward or backward."""
    t = torch.ones(3, device=META, requires_grad=True)
    with OneDevice(META), pytest.raises(AssertionError, match="off meta"):
        t * torch.tensor(2.0)  # a 0-dim host tensor, read as a number at capture
    with OneDevice(META), pytest.raises(AssertionError, match="off meta"):
        torch.ones(3).to(META)  # a host-to-device copy
    y = _HostTensorInBackward.apply(t)
    with OneDevice(META), pytest.raises(AssertionError, match="off meta"):
        y.sum().backward()
