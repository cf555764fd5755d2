"""The five HM-AN variants build, run forward and backward, and their loss has the right parts."""

from __future__ import annotations

import pytest
import torch

from examples.action_recognition.config import VARIANTS, example_config, parse_config
from examples.action_recognition.model import (
    HMAN,
    SoftAttentionLSTM,
    build_model,
    loss_terms,
)

REGIONS, FEATURES, CLASSES, BATCH, STEPS = 9, 4, 5, 3, 6


def _model(variant: str, **model: object):
    document = example_config(variant)  # type: ignore[arg-type]
    document["model"].update(model)
    return build_model(parse_config(document), CLASSES, (REGIONS, FEATURES))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(BATCH, STEPS, REGIONS, FEATURES, generator=g)
    mask = torch.ones(BATCH, STEPS, dtype=torch.bool)
    mask[1, 4:] = False  # the second clip is 4 frames long
    return features, mask, torch.tensor([0, 3, 4])


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_forward_backward_reaches_every_parameter(variant: str) -> None:
    torch.manual_seed(0)
    model = _model(variant)
    features, mask, labels = _batch()
    out = model(features, mask)
    assert out.logits.shape == (BATCH, STEPS, CLASSES)
    assert out.attention.shape == (BATCH, STEPS, REGIONS)
    assert torch.allclose(out.attention.sum(-1), torch.ones(BATCH, STEPS))
    terms = loss_terms(model, out, labels, mask)
    assert torch.isfinite(terms.total)
    terms.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_boundaries_exist_exactly_for_hman(variant: str) -> None:
    model = _model(variant)
    out = model(*_batch()[:2])
    if variant == "lstm_soft":
        assert isinstance(model, SoftAttentionLSTM) and out.boundaries is None
    else:
        assert isinstance(model, HMAN)
        assert out.boundaries is not None and out.boundaries.shape == (BATCH, STEPS, 3)
        assert set(out.boundaries.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_reinforce_has_a_surrogate_and_only_soft_a_penalty(variant: str) -> None:
    model = _model(variant)
    features, mask, labels = _batch()
    terms = loss_terms(model, model(features, mask), labels, mask)
    assert (terms.surrogate != 0).item() == (variant == "reinforce_hard")
    assert (terms.penalty != 0).item() == (variant in ("lstm_soft", "soft") and model.penalty > 0)
    assert torch.allclose(terms.total, terms.cross_entropy + terms.surrogate + terms.penalty)


def test_cross_entropy_is_eq22_summed_over_real_steps() -> None:
    model = _model("soft")
    features, mask, labels = _batch()
    torch.manual_seed(1)
    out = model(features, mask)
    log_p = out.logits.log_softmax(-1).gather(-1, labels.view(-1, 1, 1).expand(-1, STEPS, 1))
    expected = -(log_p.squeeze(-1) * mask).sum(1).mean()
    assert torch.allclose(loss_terms(model, out, labels, mask).cross_entropy, expected)


@pytest.mark.parametrize("variant", ["lstm_soft", "soft", "gumbel_hard"])
def test_padded_frames_change_nothing(variant: str) -> None:
    model = _model(variant)
    features, mask, labels = _batch()
    changed = features.clone()
    changed[1, 4:] = 100.0  # only padding of clip 1
    torch.manual_seed(2)
    first = loss_terms(model, model(features, mask), labels, mask)
    torch.manual_seed(2)
    second = loss_terms(model, model(changed, mask), labels, mask)
    assert torch.equal(first.total, second.total)


def test_reinforce_reward_moves_the_baseline() -> None:
    model = _model("reinforce_hard")
    baseline = model.attention.estimator.baseline.baseline  # type: ignore[union-attr]
    features, mask, labels = _batch()
    loss_terms(model, model(features, mask), labels, mask)
    assert baseline.item() < 0  # rewards are log-likelihoods, below 0


def test_hman_refuses_an_attention_that_does_not_read_h1() -> None:
    model = _model("soft")
    assert isinstance(model, HMAN)
    from stochrnn import SoftAttention

    with pytest.raises(ValueError, match="query is h\\^1 of size 16"):
        HMAN(SoftAttention(8, REGIONS), model.rnn, CLASSES)
