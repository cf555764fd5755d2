"""The tiny synthetic dataset that the training, evaluation and demo tests share."""

from __future__ import annotations

from examples.action_recognition.synthetic import SyntheticSpec

#: 4 classes x 4 videos of 6-12 frames, 3x3 regions, 6 features: trains in seconds.
TINY = SyntheticSpec(
    grid=3,
    feature_dim=6,
    num_primitives=3,
    actor_size=1,
    subactions_per_class=3,
    num_classes=4,
    videos_per_class=4,
    min_len=2,
    max_len=4,
    num_distractors=2,
)
