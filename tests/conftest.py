"""Shared test configuration: hypothesis profiles.

``ci`` is derandomized (a green run stays green); ``dev`` explores. Pick one
with ``--hypothesis-profile`` (the Makefile's ``test`` target uses ``ci``).
"""

from hypothesis import HealthCheck, settings

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
