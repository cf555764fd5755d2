"""Property testing for estimators: hypothesis strategies and a conformance suite.

:func:`check_estimator` runs the properties every estimator of discrete neurons
must have — ours or a user's — and raises :class:`EstimatorCheckError` naming
the first property that broke:

``shapes``
    value has the logits' shape and dtype; log_prob has the batch shape and
    the logits' dtype (float32 and float64 logits are tried).
``values``
    hard values are exactly 0/1 (binary) or one-hot rows summing to exactly 1
    (categorical); relaxed values lie in [0, 1] (and rows sum to 1).
``frequencies``
    hard-sample frequencies match ``est.distribution(logits)``: a binomial test
    per element (binary) or a chi-square test per row (categorical), at the
    false-alarm rate ``alpha`` for the whole check (Bonferroni).
``log_prob``
    ``log_prob`` equals the distribution's log-probability of the hard value.
``gradient``
    a gradient estimate of ``E[f(z)]`` reaches the logits and is finite.
``unbiased``
    for score-function estimators (``pathwise = False``): the mean gradient
    estimate agrees with exact enumeration within a z-test at ``alpha``.

Randomness is seeded (``seed``) and isolated from the caller's global state, so
a result is reproducible; the statistical properties fail a correct estimator
with probability at most ``alpha`` each.

The hypothesis strategies (:func:`logits`, :func:`temperatures`, :func:`shapes`,
:func:`float_dtypes`) need ``hypothesis`` installed (``pip install stochrnn[dev]``).

Examples
--------
>>> from stochrnn import GumbelSigmoid
>>> from stochrnn.testing import check_estimator
>>> passed = check_estimator(GumbelSigmoid(0.5), num_samples=4000)
>>> passed
['shapes', 'values', 'frequencies', 'log_prob', 'gradient']
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from .diagnostics import gradient_bias_variance
from .estimators import Estimator

__all__ = [
    "EstimatorCheckError",
    "check_estimator",
    "chi2_critical",
    "float_dtypes",
    "logits",
    "normal_critical",
    "shapes",
    "temperatures",
]


class EstimatorCheckError(AssertionError):
    """Raised by :func:`check_estimator`; ``prop`` names the property that broke."""

    def __init__(self, prop: str, message: str) -> None:
        super().__init__(f"estimator check '{prop}' failed: {message}")
        self.prop = prop


def normal_critical(alpha: float) -> float:
    """Two-sided critical value of the standard normal at false-alarm rate ``alpha``.

    Examples
    --------
    >>> round(normal_critical(0.05), 3)
    1.96
    """
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def chi2_critical(dof: int, alpha: float) -> float:
    """Upper ``alpha`` critical value of chi-square with ``dof`` degrees of freedom.

    Wilson–Hilferty approximation (within 2% for ``dof >= 3`` and
    ``alpha >= 1e-4``, erring high in the far tail, i.e. on the side of fewer
    false alarms); exact for ``dof`` 1 and 2.

    Examples
    --------
    >>> round(chi2_critical(2, 0.05), 3), round(chi2_critical(10, 0.01), 1)
    (5.991, 23.2)
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if dof == 1:
        return normal_critical(alpha) ** 2
    if dof == 2:
        return -2.0 * math.log(alpha)
    z = NormalDist().inv_cdf(1.0 - alpha)
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + z * math.sqrt(h)) ** 3


def _family(est: Estimator) -> str:
    family = getattr(est, "event_family", getattr(est, "family", None))
    if family not in ("binary", "categorical"):
        raise EstimatorCheckError(
            "family", f"family must be 'binary' or 'categorical', got {family!r}"
        )
    return str(family)


def _problem(family: str) -> Tensor:
    if family == "binary":
        return torch.tensor([-3.0, -1.0, -0.25, 0.0, 0.5, 2.0])
    return torch.tensor([[1.0, 0.0, -1.0, 0.5, -2.0], [-0.5, 2.0, 0.0, 0.0, -1.0]])


def _rows(context: Tensor | None, n: int) -> Tensor | None:
    return None if context is None else context.expand(n, *context.shape)


