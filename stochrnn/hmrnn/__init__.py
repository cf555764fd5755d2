r"""Hierarchical multiscale LSTM (HM-RNN) with pluggable boundary estimators.

The HM-LSTM of Chung, Ahn and Bengio (arXiv 1609.01704), as used by HM-AN
(Yan et al., arXiv 1708.07590). Layer :math:`l` at step :math:`t` reads its own
state, the state of the layer above from :math:`t-1` and the new state of the
layer below:

.. math::
    s^l_t = U^l_l h^l_{t-1} + z^l_{t-1}\, U^l_{l+1} h^{l+1}_{t-1}
            + z^{l-1}_t\, W^l_{l-1} h^{l-1}_t + b^l

(:math:`h^0_t = x_t`, :math:`z^0_t = 1`; the top layer has no top-down term).
:math:`i, f, o = \sigma(\cdot)` and :math:`g = \tanh(\cdot)` are slices of
:math:`s^l_t` (after an optional layer norm of the whole sum) and the last
column is the boundary logit :math:`\tilde z^l_t`. The boundary of the layer
below (:math:`z^{l-1}_t`) and this layer's own previous boundary
(:math:`z^l_{t-1}`) choose the operation:

=========  ===========================================  =======================================
operation  when                                         cell
=========  ===========================================  =======================================
UPDATE     :math:`z^l_{t-1} = 0,\ z^{l-1}_t = 1`        :math:`c = f \odot c_{t-1} + i \odot g`
COPY       :math:`z^l_{t-1} = 0,\ z^{l-1}_t = 0`        :math:`c = c_{t-1}`, :math:`h = h_{t-1}`
FLUSH      :math:`z^l_{t-1} = 1`                        :math:`c = i \odot g`
=========  ===========================================  =======================================

with :math:`h = o \odot \tanh(c)` outside COPY, and the new boundary
:math:`z^l_t` drawn from :math:`\tilde z^l_t` by the layer's estimator at every
step. The choice is computed as a blend weighted by the boundaries, so that a
boundary also gets gradient from the operation it selects:

.. math::
    c^l_t &= z^l_{t-1}\,(i \odot g) + (1 - z^l_{t-1})(1 - z^{l-1}_t)\, c^l_{t-1}
             + (1 - z^l_{t-1})\, z^{l-1}_t\, (f \odot c^l_{t-1} + i \odot g) \\
    h^l_t &= z^l_{t-1}\, o \odot \tanh(i \odot g) + (1 - z^l_{t-1})(1 - z^{l-1}_t)\, h^l_{t-1}
             + (1 - z^l_{t-1})\, z^{l-1}_t\, o \odot \tanh(f \odot c^l_{t-1} + i \odot g)

With hard boundaries in {0, 1} this is exactly the table above.

Examples
--------
>>> import torch
>>> from stochrnn import HMRNN
>>> rnn = HMRNN(input_size=8, hidden_size=16, num_layers=3)
>>> out = rnn(torch.randn(4, 10, 8))
>>> out.output.shape, out.boundaries.shape, out.log_prob.shape
(torch.Size([4, 10, 48]), torch.Size([4, 10, 3]), torch.Size([4]))
"""

from .cell import HMLSTMCell, HMLSTMCellOutput, HMRNNOutput, HMRNNState
from .stack import HMRNN

__all__ = ["HMRNN", "HMLSTMCell", "HMLSTMCellOutput", "HMRNNOutput", "HMRNNState"]
