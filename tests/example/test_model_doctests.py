"""The examples in the docstrings of the training side of the example run and hold."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

from examples.action_recognition import config, metrics, model, plots, synthetic, train


@pytest.mark.parametrize(
    "module",
    [config, metrics, model, plots, synthetic, train],
    ids=lambda module: module.__name__.rsplit(".", 1)[-1],
)
def test_docstring_examples(module: ModuleType) -> None:
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)
    assert result.attempted > 0
    assert result.failed == 0
