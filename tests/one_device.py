"""A check that a computation touches no tensor off one device (no host tensor in a GPU step).

On a GPU, an operation handed a tensor that lives on the host copies it to the device
(``torch.tensor(0.5, device=...)``, ``x.to(device)`` of a CPU tensor) or reads a 0-dim
one as a number when the step is recorded: a CUDA graph cannot capture the first, and
replays the second with the value it had at capture. Neither reads a value back, so the
``meta`` device alone does not catch them; :class:`OneDevice` does, for every operator
that reaches PyTorch's dispatcher (backward included). Factory calls that build a tensor
on the device directly from Python numbers (``torch.as_tensor(1.5, device=d)``) do not
pass a host tensor through the dispatcher and are not seen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class OneDevice(TorchDispatchMode):
    """Raise ``AssertionError`` when an operator receives a tensor off ``device``."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device = torch.device(device)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        elsewhere = [
            f"{tuple(t.shape)} on {t.device}"
            for t in flat
            if isinstance(t, torch.Tensor) and t.device != self.device
        ]
        if elsewhere:
            raise AssertionError(f"{func} was handed tensors off {self.device}: {elsewhere}")
        return func(*args, **kwargs)
