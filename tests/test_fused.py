"""The fused sequence (one autograd node, hand-derived backward; native CPU kernels or
pure PyTorch) against the per-step path of plain autograd operations, which the
semantic tests of test_hmrnn.py pin down.

Same seed, same draws: values and every gradient agree to float64 rounding
(atol 1e-10), boundaries exactly.
"""

from __future__ import annotations

import math
import os
import platform
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor

from stochrnn import (
    HMRNN,
    AdaptiveTemperature,
    GumbelSigmoid,
    HMRNNOutput,
    HMRNNState,
    Reinforce,
    StraightThrough,
)
from stochrnn.hmrnn import native
from stochrnn.hmrnn.fused import InputProduct

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "gumbel-hard": lambda: GumbelSigmoid(0.5),
    "gumbel-relaxed": lambda: GumbelSigmoid(0.7, hard=False),
    "straight-through": lambda: StraightThrough(slope=2.0),
    "straight-through-stochastic": lambda: StraightThrough(stochastic=True, slope_rate=0.5),
    "reinforce": lambda: Reinforce(categorical=False),
}


@contextmanager
def native_kernels(on: bool) -> Iterator[None]:
    """Run with the native kernels (built if needed) or with the pure-PyTorch fused step."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STOCHRNN_NATIVE", "1" if on else "0")
        yield


def random_state(rnn: HMRNN, batch: int) -> HMRNNState:
    state = rnn.initial_state(batch)
    return HMRNNState(
        tuple(torch.randn_like(t).requires_grad_() for t in state.h),
        tuple(torch.randn_like(t).requires_grad_() for t in state.c),
        tuple((torch.rand_like(t) > 0.5).to(t.dtype).requires_grad_() for t in state.z),
    )


def loss_of(out: HMRNNOutput) -> Tensor:
    """Reaches every output: hidden states, boundaries, log-probabilities, logits, state."""
    return (
        out.output.pow(2).sum()
        + 0.3 * out.boundaries.sum()
        + 0.1 * out.log_prob.sum()
        + 0.2 * out.boundary_logits.pow(2).sum()
        + sum(c.sum() for c in out.state.c)
        + out.state.h[-1].sum()
        + out.state.z[0].sum()
    )


def run(
    rnn: HMRNN, x: Tensor, state: HMRNNState, mask: Tensor | None, fused: bool
) -> tuple[HMRNNOutput, list[Tensor]]:
    """Output and the gradients of ``loss_of`` for every input and parameter."""
    rnn.fused = fused
    leaves = [x, *state.h, *state.c, *state.z, *rnn.parameters()]
    torch.manual_seed(3)  # dropout
    out = rnn(x, state=state, mask=mask, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(loss_of(out), leaves, allow_unused=True)
    return out, [
        torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)
    ]


def assert_paths_agree(rnn: HMRNN, x: Tensor, mask: Tensor | None = None) -> None:
    rnn.double()
    x = x.double().requires_grad_()
    state = random_state(rnn, x.shape[0] if rnn.batch_first else x.shape[1])
    fused, fused_grads = run(rnn, x, state, mask, fused=True)
    step, step_grads = run(rnn, x, state, mask, fused=False)
    torch.testing.assert_close(fused.boundaries > 0.5, step.boundaries > 0.5)
    for a, b in [
        (fused.boundaries, step.boundaries),
        (fused.output, step.output),
        (fused.log_prob, step.log_prob),
        (fused.boundary_logits, step.boundary_logits),
        *zip(fused.state.c, step.state.c, strict=True),
        *zip(fused_grads, step_grads, strict=True),
    ]:
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "pytorch"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_fused_equals_per_step(name: str, use_native: bool) -> None:
    torch.manual_seed(0)
    rnn = HMRNN(3, [5, 4, 6], num_layers=3, boundary=[ESTIMATORS[name]() for _ in range(3)])
    with native_kernels(use_native):
        assert_paths_agree(rnn, torch.randn(4, 7, 3))


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "pytorch"])
def test_fused_equals_per_step_with_mask_dropout_and_time_major(use_native: bool) -> None:
    torch.manual_seed(1)
    rnn = HMRNN(3, [5, 4, 6], num_layers=3, dropout=0.3, batch_first=False)
    mask = torch.ones(7, 4, dtype=torch.bool)
    mask[5:, 1] = False
    mask[2:, 3] = False
    with native_kernels(use_native):
        assert_paths_agree(rnn, torch.randn(7, 4, 3), mask)


@pytest.mark.parametrize("rows", [(4, 7), (8, 30)], ids=["weights-read-as-views", "weights-copied"])
def test_fused_equals_per_step_below_and_above_the_transpose_threshold(
    rows: tuple[int, int],
) -> None:
    """The native forward reads the weights through a transposed view over few rows and
    copies them transposed over many (steps x batch >= 192): both give the per-step
    path's outputs and gradients."""
    torch.manual_seed(2)
    rnn = HMRNN(3, [5, 4, 6], num_layers=3)
    with native_kernels(True):
        assert_paths_agree(rnn, torch.randn(*rows, 3))