def _check_shapes(est: Estimator, family: str, context: Tensor | None) -> None:
    shape = (3, 4, 5)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(shape, dtype=dtype)
        s = est(x, _rows(context, shape[0]))
        if tuple(s.value.shape) != shape:
            raise EstimatorCheckError(
                "shapes", f"value has shape {tuple(s.value.shape)}, expected {shape}"
            )
        if s.value.dtype != dtype:
            raise EstimatorCheckError(
                "shapes", f"value has dtype {s.value.dtype}, expected {dtype}"
            )
        expected = shape if family == "binary" else shape[:-1]
        if tuple(s.log_prob.shape) != expected:
            raise EstimatorCheckError(
                "shapes", f"log_prob has shape {tuple(s.log_prob.shape)}, expected {expected}"
            )
        if s.log_prob.dtype != dtype:
            raise EstimatorCheckError(
                "shapes", f"log_prob has dtype {s.log_prob.dtype}, expected {dtype} (the logits')"
            )


def _check_values(est: Estimator, family: str, value: Tensor) -> None:
    hard = bool(getattr(est, "hard", True))
    if hard and not bool(((value == 0) | (value == 1)).all()):
        raise EstimatorCheckError("values", "hard values are not exactly 0 or 1")
    if not hard and not bool(((value >= 0) & (value <= 1)).all()):
        raise EstimatorCheckError("values", "relaxed values are outside [0, 1]")
    if family == "categorical":
        sums = value.sum(-1)
        ok = (sums == 1).all() if hard else torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
        if not bool(ok):
            raise EstimatorCheckError("values", "categorical rows do not sum to 1")


def _discretise(value: Tensor, family: str) -> Tensor:
    if family == "binary":
        return (value > 0.5).float()
    index = value.argmax(-1, keepdim=True)
    return torch.zeros_like(value).scatter_(-1, index, 1.0)


def _check_frequencies(est: Estimator, family: str, a: Tensor, hard: Tensor, alpha: float) -> None:
    n = hard.shape[0]
    probs = est.distribution(a).probs.double()  # type: ignore[attr-defined]
    freq = hard.double().mean(0)
    if family == "binary":
        crit = normal_critical(alpha / probs.numel())
        for p, q in zip(probs.flatten().tolist(), freq.flatten().tolist(), strict=True):
            se = math.sqrt(max(p * (1 - p), 0.0) / n)
            if abs(q - p) > crit * se + 1e-12:
                raise EstimatorCheckError(
                    "frequencies",
                    f"P(z=1) is {p:.4f} but the frequency over {n} samples is {q:.4f} "
                    f"(more than {crit:.2f} standard errors off; false-alarm rate {alpha})",
                )
        return
    rows = probs.reshape(-1, probs.shape[-1])
    counts = hard.double().sum(0).reshape(-1, probs.shape[-1])
    for p, c in zip(rows, counts, strict=True):
        support = p > 0
        if bool((c[~support] > 0).any()):
            raise EstimatorCheckError("frequencies", "a category of probability 0 was drawn")
        expected = n * p[support]
        stat = float(((c[support] - expected) ** 2 / expected).sum())
        dof = int(support.sum()) - 1
        if dof >= 1:
            crit = chi2_critical(dof, alpha / rows.shape[0])
            if stat > crit:
                raise EstimatorCheckError(
                    "frequencies",
                    f"category frequencies {(c / n).tolist()} do not match the probabilities "
                    f"{p.tolist()} (chi-square {stat:.1f} > {crit:.1f}, {dof} dof; "
                    f"false-alarm rate {alpha})",
                )


def _check_log_prob(est: Estimator, a: Tensor, hard: Tensor, log_prob: Tensor) -> None:
    expected = est.distribution(a).log_prob(hard)
    if not torch.allclose(log_prob.double(), expected.double(), atol=1e-4, rtol=1e-4):
        worst = float((log_prob.double() - expected.double()).abs().max())
        raise EstimatorCheckError(
            "log_prob", f"log_prob differs from the distribution's by up to {worst:.3g}"
        )


def _objective(family: str, shape: torch.Size) -> Any:
    weights = torch.linspace(-1.0, 2.0, shape.numel()).reshape(shape)

    def f(z: Tensor) -> Tensor:
        return (z * weights.to(z.dtype)).reshape(z.shape[0], -1).sum(-1)

    return f


@contextmanager
def _property(prop: str) -> Iterator[None]:
    """Report an exception raised while checking ``prop`` as that property's failure."""
    try:
        yield
    except EstimatorCheckError:
        raise
    except Exception as error:
        raise EstimatorCheckError(prop, f"the estimator raised {error!r}") from error


