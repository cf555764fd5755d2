"""Attention learns where the signal is.

Each example has N = 9 regions of D = 8 features. Region 4 alone carries the class (one
of C = 4 prototypes plus noise); the other regions are pure noise, and the query is
noise too, so the scores must learn the location from the task. An attention plus a
linear classifier is trained for a fixed budget with a fixed seed; the attention must
then put most of its weight (more than 0.6, against 1/9 for a uniform one) on region 4
and the classifier must be right on more than 90% of held-out examples (chance: 25%).
The same classifier trained on the uniform average of the regions reaches about 74%, so
a scoring or a pooling that does not learn fails both checks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from stochrnn import GumbelSoftmaxAttention, ReinforceAttention, SoftAttention

NUM_REGIONS, FEATURES, CLASSES, QUERY, SIGNAL_REGION = 9, 8, 4, 6, 4
STEPS, BATCH, LEARNING_RATE = 200, 64, 0.05


def make_examples(
    n: int, prototypes: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Features ``(n, 9, 8)`` with the class in region 4 only, a noise query, the labels."""
    labels = torch.randint(CLASSES, (n,), generator=generator)
    features = torch.randn(n, NUM_REGIONS, FEATURES, generator=generator)
    signal = prototypes[labels] + 0.5 * torch.randn(n, FEATURES, generator=generator)
    features[:, SIGNAL_REGION] = signal
    query = torch.randn(n, QUERY, generator=generator)
    return features, query, labels


ATTENTIONS: dict[str, Callable[[str], nn.Module]] = {
    "soft": lambda scoring: SoftAttention(
        QUERY, NUM_REGIONS, scoring=scoring, feature_size=FEATURES
    ),
    "gumbel-hard": lambda scoring: GumbelSoftmaxAttention(
        QUERY, NUM_REGIONS, temperature=0.3, scoring=scoring, feature_size=FEATURES
    ),
    "reinforce-hard": lambda scoring: ReinforceAttention(
        QUERY, NUM_REGIONS, scoring=scoring, feature_size=FEATURES
    ),
}


@pytest.mark.parametrize("scoring", ["location", "additive"])
@pytest.mark.parametrize("kind", sorted(ATTENTIONS))
def test_attention_learns_the_region_that_carries_the_class(kind: str, scoring: str) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    prototypes = 2.0 * torch.randn(CLASSES, FEATURES, generator=generator)
    attention = ATTENTIONS[kind](scoring)
    classifier = nn.Linear(FEATURES, CLASSES)
    optimizer = torch.optim.Adam(
        [*attention.parameters(), *classifier.parameters()], lr=LEARNING_RATE
    )
    for _ in range(STEPS):
        features, query, labels = make_examples(BATCH, prototypes, generator)
        out = attention(features, query, generator=generator)
        log_likelihood = classifier(out.context).log_softmax(-1).gather(-1, labels[:, None])
        log_likelihood = log_likelihood.squeeze(-1)
        # The REINFORCE reward is log p(y | l, a) (HM-AN Eq. 19); 0 for the others.
        surrogate = attention.surrogate_loss(out.log_prob, log_likelihood.detach())
        loss = -log_likelihood.mean() + surrogate
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        features, query, labels = make_examples(2000, prototypes, generator)
        out = attention(features, query, generator=generator)
        accuracy = float((classifier(out.context).argmax(-1) == labels).float().mean())
        weight_on_signal = float(out.weights[:, SIGNAL_REGION].mean())
    assert weight_on_signal > 0.6, weight_on_signal
    assert accuracy > 0.9, accuracy
