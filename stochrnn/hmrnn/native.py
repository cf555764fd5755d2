"""The fused step's native CPU kernels (``fused_cpu.cpp``), built at first use.

At small sizes the cost of the HM-LSTM in eager PyTorch is the per-operation
overhead of tens of small operations per layer and step, not arithmetic. The
kernels run each layer-step's elementwise work (gates, blend, boundary; and
their backward) as one loop over the rows, leaving the matrix products to ATen.

They are compiled by :func:`torch.utils.cpp_extension.load` the first time a
fused HM-RNN runs on the CPU (about a minute, once per torch version and source;
the result is cached under ``$STOCHRNN_CACHE`` or ``~/.cache/stochrnn``). On a
machine without a C++ compiler the build fails once with a warning and the
pure-PyTorch step (:mod:`stochrnn.hmrnn.fused`) runs instead: the same
numbers, slower at small sizes. ``STOCHRNN_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["enabled", "kernels"]

_SOURCE = Path(__file__).with_name("fused_cpu.cpp")
_state: dict[str, ModuleType | None] = {}


def enabled() -> bool:
    """Whether the native kernels may be used (``STOCHRNN_NATIVE`` is not ``0``)."""
    return os.environ.get("STOCHRNN_NATIVE", "1") != "0"


def _build_directory() -> Path:
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("STOCHRNN_CACHE", Path.home() / ".cache" / "stochrnn"))
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return root / f"hmrnn-{tag}-{digest}".replace("+", "_")


def kernels() -> ModuleType | None:
    """The compiled kernels, building them on first use; ``None`` when they cannot be had."""
    if not enabled():
        return None
    if "module" in _state:
        return _state["module"]
    module: ModuleType | None = None
    try:
        from torch.utils import cpp_extension

        directory = _build_directory()
        directory.mkdir(parents=True, exist_ok=True)
        if not any(directory.glob("*.so")) and not any(directory.glob("*.pyd")):
            print(
                "stochrnn: compiling the native CPU kernels of the fused HM-RNN step "
                f"into {directory} (once; about a minute)",
                file=sys.stderr,
            )
        module = cpp_extension.load(
            name="stochrnn_hmrnn_fused",
            sources=[str(_SOURCE)],
            build_directory=str(directory),
            extra_cflags=["-O3"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: fall back
        reason = (str(error).strip().splitlines() or [""])[-1]
        warnings.warn(
            "stochrnn: the native CPU kernels of the fused HM-RNN step could not be built "
            f"({type(error).__name__}: {reason}); "
            "the pure-PyTorch step runs instead (the same results, slower at small sizes). "
            "Set STOCHRNN_NATIVE=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
    _state["module"] = module
    return module
