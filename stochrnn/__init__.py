"""stochrnn: pluggable parts for hierarchical stochastic RNNs in PyTorch.

Gradient estimators for discrete neurons, hierarchical multiscale LSTM cells
(HM-RNN) and attention pooling, built to be swapped into one another.

>>> import torch, stochrnn
>>> est = stochrnn.GumbelSoftmax(temperature=0.3)
>>> est(torch.zeros(2, 5)).value.sum(-1)
tensor([1., 1.])
"""

from .attention import (
    AttentionOutput,
    GumbelSoftmaxAttention,
    HardAttention,
    ReinforceAttention,
    SoftAttention,
    doubly_stochastic_penalty,
)
from .estimators import (
    AdaptiveTemperature,
    AnnealedTemperature,
    Baseline,
    ConstantTemperature,
    Estimator,
    GumbelSigmoid,
    GumbelSoftmax,
    LearnedTemperature,
    MovingAverageBaseline,
    Reinforce,
    Sample,
    StraightThrough,
    Temperature,
)
from .hierarchy import (
    BoundaryRatePrior,
    HierarchyMeter,
    HierarchyStats,
    LayerStats,
    boundary_probability,
    hierarchy_stats,
)
from .hmrnn import HMRNN, HMLSTMCell, HMRNNOutput, HMRNNState

__version__ = "0.1.0"

__all__ = [
    "HMRNN",
    "AdaptiveTemperature",
    "AnnealedTemperature",
    "AttentionOutput",
    "Baseline",
    "BoundaryRatePrior",
    "ConstantTemperature",
    "Estimator",
    "GumbelSigmoid",
    "GumbelSoftmax",
    "GumbelSoftmaxAttention",
    "HMLSTMCell",
    "HMRNNOutput",
    "HMRNNState",
    "HardAttention",
    "HierarchyMeter",
    "HierarchyStats",
    "LayerStats",
    "LearnedTemperature",
    "MovingAverageBaseline",
    "Reinforce",
    "ReinforceAttention",
    "Sample",
    "SoftAttention",
    "StraightThrough",
    "Temperature",
    "__version__",
    "boundary_probability",
    "doubly_stochastic_penalty",
    "hierarchy_stats",
]
