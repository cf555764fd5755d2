r"""Is the hierarchy alive? Boundary diagnostics and a boundary-rate prior for HM-RNNs.

An HM-RNN layer only sees the input through the layer below: its bottom-up term
is gated by :math:`z^{l-1}_t`. A layer whose boundary never fires therefore cuts
every layer above it off from the input, and nothing in the task loss says so.
This module measures the hierarchy of an :class:`~stochrnn.hmrnn.HMRNNOutput`
(:func:`hierarchy_stats`, :class:`HierarchyMeter`) and offers a prior that keeps
each layer's boundary rate near a target (:class:`BoundaryRatePrior`).

Definitions, per layer :math:`l = 1..L` over the *real* steps (``mask`` true),
with the boundaries read as hard values :math:`z^l_t = \mathbb{1}[z > 0.5]` and
:math:`z^0_t = 1`:

- **firing rate**: the mean of :math:`z^l_t`.
- **operation** of layer :math:`l` at step :math:`t`, decided by its own
  boundary at the previous real step and the boundary of the layer below now:
  FLUSH if :math:`z^l_{t-1} = 1`; else UPDATE if :math:`z^{l-1}_t = 1`; else
  COPY. At a sequence's first step :math:`z^l_{t-1}` is the ``z`` of the state
  the forward pass started from: 0 for the default initial state (so the first
  step is never a FLUSH), ``state.z`` when a state was given. Padded steps
  change no state, so the previous boundary of a real step is the one of the
  last real step before it.
- **input share**: the share of steps with :math:`z^{l-1}_t = 1`, on which the
  layer receives its input from below (1 for layer 1). It equals the UPDATE
  share plus the FLUSH steps that coincide with a boundary below.
- **segments**: the boundaries cut each sequence's real steps into runs; a
  segment ends at a step with :math:`z^l_t = 1` (that step included) or at the
  sequence's last real step. Its length is its number of real steps. A layer
  that never fires has one segment per sequence, as long as the sequence.
- **cut off**: the layer receives input on fewer than ``cut_off_below`` (1%) of
  real steps, or a layer below it is cut off (then what it receives from below
  no longer carries the input).

Examples
--------
>>> import torch
>>> from stochrnn import HMRNN, BoundaryRatePrior, hierarchy_stats
>>> rnn = HMRNN(4, 8, num_layers=3)
>>> out = rnn(torch.randn(2, 30, 4))
>>> stats = hierarchy_stats(out)
>>> [layer.layer for layer in stats.layers]
[1, 2, 3]
>>> prior = BoundaryRatePrior([0.3, 0.1, 0.1], weight=1.0)
>>> loss = prior(out, rnn.boundaries)
>>> loss.backward()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli

from .hmrnn import HMRNNOutput, HMRNNState

__all__ = [
    "BoundaryRatePrior",
    "HierarchyMeter",
    "HierarchyStats",
    "LayerStats",
    "boundary_probability",
    "hierarchy_stats",
]

CUT_OFF_BELOW = 0.01
"""A layer receiving input from below on fewer than this share of real steps is cut off."""

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
"""The segment-length quantiles reported by default."""


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LayerStats:
    """The hierarchy statistics of one layer (see the module docstring for definitions).

    Attributes
    ----------
    layer:
        The layer's number, 1 for the bottom one.
    steps:
        The number of real steps counted (over all sequences).
    firing_rate:
        Mean of :math:`z^l_t`.
    update_share, copy_share, flush_share:
        Shares of steps in UPDATE, COPY and FLUSH (they sum to 1).
    input_share:
        Share of steps with :math:`z^{l-1}_t = 1` (1.0 for layer 1).
    segments:
        The number of segments.
    segment_mean:
        Mean segment length in steps (``steps / segments``).
    segment_quantiles:
        ``(q, length)`` pairs, e.g. ``((0.1, 1.0), (0.5, 3.0), (0.9, 8.0))``
        (linear interpolation between the sorted lengths).
    cut_off:
        ``input_share < cut_off_below`` or a layer below is cut off.
    """

    layer: int
    steps: int
    firing_rate: float
    update_share: float
    copy_share: float
    flush_share: float
    input_share: float
    segments: int
    segment_mean: float
    segment_quantiles: tuple[tuple[float, float], ...]
    cut_off: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        """Flat ``{name: value}`` (quantiles as ``segment_q50`` etc.), for CSV or TensorBoard.

        Examples
        --------
        >>> import torch
        >>> z = torch.tensor([[[0.0], [1.0], [0.0], [1.0]]])  # (B=1, T=4, L=1)
        >>> hierarchy_stats(z).layers[0].as_dict()["segment_q50"]
        2.0
        """
        flat: dict[str, float | int | bool] = {
            k: v for k, v in asdict(self).items() if k != "segment_quantiles"
        }
        for q, length in self.segment_quantiles:
            flat[f"segment_q{round(100 * q):02d}"] = length
        return flat

    def __str__(self) -> str:
        quantiles = "/".join(f"{length:g}" for _, length in self.segment_quantiles)
        flag = "  CUT OFF" if self.cut_off else ""
        return (
            f"layer {self.layer}: fires {self.firing_rate:.3f}, input {self.input_share:.3f}, "
            f"update/copy/flush {self.update_share:.2f}/{self.copy_share:.2f}/"
            f"{self.flush_share:.2f}, segment mean {self.segment_mean:.1f} "
            f"(q {quantiles}){flag}"
        )


@dataclass(frozen=True)
class HierarchyStats:
    """Per-layer :class:`LayerStats`, bottom first.

    ``str(stats)`` is one line per layer; :meth:`as_dict` is flat, keyed
    ``"layer{l}/{name}"``.
    """

    layers: tuple[LayerStats, ...]

    @property
    def firing_rates(self) -> tuple[float, ...]:
        """Each layer's firing rate, bottom first."""
        return tuple(layer.firing_rate for layer in self.layers)

    @property
    def cut_off(self) -> tuple[int, ...]:
        """The numbers (1-based) of the layers that are cut off; empty when none is."""
        return tuple(layer.layer for layer in self.layers if layer.cut_off)

    def as_dict(self) -> dict[str, float | int | bool]:
        """``{"layer1/firing_rate": ..., "layer2/cut_off": ..., ...}``.

        Examples
        --------
        >>> import torch
        >>> z = torch.zeros(2, 5, 2)
        >>> d = hierarchy_stats(z).as_dict()
        >>> d["layer1/firing_rate"], d["layer2/input_share"], d["layer2/cut_off"]
        (0.0, 0.0, True)
        """
        return {
            f"layer{layer.layer}/{key}": value
            for layer in self.layers
            for key, value in layer.as_dict().items()
        }

    def __str__(self) -> str:
        return "\n".join(str(layer) for layer in self.layers)


