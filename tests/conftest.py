"""Shared test configuration: hypothesis profiles and one intra-op thread.

``ci`` is derandomized (a green run stays green); ``dev`` explores. Pick one
with ``--hypothesis-profile`` (the Makefile's ``test`` target uses ``ci``).
"""

import torch
from hypothesis import HealthCheck, settings

# The tests use small tensors, for which OpenMP's threads cost more than they
# give (3-6x slower on a loaded 2-core machine); one thread also makes float
# reductions run in one order.
torch.set_num_threads(1)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("dev")