def check_estimator(
    est: Estimator,
    *,
    num_samples: int = 20000,
    alpha: float = 1e-3,
    seed: int = 0,
    context: Tensor | None = None,
) -> list[str]:
    """Run the conformance suite on ``est``; return the names of the properties passed.

    Parameters
    ----------
    est:
        An estimator (subclass of :class:`~stochrnn.Estimator`) in training mode.
    num_samples:
        Draws for the frequency test and gradient estimates for the bias test.
    alpha:
        False-alarm rate of each statistical property (a correct estimator fails
        it with probability at most ``alpha``).
    seed:
        Seed of the isolated random stream used by the checks.
    context:
        One row of context, ``(context_size,)``, repeated for every sample — for
        estimators that read a state (an adaptive temperature).

    Raises
    ------
    EstimatorCheckError
        Naming the first property that broke.
    """
    family = _family(est)
    passed: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _property("shapes"):
            _check_shapes(est, family, context)
        passed.append("shapes")

        a = _problem(family)
        with _property("values"):
            sample = est(a.expand(num_samples, *a.shape), _rows(context, num_samples))
            _check_values(est, family, sample.value)
        passed.append("values")

        hard = _discretise(sample.value.detach(), family)
        with _property("frequencies"):
            _check_frequencies(est, family, a, hard, alpha)
        passed.append("frequencies")

        with _property("log_prob"):
            _check_log_prob(est, a.expand_as(hard), hard, sample.log_prob.detach())
        passed.append("log_prob")

        with _property("gradient"):
            f = _objective(family, a.shape)
            report = gradient_bias_variance(
                est, a, f, num_samples=min(num_samples, 4000), context=context
            )
            finite = bool(report.mean.isfinite().all()) and bool(report.variance.isfinite().all())
            if not finite:
                raise EstimatorCheckError("gradient", "gradient estimates are not finite")
            if float(report.mean.abs().max()) == 0.0 and float(report.variance.max()) == 0.0:
                raise EstimatorCheckError("gradient", "no gradient reaches the logits")
        passed.append("gradient")

        if not getattr(est, "pathwise", True):
            crit = normal_critical(alpha / report.exact.numel())
            if report.max_abs_z > crit:
                raise EstimatorCheckError(
                    "unbiased",
                    f"mean gradient {report.mean.tolist()} differs from the exact "
                    f"{report.exact.tolist()} by up to {report.max_abs_z:.1f} standard errors "
                    f"(critical {crit:.2f} at false-alarm rate {alpha})",
                )
            passed.append("unbiased")
    return passed


# --------------------------------------------------------------------------- strategies


def _st() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "stochrnn.testing's strategies need hypothesis: pip install hypothesis"
        ) from error
    return strategies


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 5) -> Any:
    """Strategy for tensor shapes: ``min_dims``..``max_dims`` sides in ``[min_side, max_side]``."""
    st = _st()
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(
        tuple
    )


def float_dtypes(low_precision: bool = True) -> Any:
    """Strategy for floating dtypes: float32, float64 and (optionally) float16, bfloat16."""
    choices = [torch.float32, torch.float64]
    if low_precision:
        choices += [torch.float16, torch.bfloat16]
    return _st().sampled_from(choices)


def temperatures(min_value: float = 0.05, max_value: float = 5.0) -> Any:
    """Strategy for valid temperatures in ``[min_value, max_value]``."""
    return _st().floats(min_value, max_value, allow_nan=False, allow_infinity=False)


def logits(
    shape: Any = None,
    dtype: Any = None,
    min_value: float = -50.0,
    max_value: float = 50.0,
) -> Any:
    """Strategy for logits tensors: any batch shape, finite values, a float dtype.

    ``shape`` and ``dtype`` are strategies (defaults: :func:`shapes`, float32).

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(logits())
    ... def test_finite(a):
    ...     assert a.isfinite().all()
    >>> test_finite()
    """
    st = _st()
    shape_st = shapes() if shape is None else shape
    dtype_st = st.just(torch.float32) if dtype is None else dtype

    @st.composite  # type: ignore[untyped-decorator]
    def build(draw: Any) -> Tensor:
        size = draw(shape_st)
        kind = draw(dtype_st)
        values = draw(
            st.lists(
                st.floats(min_value, max_value, allow_nan=False, width=32),
                min_size=math.prod(size),
                max_size=math.prod(size),
            )
        )
        return torch.tensor(values, dtype=torch.float32).reshape(size).to(kind)

    return build()