def test_fused_equals_per_step_with_one_and_two_layers() -> None:
    for layers in (1, 2):
        torch.manual_seed(layers)
        assert_paths_agree(HMRNN(2, 3, num_layers=layers), torch.randn(3, 6, 2))


def test_native_and_pytorch_fused_steps_agree_in_float32() -> None:
    torch.manual_seed(2)
    rnn = HMRNN(5, 16, num_layers=3, boundary=GumbelSigmoid(0.3))
    x = torch.randn(8, 12, 5)
    results = []
    for use_native in (True, False):
        with native_kernels(use_native):
            out = rnn(x, generator=torch.Generator().manual_seed(0))
            grads = torch.autograd.grad(loss_of(out), list(rnn.parameters()))
        results.append((out, grads))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a.boundaries, b.boundaries, atol=0, rtol=0)
    torch.testing.assert_close(a.output, b.output, atol=1e-5, rtol=1e-5)
    for x_grad, y_grad in zip(ga, gb, strict=True):
        torch.testing.assert_close(x_grad, y_grad, atol=1e-4, rtol=1e-4)


def test_native_kernels_build_here() -> None:
    """CI's machine has a compiler: the fast path must not silently fall back there."""
    assert native.kernels() is not None


def test_native_kernels_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCHRNN_NATIVE", "0")
    assert native.kernels() is None


def test_gradcheck_of_the_fused_sequence_float64() -> None:
    """Relaxed boundaries make every output smooth: gradcheck through the hand-derived backward."""
    torch.manual_seed(4)
    rnn = HMRNN(2, 3, num_layers=2, boundary=GumbelSigmoid(0.9, hard=False)).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)

    def f(inputs: Tensor, *params: Tensor) -> Tensor:
        with torch.nn.utils.stateless._reparametrize_module(
            rnn, dict(zip([n for n, _ in rnn.named_parameters()], params, strict=True))
        ):
            out = rnn(inputs, generator=torch.Generator().manual_seed(0))
        return torch.cat([out.output.flatten(), out.boundaries.flatten(), out.log_prob])

    params = [p.detach().clone().requires_grad_() for p in rnn.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6)


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("use_native", [True, False], ids=["native", "pytorch"])
def test_nan_logits_raise_on_the_fused_paths_as_on_the_per_step_path(
    use_native: bool, grad: bool
) -> None:
    """A NaN input makes NaN boundary logits: every path raises (a boundary compared with
    NaN would read 0), unless the estimators are told not to validate."""
    torch.manual_seed(7)
    x = torch.randn(3, 6, 4)
    x[1, 4, 2] = float("nan")
    for fused in (True, False):
        rnn = HMRNN(4, 5, num_layers=2)
        rnn.fused = fused
        with native_kernels(use_native), torch.set_grad_enabled(grad):
            with pytest.raises(ValueError, match="GumbelSigmoid got NaN logits"):
                rnn(x)
            for est in rnn.boundaries:
                est.validate_args = False
            out = rnn(x)
        assert out.output[1, 4:].isnan().all() and not out.output[:, :4].isnan().any()