def _as_boundaries(out: HMRNNOutput | Tensor) -> Tensor:
    z = out.boundaries if isinstance(out, HMRNNOutput) else out
    if not isinstance(z, Tensor) or z.dim() != 3:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"boundaries must be (B, T, L) (or (T, B, L)), got {shape}")
    return z


def _check_mask(mask: Tensor | None, z: Tensor, what: str) -> Tensor:
    """``mask`` as a bool tensor of ``z.shape[:2]`` (all true when None)."""
    if mask is None:
        return torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    if tuple(mask.shape) != tuple(z.shape[:2]):
        raise ValueError(
            f"mask expected shape {tuple(z.shape[:2])} (the first two dims of {what} "
            f"{tuple(z.shape)}), got {tuple(mask.shape)}"
        )
    return mask.to(z.device) != 0


class _Counts:
    """Sums from which :class:`HierarchyStats` is computed; adding batches adds them."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.steps = 0
        self.fire = [0] * num_layers
        self.update = [0] * num_layers
        self.copy = [0] * num_layers
        self.flush = [0] * num_layers
        self.inputs = [0] * num_layers
        self.lengths: list[list[Tensor]] = [[] for _ in range(num_layers)]

    def add(self, z: Tensor, mask: Tensor, initial: Tensor) -> None:
        """``z`` (B, T, L) hard, ``mask`` (B, T) bool, ``initial`` (B, L) hard."""
        batch, steps, layers = z.shape
        real = mask.unsqueeze(-1)  # (B, T, 1)
        # Previous boundary of each step: the one of the last real step before it.
        time = torch.arange(steps, device=z.device).expand(batch, steps)
        last_real = torch.where(mask, time, -1).cummax(dim=1).values  # (B, T)
        before = torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], dim=1)
        gathered = z.gather(1, before.clamp(min=0).unsqueeze(-1).expand(-1, -1, layers))
        prev = torch.where((before >= 0).unsqueeze(-1), gathered, initial.unsqueeze(1))
        below = torch.cat([torch.ones_like(z[..., :1]), z[..., :-1]], dim=-1)
        flush = prev & real
        update = ~prev & below & real
        copy = ~prev & ~below & real
        self.steps += int(mask.sum())
        sums = [
            (z & real).sum(dim=(0, 1)).tolist(),
            update.sum(dim=(0, 1)).tolist(),
            copy.sum(dim=(0, 1)).tolist(),
            flush.sum(dim=(0, 1)).tolist(),
            (below & real).sum(dim=(0, 1)).tolist(),
        ]
        for total, new in zip(
            (self.fire, self.update, self.copy, self.flush, self.inputs), sums, strict=True
        ):
            for l in range(layers):
                total[l] += int(new[l])
        # Segments: each ends at a boundary or at the last real step of its sequence.
        position = mask.long().cumsum(dim=1)  # real steps so far, the current included
        last = mask & (position == position[:, -1:])
        for l in range(layers):
            ends = (z[..., l] | last) & mask
            rows, cols = ends.nonzero(as_tuple=True)  # row-major: by sequence, then time
            at = position[rows, cols]
            start = torch.cat([at.new_zeros(1), at[:-1]])
            new_row = torch.cat([rows.new_ones(1, dtype=torch.bool), rows[1:] != rows[:-1]])
            self.lengths[l].append((at - torch.where(new_row, 0, start)).cpu())

    def stats(self, quantiles: Sequence[float], cut_off_below: float) -> HierarchyStats:
        layers: list[LayerStats] = []
        below_cut = False
        denominator = max(self.steps, 1)
        for l in range(self.num_layers):
            lengths = torch.cat(self.lengths[l]) if self.lengths[l] else torch.zeros(0)
            if lengths.numel() > 0:
                values = torch.quantile(
                    lengths.double(), torch.tensor(list(quantiles), dtype=torch.double)
                ).tolist()
            else:
                values = [math.nan] * len(quantiles)
            input_share = self.inputs[l] / denominator if self.steps else math.nan
            below_cut = below_cut or (self.steps > 0 and input_share < cut_off_below)
            layers.append(
                LayerStats(
                    layer=l + 1,
                    steps=self.steps,
                    firing_rate=self.fire[l] / denominator if self.steps else math.nan,
                    update_share=self.update[l] / denominator if self.steps else math.nan,
                    copy_share=self.copy[l] / denominator if self.steps else math.nan,
                    flush_share=self.flush[l] / denominator if self.steps else math.nan,
                    input_share=input_share,
                    segments=int(lengths.numel()),
                    segment_mean=self.steps / lengths.numel() if lengths.numel() else math.nan,
                    segment_quantiles=tuple(
                        (float(q), float(v)) for q, v in zip(quantiles, values, strict=True)
                    ),
                    cut_off=below_cut,
                )
            )
        return HierarchyStats(tuple(layers))


def _prepare(
    out: HMRNNOutput | Tensor,
    mask: Tensor | None,
    state: HMRNNState | None,
    batch_first: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    z = _as_boundaries(out)
    real = _check_mask(mask, z, "boundaries")
    if not batch_first:
        z, real = z.transpose(0, 1), real.t()
    hard = z.detach() > 0.5
    batch, _, layers = hard.shape
    if state is None:
        initial = torch.zeros(batch, layers, dtype=torch.bool, device=hard.device)
    else:
        if len(state.z) != layers or any(tuple(t.shape) != (batch,) for t in state.z):
            raise ValueError(
                f"state.z expected {layers} tensors of shape ({batch},), "
                f"got {[tuple(t.shape) for t in state.z]}"
            )
        initial = torch.stack([t.detach() > 0.5 for t in state.z], dim=1).to(hard.device)
    return hard, real, initial


def _check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(q) for q in quantiles)
    if not all(0.0 <= q <= 1.0 for q in values):
        raise ValueError(f"quantiles must lie in [0, 1], got {values}")
    return values


def hierarchy_stats(
    out: HMRNNOutput | Tensor,
    mask: Tensor | None = None,
    *,
    state: HMRNNState | None = None,
    batch_first: bool = True,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    cut_off_below: float = CUT_OFF_BELOW,
) -> HierarchyStats:
    r"""Per-layer firing rate, operation shares, input share, segment lengths, cut-off flag.

    The definitions are in the module docstring (:mod:`stochrnn.hierarchy`).
    Boundaries are read as hard values (:math:`z > 0.5`); no gradient is kept.

    Parameters
    ----------
    out:
        An :class:`~stochrnn.hmrnn.HMRNNOutput`, or its ``boundaries`` tensor
        ``(B, T, L)``.
    mask:
        ``(B, T)``, true at real steps (the ``mask`` given to the forward pass);
        ``None``: every step is real.
    state:
        The state the forward pass *started* from (its ``state=`` argument), whose
        ``z`` is each layer's boundary before the first step; ``None``: the default
        initial state, ``z = 0``.
    batch_first:
        ``False`` when ``out`` and ``mask`` are time-major, ``(T, B, ...)``.
    quantiles:
        The segment-length quantiles to report.
    cut_off_below:
        The input share under which a layer is flagged as cut off.

    Returns
    -------
    HierarchyStats
        One :class:`LayerStats` per layer, bottom first.

    Examples
    --------
    Layer 1 fires every other step, layer 2 never: layer 2 gets input on half
    the steps, and layer 3 on none, so it is cut off.

    >>> import torch
    >>> z = torch.zeros(1, 6, 3)
    >>> z[0, 1::2, 0] = 1.0
    >>> stats = hierarchy_stats(z)
    >>> stats.firing_rates, stats.cut_off
    ((0.5, 0.0, 0.0), (3,))
    >>> print(stats.layers[1])
    layer 2: fires 0.000, input 0.500, update/copy/flush 0.50/0.50/0.00, segment mean 6.0 (q 6/6/6)
    """
    quantiles = _check_quantiles(quantiles)
    hard, real, initial = _prepare(out, mask, state, batch_first)
    counts = _Counts(hard.shape[-1])
    counts.add(hard, real, initial)
    return counts.stats(quantiles, cut_off_below)


class HierarchyMeter:
    """:func:`hierarchy_stats` accumulated over many batches (e.g. a test set).

    Counts and segment lengths are pooled over every batch given to
    :meth:`update`, so the result is that of one call on all the sequences.

    Examples
    --------
    >>> import torch
    >>> from stochrnn import HMRNN
    >>> rnn = HMRNN(3, 8, num_layers=2)
    >>> meter = HierarchyMeter()
    >>> for _ in range(3):
    ...     x = torch.randn(4, 12, 3)
    ...     meter.update(rnn(x))
    >>> meter.compute().layers[0].steps
    144
    """

    def __init__(
        self,
        *,
        batch_first: bool = True,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        cut_off_below: float = CUT_OFF_BELOW,
    ) -> None:
        self.batch_first = batch_first
        self.quantiles = _check_quantiles(quantiles)
        self.cut_off_below = float(cut_off_below)
        self._counts: _Counts | None = None

    def reset(self) -> None:
        """Forget every batch seen."""
        self._counts = None

    def update(
        self,
        out: HMRNNOutput | Tensor,
        mask: Tensor | None = None,
        *,
        state: HMRNNState | None = None,
    ) -> None:
        """Add one batch (arguments as in :func:`hierarchy_stats`)."""
        hard, real, initial = _prepare(out, mask, state, self.batch_first)
        if self._counts is None:
            self._counts = _Counts(hard.shape[-1])
        elif self._counts.num_layers != hard.shape[-1]:
            raise ValueError(
                f"boundaries have {hard.shape[-1]} layers, the meter has seen "
                f"{self._counts.num_layers}"
            )
        self._counts.add(hard, real, initial)

    def compute(self) -> HierarchyStats:
        """The statistics of every batch so far (raises when none was given)."""
        if self._counts is None:
            raise RuntimeError("HierarchyMeter.compute() before any update()")
        return self._counts.stats(self.quantiles, self.cut_off_below)


# --------------------------------------------------------------------------- prior


def boundary_probability(estimator: nn.Module, logits: Tensor) -> Tensor:
    r"""The probability of a 1 that ``estimator`` assigns to ``logits``, differentiably.

    - An estimator with a ``probs(logits)`` method (:class:`~stochrnn.StraightThrough`):
      that, :math:`\operatorname{hardsigm}(\alpha a)`. For the deterministic form
      this is the soft probability whose gradient the straight-through backward
      uses, not the point mass of its hard decision.
    - Otherwise ``estimator.distribution(logits).probs`` when that is a
      :class:`~torch.distributions.Bernoulli` (for :class:`~stochrnn.GumbelSigmoid`
      and binary :class:`~stochrnn.Reinforce` it is :math:`\sigma(a)`: a hard
      Gumbel-sigmoid sample is 1 iff :math:`a + g_1 - g_2 > 0`, which has
      probability :math:`\sigma(a)` at every temperature).
    - Otherwise (an estimator without either) :math:`\sigma(a)`.

    The result is float32 or wider, of the shape of ``logits``.

    Examples
    --------
    >>> import torch
    >>> from stochrnn import GumbelSigmoid, StraightThrough
    >>> a = torch.tensor([-2.0, 0.0, 0.5])
    >>> boundary_probability(GumbelSigmoid(0.3), a)
    tensor([0.1192, 0.5000, 0.6225])
    >>> boundary_probability(StraightThrough(slope=1.0), a)
    tensor([0.0000, 0.5000, 0.7500])
    """
    probs = getattr(estimator, "probs", None)
    if callable(probs):
        p = probs(logits)
        if isinstance(p, Tensor):
            return p
    distribution = getattr(estimator, "distribution", None)
    if callable(distribution):
        dist = distribution(logits)
        if isinstance(dist, Bernoulli) and (dist.probs.requires_grad or not logits.requires_grad):
            return dist.probs
    return torch.sigmoid(logits.float() if logits.dtype in (torch.half, torch.bfloat16) else logits)


def _bernoulli_kl(target: Tensor, p: Tensor) -> Tensor:
    """KL(Bernoulli(target) || Bernoulli(p)), elementwise (0·log 0 = 0)."""
    return (
        torch.xlogy(target, target)
        - torch.xlogy(target, p)
        + torch.xlogy(1 - target, 1 - target)
        - torch.xlogy(1 - target, 1 - p)
    )


class BoundaryRatePrior(nn.Module):
    r"""A KL penalty that keeps each layer's mean boundary probability near a target rate.

    .. math::
        \bar p_l = \frac{1}{N} \sum_{b, t\ \text{real}} p^l_{b,t},\qquad
        \mathcal{L}_{prior} = w \sum_{l=1}^{L}
            \mathrm{KL}\big(\mathrm{Bern}(\pi_l)\,\|\,\mathrm{Bern}(\bar p_l)\big)
        = w \sum_l \Big[\pi_l \log\frac{\pi_l}{\bar p_l}
            + (1-\pi_l)\log\frac{1-\pi_l}{1-\bar p_l}\Big]

    where :math:`p^l_{b,t}` = :func:`boundary_probability` (layer :math:`l`'s
    estimator, :math:`\tilde z^l_{b,t}`) is the probability of a boundary given the
    logit ``out.boundary_logits``, :math:`N` the number of real steps of the batch
    (``mask``), :math:`\pi_l` the target rate of layer :math:`l` and :math:`w`
    the weight. :math:`\bar p_l` is clamped to :math:`[10^{-6}, 1 - 10^{-6}]`.

    It penalises the *batch's average* rate, not each step: a layer may fire
    with probability near 1 at some steps and near 0 at others (segments) as long
    as it fires at about :math:`\pi_l` on average. The loss is 0 exactly when
    every :math:`\bar p_l = \pi_l`, positive otherwise, and its derivative
    :math:`w(\bar p_l - \pi_l)/(\bar p_l(1-\bar p_l))` moves :math:`\bar p_l`
    toward :math:`\pi_l` under gradient descent.

    Pathwise and score-function estimators alike: :math:`p^l_{b,t}` is a
    differentiable function of the logit for every estimator of the library
    (:math:`\sigma(a)` or :math:`\operatorname{hardsigm}(\alpha a)`), so the
    prior's gradient reaches the logits, and the weights that produce them,
    directly; it needs no sample and no surrogate. With a score-function
    estimator (:class:`~stochrnn.Reinforce`), the boundaries drawn at earlier
    steps are held fixed (their effect on later logits is not differentiated);
    with a pathwise estimator that path is also differentiated through the
    relaxed or straight-through boundaries. With a hard sigmoid
    (:class:`~stochrnn.StraightThrough`), a logit in its flat part
    (:math:`|\alpha a| > 1`) gets no gradient from the prior.

    Parameters
    ----------
    target:
        :math:`\pi`: one rate in [0, 1] for every layer, or one per layer.
    weight:
        :math:`w \ge 0`.

    Examples
    --------
    The loss composes with the task loss and the estimators' surrogate loss:

    >>> import torch
    >>> from stochrnn import HMRNN, Reinforce
    >>> rnn = HMRNN(3, 8, num_layers=2, boundary=Reinforce(categorical=False))
    >>> prior = BoundaryRatePrior([0.3, 0.1], weight=0.5)
    >>> x = torch.randn(4, 10, 3)
    >>> out = rnn(x)
    >>> task = out.output.pow(2).mean()
    >>> reward = -out.output.detach().pow(2).mean(dim=(1, 2))
    >>> loss = task + rnn.surrogate_loss(out.log_prob, reward) + prior(out, rnn.boundaries)
    >>> loss.backward()
    >>> [round(r, 2) for r in prior.rates(out, rnn.boundaries).tolist()]  # doctest: +SKIP
    [0.49, 0.51]
    """

    targets: Tensor

    def __init__(self, target: float | Sequence[float], weight: float = 1.0) -> None:
        super().__init__()
        values = [float(target)] if isinstance(target, (int, float)) else list(map(float, target))
        if not values or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(
                f"target must be rates in [0, 1] (one, or one per layer), got {target}"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight}")
        self.per_layer = not isinstance(target, (int, float))
        self.weight = float(weight)
        # configuration, not state: not in state_dict (a model that gains a prior still
        # loads its earlier checkpoints)
        self.register_buffer("targets", torch.tensor(values, dtype=torch.float64), persistent=False)

    def _layer_targets(self, num_layers: int) -> Tensor:
        if not self.per_layer:
            return self.targets.expand(num_layers)
        if self.targets.numel() != num_layers:
            raise ValueError(
                f"BoundaryRatePrior has {self.targets.numel()} targets "
                f"{self.targets.tolist()}, the output has {num_layers} layers"
            )
        return self.targets

    def rates(
        self,
        out: HMRNNOutput,
        boundaries: nn.Module | Sequence[nn.Module],
        mask: Tensor | None = None,
    ) -> Tensor:
        r"""The mean boundary probability :math:`\bar p_l` of each layer, ``(L,)``, with gradient.

        ``boundaries``: each layer's estimator (``rnn.boundaries``), or one for all;
        ``mask``: ``(B, T)`` in the layout of ``out`` (true at real steps).
        """
        logits = out.boundary_logits
        if logits.dim() != 3:
            raise ValueError(f"out.boundary_logits must be (B, T, L), got {tuple(logits.shape)}")
        num_layers = logits.shape[-1]
        estimators = (
            [boundaries] * num_layers if isinstance(boundaries, nn.Module) else list(boundaries)
        )
        if len(estimators) != num_layers:
            raise ValueError(
                f"boundaries needs one estimator per layer ({num_layers}), got {len(estimators)}"
            )
        real = _check_mask(mask, logits, "out.boundary_logits")
        count = real.sum().clamp(min=1)
        rates = []
        for l, est in enumerate(estimators):
            p = boundary_probability(est, logits[..., l])
            rates.append(torch.where(real, p, 0.0).sum() / count)
        return torch.stack(rates)

    def forward(
        self,
        out: HMRNNOutput,
        boundaries: nn.Module | Sequence[nn.Module],
        mask: Tensor | None = None,
    ) -> Tensor:
        """The scalar loss ``weight * sum_l KL(Bern(target_l) || Bern(rate_l))``.

        Parameters
        ----------
        out:
            The output of :class:`~stochrnn.HMRNN` (its ``boundary_logits`` are read).
        boundaries:
            Each layer's boundary estimator, ``rnn.boundaries``, or one estimator
            for every layer.
        mask:
            ``(B, T)`` (the forward pass's mask, same layout), true at real steps;
            ``None``: every step.
        """
        rates = self.rates(out, boundaries, mask)
        eps = 1e-6
        p = rates.clamp(eps, 1 - eps)
        target = self._layer_targets(rates.numel()).to(p.device, p.dtype)
        return self.weight * _bernoulli_kl(target, p).sum()

    def extra_repr(self) -> str:
        target = self.targets.tolist() if self.per_layer else self.targets.item()
        return f"target={target}, weight={self.weight}"
