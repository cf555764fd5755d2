"""Copies and serialization of HMRNN, with and without ``compile_step``.

A copy (``copy.deepcopy``: EMA weights, best-model snapshots, replicas) must run
its own parameters, layer norm and estimators, and a pickled model must load and
give the same outputs.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from stochrnn import HMRNN, StraightThrough

COMPILE = pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "compiled"])


def model(compile_step: bool) -> HMRNN:
    torch.manual_seed(0)
    # deterministic boundaries, so outputs are comparable across calls
    return HMRNN(3, 4, 2, boundary=StraightThrough(), layer_norm=True, compile_step=compile_step)


@COMPILE
def test_a_copy_runs_its_own_parameters(compile_step: bool) -> None:
    rnn = model(compile_step)
    x = torch.randn(2, 5, 3)
    before = rnn(x).output.detach()  # compiles the step, if asked, before copying
    twin = copy.deepcopy(rnn)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
        twin.cells[0].norm.weight.fill_(0.5)
    reference = model(compile_step=False)
    reference.load_state_dict(twin.state_dict())
    torch.testing.assert_close(twin(x).output, reference(x).output)
    torch.testing.assert_close(rnn(x).output, before)  # the original is untouched
    assert not torch.allclose(twin(x).output, before)


@COMPILE
def test_a_copy_trains_without_touching_the_original(compile_step: bool) -> None:
    rnn = model(compile_step)
    x = torch.randn(2, 5, 3)
    rnn(x)
    twin = copy.deepcopy(rnn)
    twin(x).output.sum().backward()
    assert all(p.grad is None for p in rnn.parameters())
    assert all(p.grad is not None for p in twin.parameters())


@COMPILE
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_saved_model_loads_and_gives_the_same_outputs(compile_step: bool, how: str) -> None:
    rnn = model(compile_step)
    x = torch.randn(2, 5, 3)
    expected = rnn(x).output.detach()
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(rnn))
    else:
        buffer = io.BytesIO()
        torch.save(rnn, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    assert loaded.compile_step == compile_step
    torch.testing.assert_close(loaded(x).output, expected)