def test_nan_only_in_padded_steps_raises_too_and_says_so() -> None:
    """Padding with NaN makes the weight gradients NaN (0 times NaN) on both paths: the
    fused path raises there too, as the per-step path does, and names the cause."""
    x = torch.randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    x[1, 4:] = float("nan")
    for fused in (True, False):
        rnn = HMRNN(4, 5, num_layers=2)
        rnn.fused = fused
        with pytest.raises(ValueError, match="NaN logits"):
            rnn(x, mask=mask)
    with pytest.raises(ValueError, match="padded steps only"):
        HMRNN(4, 5, num_layers=2)(x, mask=mask)
    assert not HMRNN(4, 5, num_layers=2)(x.nan_to_num(), mask=mask).output.isnan().any()


def test_estimators_without_a_closed_form_take_the_per_step_path() -> None:
    """An adaptive temperature reads h, a user's estimator is a module: both run per step."""
    rnn = HMRNN(3, 4, num_layers=2, boundary=GumbelSigmoid(AdaptiveTemperature(4)))
    assert rnn._fused_config("cpu") is None
    assert HMRNN(3, 4, num_layers=2)._fused_config("cpu") is not None
    assert HMRNN(3, 4, num_layers=2, layer_norm=True)._fused_config("cpu") is None


def test_eval_mode_boundaries_are_the_most_likely_ones_in_both_paths() -> None:
    torch.manual_seed(5)
    rnn = HMRNN(3, 4, num_layers=2, boundary=[GumbelSigmoid(eval_mode="mode") for _ in "ab"])
    rnn.eval()
    x = torch.randn(5, 6, 3)
    outs = []
    for fused in (True, False):
        rnn.fused = fused
        outs.append(rnn(x, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(outs[0].boundaries, outs[1].boundaries, atol=0, rtol=0)
    torch.testing.assert_close(outs[0].output, outs[1].output)
    expected = (outs[0].boundary_logits > 0).to(torch.float32)
    torch.testing.assert_close(outs[0].boundaries, expected, atol=0, rtol=0)


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "pytorch"])
def test_inference_skipping_copy_rows_gives_the_same_result(use_native: bool) -> None:
    """Under no_grad with hard boundaries, rows in COPY skip their gate work (same numbers)."""
    torch.manual_seed(6)
    rnn = HMRNN(4, 8, num_layers=3, boundary=StraightThrough())
    x = torch.randn(6, 20, 4)
    with native_kernels(use_native), torch.no_grad():
        skipped = rnn(x)
    with native_kernels(use_native):
        full = rnn(x)  # with autograd: no skipping
    quiet = (skipped.boundaries[..., :2] == 0).float().mean()  # some rows of layers 2, 3 COPY
    assert 0.1 < quiet < 0.9, quiet
    torch.testing.assert_close(skipped.boundaries, full.boundaries, atol=0, rtol=0)
    torch.testing.assert_close(skipped.output, full.output.detach(), atol=1e-6, rtol=1e-5)


def _forced(rnn: HMRNN, logit: float | None) -> HMRNN:
    """Every boundary logit set to ``logit`` whatever the input (None: left learnt)."""
    if logit is not None:
        with torch.no_grad():
            for cell in rnn.layers:
                cell.weight[-1].zero_()
                cell.bias[-1] = logit
    return rnn


INFERENCE_CASES = {
    # hard boundaries, learnt: steps mix UPDATE, COPY and FLUSH rows
    "mixed": (lambda: GumbelSigmoid(0.3), None, True),
    "all-flush": (lambda: GumbelSigmoid(0.3), 30.0, True),
    "all-copy": (lambda: GumbelSigmoid(0.3), -30.0, True),
    "half": (lambda: GumbelSigmoid(0.3), 0.0, True),
    "soft": (lambda: GumbelSigmoid(0.5, hard=False), None, True),
    "not-skipped": (lambda: GumbelSigmoid(0.3), 0.0, False),
}


