"""The fused step's native CPU kernels (``fused_cpu.cpp``), built at first use.

At small sizes the cost of the HM-LSTM in eager PyTorch is the per-operation
overhead of tens of small operations per layer and step, not arithmetic. The
kernels run each layer-step's elementwise work (gates, blend, boundary; and
their backward) as one loop over the rows, split among torch's threads. The
matrix products and the gates' sigmoid and tanh are ATen's, but in float32 on
a CPU with AVX-512, where the kernels multiply by their own tiles (over many
rows from weights packed by panels of 64 columns) and compute the
nonlinearities themselves (within 3 ulp): with a step's few rows MKL's product
can run close to one matrix-vector product per row, and its tanh is slow
(``fused_cpu.cpp`` gives the figures). ``ATEN_CPU_CAPABILITY`` set to anything
but ``avx512`` leaves them to ATen too.

They are compiled by :func:`torch.utils.cpp_extension.load` the first time a
fused HM-RNN runs on the CPU (about a minute, once per torch version and source;
the library is cached under ``$STOCHRNN_CACHE`` or ``~/.cache/stochrnn``). The
build needs what PyTorch's C++ extensions need: a C++ compiler and the Python
headers (and ``ninja``, a dependency of this package). Where it fails, each
process warns once and runs the pure-PyTorch step (:mod:`stochrnn.hmrnn.fused`)
instead: the same algorithm, agreeing to float rounding, slower at small sizes.
``STOCHRNN_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
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


_NAME = "stochrnn_hmrnn_fused"


def _cache_root() -> Path:
    return Path(os.environ.get("STOCHRNN_CACHE", Path.home() / ".cache" / "stochrnn"))


def _flag_sets() -> list[list[str]]:
    """The compiler flags to try in turn: on Linux with OpenMP first, so that the
    kernels' ``at::parallel_for`` runs on torch's threads, then without (where the
    compiler has no OpenMP, they run on one thread)."""
    serial = ["-O3"]
    return [[*serial, "-fopenmp"], serial] if sys.platform.startswith("linux") else [serial]


def _library() -> Path:
    """Where the built kernels live: one file per torch version, Python, source and flags."""
    flags = " ".join(_flag_sets()[0]).encode()
    digest = hashlib.sha256(_SOURCE.read_bytes() + flags).hexdigest()[:12]
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    name = f"{_NAME}-{tag}-{digest}".replace("+", "_").replace(".", "_")
    return _cache_root() / f"{name}.so"


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(target: Path) -> ModuleType:
    """Compile into a private directory, then move the library into place atomically.

    No lock is shared between processes: two that build at once each build
    their own and the last rename wins (both are the same), and a build that
    is killed leaves nothing behind that blocks the next one.
    """
    print(
        "stochrnn: compiling the native CPU kernels of the fused HM-RNN step "
        f"into {target.parent} (once; about a minute)",
        file=sys.stderr,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    *preferred, last = _flag_sets()
    for flags in preferred:
        try:
            return _compile(target, flags)
        except Exception:
            continue  # no OpenMP here, say: the next flags
    return _compile(target, last)


def _compile(target: Path, flags: list[str]) -> ModuleType:
    from torch.utils import cpp_extension

    with tempfile.TemporaryDirectory(dir=target.parent, prefix="build-") as directory:
        module: ModuleType = cpp_extension.load(
            name=_NAME,
            sources=[str(_SOURCE)],
            build_directory=directory,
            extra_cflags=flags,
            extra_ldflags=[f for f in flags if f == "-fopenmp"],
            verbose=False,
        )
        built = Path(directory) / f"{_NAME}.so"
        staged = Path(directory) / target.name
        shutil.copyfile(built, staged)
        os.replace(staged, target)
    return module  # loaded; the next process imports the library in place


def kernels() -> ModuleType | None:
    """The compiled kernels, building them on first use; ``None`` when they cannot be had."""
    if not enabled():
        return None
    if "module" in _state:
        return _state["module"]
    module: ModuleType | None = None
    target = _library()
    try:
        module = _import(target) if target.exists() else _build(target)
    except Exception as error:  # no compiler, no ninja, a failed build: fall back
        reason = (str(error).strip().splitlines() or [""])[-1]
        warnings.warn(
            "stochrnn: the native CPU kernels of the fused HM-RNN step could not be built "
            f"({type(error).__name__}: {reason}); "
            "the pure-PyTorch step runs instead (the same algorithm, slower at small sizes). "
            "Set STOCHRNN_NATIVE=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
    _state["module"] = module
    return module