@pytest.mark.parametrize("steps", [9, 80], ids=["weights-as-they-are", "weights-transposed"])
@pytest.mark.parametrize("case", list(INFERENCE_CASES))
def test_native_inference_equals_the_per_step_path(case: str, steps: int) -> None:
    """The native inference kernel reorders rows by operation and skips unread gate work;
    in float64 it gives the per-step path's output, boundaries, logits and last state, with
    padded steps (a mask) and a random initial state. Over few rows (7 x 9) it reads the
    weights as they are; over many (7 x 80 >= 512) transposed, with the gates reordered."""
    boundary, logit, skip = INFERENCE_CASES[case]
    torch.manual_seed(11)
    rnn = HMRNN(3, 6, num_layers=3, boundary=[boundary() for _ in range(3)]).double()
    _forced(rnn, logit)
    rnn.skip_copy_rows = skip
    x = torch.randn(7, steps, 3, dtype=torch.float64)
    lengths = torch.tensor([1.0, 1.0, 0.9, 0.5, 1.0, 0.3, 0.8]) * steps
    mask = torch.arange(steps)[None, :] < lengths.long()[:, None]
    state = random_state(rnn.double(), 7)
    state = HMRNNState(*(tuple(t.detach().double() for t in group) for group in state))
    outs = []
    with native_kernels(True), torch.no_grad():
        for fused in (True, False):
            rnn.fused = fused
            outs.append(rnn(x, state, mask=mask, generator=torch.Generator().manual_seed(3)))
    native_out, reference = outs
    for name in ("output", "boundaries", "boundary_logits"):
        torch.testing.assert_close(getattr(native_out, name), getattr(reference, name))
    for a, b in zip(native_out.state, reference.state, strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v)
    if logit is None and skip:
        z = reference.boundaries
        assert 0 < float((z == 1).double().mean()) < 1 or case == "soft"


@pytest.mark.parametrize("logit", [None, 30.0], ids=["soft", "all-flush"])
def test_native_inference_in_float32_over_the_transposed_layout(logit: float | None) -> None:
    """The transposed copy of the weights in float32 (the other tests run float64), at odd
    sizes: the inference kernel agrees with the per-step path to float32 rounding."""
    torch.manual_seed(12)
    boundary = GumbelSigmoid(0.7, hard=False) if logit is None else GumbelSigmoid(0.3)
    rnn = _forced(HMRNN(5, [7, 9, 6], num_layers=3, boundary=boundary), logit)
    x = torch.randn(8, 30, 5)  # 240 rows: the transposed layout
    state = random_state(rnn, 8)
    state = HMRNNState(*(tuple(t.detach() for t in group) for group in state))
    outs = []
    with native_kernels(True), torch.no_grad():
        for fused in (True, False):
            rnn.fused = fused
            outs.append(rnn(x, state, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(outs[0].boundaries, outs[1].boundaries, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0].output, outs[1].output, atol=1e-5, rtol=1e-5)


BOUNDARY_MAKERS: list[Callable[[], Any]] = [
    lambda: GumbelSigmoid(0.3),
    lambda: GumbelSigmoid(0.7, hard=False),
    lambda: GumbelSigmoid(0.001, hard=False),  # soft boundaries that saturate to 0 or 1
    lambda: StraightThrough(),
    lambda: StraightThrough(stochastic=True),
    lambda: Reinforce(categorical=False),
    lambda: GumbelSigmoid(0.3, eval_mode="mode"),
]


@pytest.mark.parametrize("case", range(40))
def test_native_inference_on_random_configurations(case: int) -> None:
    """Random layer counts and (unequal) hidden sizes, estimators, layouts, masks, states,
    dropout in training mode, forced or learnt boundaries, both weight layouts, float64:
    the native inference kernel gives the per-step path's output, boundaries, logits,
    log-probabilities and last state."""
    rng = random.Random(case)
    layers = rng.randint(1, 4)
    sizes = [rng.randint(1, 9) for _ in range(layers)]
    inputs, batch = rng.randint(1, 7), rng.randint(1, 10)
    steps = rng.choice([1, 2, 8, 40])  # 40 steps of 5+ rows: the transposed layout
    batch_first = rng.random() < 0.5
    torch.manual_seed(case)
    boundaries = [rng.choice(BOUNDARY_MAKERS)() for _ in range(layers)]
    rnn = HMRNN(inputs, sizes, num_layers=layers, boundary=boundaries, batch_first=batch_first)
    rnn = rnn.double()
    rnn.dropout = rng.choice([0.0, 0.4])
    rnn.train(rng.random() < 0.5)
    rnn.skip_copy_rows = rng.random() < 0.8
    for cell in rnn.layers:
        draw = rng.random()
        if draw < 0.5:
            with torch.no_grad():
                cell.weight[-1].zero_()
                cell.bias[-1] = (40.0, -40.0, 0.0)[int(draw * 6) % 3]
    shape = (batch, steps, inputs) if batch_first else (steps, batch, inputs)
    x = torch.randn(shape, dtype=torch.float64)
    if rng.random() < 0.3:  # not contiguous
        x = torch.randn(shape[::-1], dtype=torch.float64).permute(2, 1, 0)
    mask = torch.rand(shape[:2]) < 0.7 if rng.random() < 0.6 else None
    state = None
    if rng.random() < 0.7:
        state = HMRNNState(
            tuple(torch.randn(batch, h, dtype=torch.float64) for h in sizes),
            tuple(torch.randn(batch, h, dtype=torch.float64) for h in sizes),
            tuple((torch.rand(batch) < 0.5).double() for _ in sizes),
        )
    outs = []
    with native_kernels(True), torch.no_grad():
        for fused in (True, False):
            rnn.fused = fused
            torch.manual_seed(case)  # the dropout masks
            outs.append(rnn(x, state, mask=mask, generator=torch.Generator().manual_seed(case)))
    native_out, reference = outs
    for name in ("output", "boundaries", "boundary_logits", "log_prob"):
        torch.testing.assert_close(getattr(native_out, name), getattr(reference, name))
    for a, b in zip(native_out.state, reference.state, strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v)


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "pytorch"])
def test_an_expanded_output_gradient_is_read_through_its_strides(use_native: bool) -> None:
    """``output.sum()`` hands back an expanded (stride 0) gradient, read without a copy."""
    torch.manual_seed(7)
    rnn = HMRNN(3, 5, num_layers=3, boundary=StraightThrough()).double()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    grads = []
    with native_kernels(use_native):
        for fused in (True, False):
            rnn.fused = fused
            grads.append(torch.autograd.grad(rnn(x).output.sum(), list(rnn.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@contextmanager
def avx512_product(on: bool) -> Iterator[None]:
    """Run the native kernels' float32 products on the AVX-512 tiles (where the CPU has
    them) or on ATen's product."""
    kernels = native.kernels()
    assert kernels is not None
    kernels.use_avx512_product(on)
    try:
        yield
    finally:
        kernels.use_avx512_product(True)


def test_the_avx512_product_runs_where_the_cpu_has_it() -> None:
    """On Linux, on an x86-64 CPU with AVX-512F the float32 products use it (unless
    ATEN_CPU_CAPABILITY names another level); elsewhere ATen's."""
    kernels = native.kernels()
    assert kernels is not None
    used = kernels.use_avx512_product(True)
    if not sys.platform.startswith("linux"):
        assert isinstance(used, bool)
        return
    with open("/proc/cpuinfo") as info:
        flags = info.read().split()
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "")
    expected = platform.machine() == "x86_64" and "avx512f" in flags
    assert used is (expected and capability in ("", "avx512"))


@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13, 64])
@pytest.mark.parametrize("with_base", [False, True], ids=["product", "base-plus-product"])
def test_the_step_product_equals_torch_mm(rows: int, with_base: bool) -> None:
    """Rows in whole tiles and in tails, columns in whole panels and a partial one, a
    weight read through a row stride wider than its columns, a broadcast bias: the
    product agrees with ``torch.mm`` to float32 rounding (and exactly in float64, which
    always takes ATen's product)."""
    kernels = native.kernels()
    assert kernels is not None
    torch.manual_seed(rows)
    for depth, columns in [(1, 1), (3, 17), (70, 64), (129, 150), (300, 1025), (1100, 70)]:
        a = torch.randn(rows, depth)
        b = torch.randn(depth, columns + 9)[:, 3 : 3 + columns]  # row stride columns + 9
        base = torch.randn(columns) if with_base else torch.empty(0)
        expected = a @ b + (base if with_base else 0)
        got = kernels.matrix_product(a, b, base)
        torch.testing.assert_close(got, expected, atol=1e-4 * depth**0.5, rtol=1e-5)
        a64, b64, base64 = a.double(), b.double(), base.double()
        exact = torch.addmm(base64, a64, b64) if with_base else a64 @ b64
        got64 = kernels.matrix_product(a64, b64, base64)
        torch.testing.assert_close(got64, exact, atol=0, rtol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_product_reads_a_transposed_view_and_long_depths(threads: int) -> None:
    """The weight gradients' product ``a^T b``, ``a^T`` a transposed view (copied row-major
    a block at a time), depths over one block (512), rows over one block (192; b then
    copied by panels once for all row blocks), with and without a base added to the
    product (which the blocks then accumulate onto): it agrees with ``torch.mm`` to
    float32 rounding, on one thread and on two."""
    kernels = native.kernels()
    assert kernels is not None
    torch.manual_seed(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sizes = [(1, 1, 1), (7, 300, 65), (70, 1100, 64), (13, 513, 130), (193, 40, 70)]
        sizes.append((400, 600, 130))
        for rows, depth, columns in sizes:
            b = torch.randn(depth, columns)
            base = torch.randn(columns)
            for a in (torch.randn(depth, rows).t(), torch.randn(rows, depth)):
                got = kernels.matrix_product(a, b, torch.empty(0))
                torch.testing.assert_close(got, a @ b, atol=1e-4 * depth**0.5, rtol=1e-5)
                got = kernels.matrix_product(a, b, base)
                expected = torch.addmm(base, a, b)
                torch.testing.assert_close(got, expected, atol=1e-4 * depth**0.5, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_the_product_starts_from_any_base_it_is_given() -> None:
    """``out = base + a b`` for every base ``addmm`` broadcasts: a bias as ``(n,)`` or
    ``(1, n)`` and a full ``(M, n)`` view with a row stride, which the tiles start from;
    and those they cannot read in place, copied into ``out`` first: a ``(M, 1)`` column,
    a transposed view; over several depth blocks and row blocks, and at depth 0
    (``out = base``)."""
    kernels = native.kernels()
    assert kernels is not None
    torch.manual_seed(3)
    for rows, depth, columns in [(7, 20, 70), (200, 600, 130), (9, 0, 70)]:
        a, b = torch.randn(rows, depth), torch.randn(depth, columns)
        wide = torch.randn(rows, columns + 5)
        bases = [
            torch.randn(columns),
            torch.randn(1, columns),
            wide[:, 2 : 2 + columns],  # rows columns + 5 apart
            torch.randn(rows, 1),
            torch.randn(columns, rows).t(),
        ]
        for base in bases:
            got = kernels.matrix_product(a, b, base)
            expected = torch.addmm(base, a, b)
            tolerance = 1e-4 * max(depth, 1) ** 0.5
            torch.testing.assert_close(got, expected, atol=tolerance, rtol=1e-5)


def test_a_product_of_depth_zero_is_zero() -> None:
    """No depth, nothing to sum: zeros (row-major and transposed ``a``), not the
    uninitialised output."""
    kernels = native.kernels()
    assert kernels is not None
    for a in (torch.randn(7, 0), torch.randn(0, 7).t()):
        got = kernels.matrix_product(a, torch.randn(0, 70), torch.empty(0))
        torch.testing.assert_close(got, torch.zeros(7, 70), atol=0, rtol=0)


def test_weight_gradients_over_several_blocks_of_steps_agree_with_atens() -> None:
    """Over more than 512 rows (8 x 80) the backward sums the weight gradients of several
    blocks of steps into one (``out += a^T b``): on the AVX-512 tiles as on ATen's
    product, to float32 rounding."""
    torch.manual_seed(11)
    rnn = HMRNN(5, 24, num_layers=3, boundary=GumbelSigmoid(0.5))
    x = torch.randn(8, 80, 5)
    grads = []
    for on in (True, False):
        with native_kernels(True), avx512_product(on):
            out = rnn(x, generator=torch.Generator().manual_seed(0))
            grads.append(torch.autograd.grad(loss_of(out), list(rnn.parameters())))
    for u, v in zip(*grads, strict=True):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_under_inference_mode_on_two_threads(dtype: torch.dtype) -> None:
    """The rest of a layer-step runs on torch's threads in one region, ATen's operations
    included (ATen's nonlinearities in float64): under ``torch.inference_mode`` too, with
    the numbers of ``torch.no_grad``."""
    torch.manual_seed(12)
    rnn = HMRNN(6, 300, num_layers=2, boundary=GumbelSigmoid(0.5)).to(dtype)
    x = torch.randn(64, 4, 6, dtype=dtype)  # 64 rows a step: shares of a few rows each
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with native_kernels(True):
            with torch.no_grad():
                expected = rnn(x, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                got = rnn(x, generator=torch.Generator().manual_seed(1))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got.boundaries, expected.boundaries, atol=0, rtol=0)
    torch.testing.assert_close(got.output, expected.output, atol=0, rtol=0)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_the_input_product_equals_f_linear_to_every_order(bias: bool) -> None:
    """Layer 1's input product (``InputProduct``: the native kernels' product where it
    runs) against ``F.linear`` in float32, over more rows than a depth block of the
    weight gradient: the value, the gradients of the input, weight and bias, a double
    backward, and ``torch.func.grad`` and ``vmap`` over it."""
    torch.manual_seed(3)
    x = torch.randn(40, 16, 24, requires_grad=True)  # 640 rows
    weight = torch.randn(33, 24, requires_grad=True)
    b = torch.randn(33, requires_grad=True) if bias else None
    leaves = [x, weight] + ([b] if b is not None else [])
    cotangent = torch.randn(40, 16, 33)

    def first_and_second(product: Callable[..., Tensor]) -> list[Tensor]:
        out = product(x, weight, b)
        first = torch.autograd.grad(out, leaves, cotangent, create_graph=True)
        second = torch.autograd.grad(
            sum((g**2).sum() for g in first), leaves, allow_unused=True, materialize_grads=True
        )
        return [out, *first, *second]

    got = first_and_second(InputProduct.apply)
    expected = first_and_second(torch.nn.functional.linear)
    for u, v in zip(got, expected, strict=True):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
    once = torch.autograd.grad(InputProduct.apply(x, weight, b), leaves, cotangent)
    for u, v in zip(once, expected[1 : 1 + len(leaves)], strict=True):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)

    def loss(w: Tensor, product: Callable[..., Tensor]) -> Tensor:
        return (product(x.detach(), w, None) * cotangent).sum()

    torch.testing.assert_close(
        torch.func.grad(loss)(weight.detach(), InputProduct.apply),
        torch.func.grad(loss)(weight.detach(), torch.nn.functional.linear),
        atol=1e-4,
        rtol=1e-4,
    )
    batched = torch.func.vmap(lambda w: InputProduct.apply(x.detach(), w, None))
    torch.testing.assert_close(
        batched(torch.stack([weight.detach(), 2 * weight.detach()])),
        torch.stack([x.detach() @ weight.detach().t() * k for k in (1, 2)]),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize("sizes", [[7, 70, 9], [33, 16, 65], [21, 64, 5]])
def test_the_packed_products_agree_with_atens_in_float32(sizes: list[int]) -> None:
    """Training (forward and backward over 240 rows: the weights packed by panels) and
    inference (mixed UPDATE, COPY and FLUSH rows; the forget gate's columns from panels of
    their own) give the same boundaries, and outputs and gradients to float32 rounding,
    on the AVX-512 product (where the CPU has it) and on ATen's. Hidden sizes whose
    [i, o, g, logit] columns end inside a panel, and exactly at one (21: 64 columns)."""
    torch.manual_seed(sum(sizes))
    rnn = HMRNN(11, sizes, num_layers=3, boundary=GumbelSigmoid(0.5))
    x = torch.randn(8, 30, 11)
    results = []
    for on in (True, False):
        with native_kernels(True), avx512_product(on):
            out = rnn(x, generator=torch.Generator().manual_seed(0))
            grads = torch.autograd.grad(loss_of(out), list(rnn.parameters()))
            with torch.no_grad():
                inferred = rnn(x, generator=torch.Generator().manual_seed(1))
        results.append((out, grads, inferred))
    (a, ga, ia), (b, gb, ib) = results
    assert 0.05 < float(ia.boundaries.mean()) < 0.95  # the operations mixed
    for u, v in [(a.boundaries, b.boundaries), (ia.boundaries, ib.boundaries)]:
        torch.testing.assert_close(u, v, atol=0, rtol=0)
    torch.testing.assert_close(a.output, b.output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ia.output, ib.output, atol=1e-5, rtol=1e-5)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


def test_the_native_kernels_give_the_same_numbers_on_one_and_on_two_threads() -> None:
    """The kernels split a step's rows and the products' column panels among torch's
    threads (rows of 300 hidden units: several shares of 16 rows): the forward, backward
    and inference give one thread's boundaries, and its numbers to float32 rounding (the
    kernels' own parts are exactly equal; ATen's products need not be); a race would
    give garbage."""
    torch.manual_seed(5)
    rnn = HMRNN(20, 300, num_layers=3, boundary=GumbelSigmoid(0.5))
    x = torch.randn(16, 12, 20)  # 192 rows: the weights packed where AVX-512 runs
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with native_kernels(True):
                out = rnn(x, generator=torch.Generator().manual_seed(0))
                grads = torch.autograd.grad(loss_of(out), list(rnn.parameters()))
                with torch.no_grad():
                    inferred = rnn(x, generator=torch.Generator().manual_seed(1))
            results.append([out.output.detach(), out.boundaries.detach(), *grads, inferred.output])
    finally:
        torch.set_num_threads(threads)
    assert 0.05 < float(results[0][1].mean()) < 0.95  # the operations mixed
    torch.testing.assert_close(results[0][1], results[1][1], atol=0, rtol=0)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_gate_nonlinearities_are_within_3_ulp_of_exact() -> None:
    """The kernels' own sigmoid and tanh (AVX-512 CPUs, float32) against float64 over
    [-110, 110] and special values: within 3 units in the last place of the exact value
    where it is a normal float32 (ATen's sigmoid is within 27 there), within 2e-45
    below, NaN for NaN, the limits at the infinities, tanh's sign at -0. Elsewhere the
    kernels use ATen's, exactly."""
    kernels = native.kernels()
    assert kernels is not None
    x = torch.cat([torch.linspace(-110, 110, 400_009), torch.linspace(-1e-3, 1e-3, 20_001)])
    specials = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e30, -1e30, math.inf, -math.inf])
    x = torch.cat([x, specials, torch.tensor([math.nan] * 3)]).view(-1, 21)  # 16 + 5 lanes
    sigmoid, tanh = kernels.activations(x)
    if not kernels.use_avx512_product(True):
        torch.testing.assert_close(sigmoid, torch.sigmoid(x), atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(tanh, torch.tanh(x), atol=0, rtol=0, equal_nan=True)
        return
    assert math.copysign(1.0, float(tanh[x == 0][1])) == -1.0  # tanh(-0) = -0
    for got, exact in ((sigmoid, torch.sigmoid(x.double())), (tanh, torch.tanh(x.double()))):
        finite = x.isfinite()
        normal = finite & (exact.abs() >= torch.finfo(torch.float32).tiny)
        rounded = exact.float().abs()
        ulp = (torch.nextafter(rounded, torch.tensor(math.inf)) - rounded).double()
        error = (got.double() - exact).abs()
        assert float((error / ulp)[normal].max()) <= 3.0
        assert float(error[finite & ~normal].max()) <= 2e-45
        assert bool(got[x.isnan()].isnan().all())
    assert sigmoid[x == math.inf].tolist() == [1.0] and tanh[x == math.inf].tolist() == [1.0]
    assert tanh[x == -math.inf].tolist() == [-1.0] and sigmoid[x == -math.inf].tolist() == [0.0]
