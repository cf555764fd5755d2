"""The five HM-AN variants build, run forward and backward, and their loss has the right parts."""

from __future__ import annotations

import pytest
import torch

from examples.action_recognition.config import VARIANTS, example_config, parse_config
from examples.action_recognition.model import (
    HMAN,
    AlwaysBoundary,
    SoftAttentionLSTM,
    StackedLSTMHMAN,
    build_model,
    loss_terms,
)
from stochrnn import HMRNN, BoundaryRatePrior
from tests.one_device import OneDevice

REGIONS, FEATURES, CLASSES, BATCH, STEPS = 9, 4, 5, 3, 6


def _model(variant: str, **model: object):
    """``variant``'s example model with ``[model]`` keys set (a key set to None is dropped)."""
    document = example_config(variant)  # type: ignore[arg-type]
    document["model"].update(model)
    document["model"] = {k: v for k, v in document["model"].items() if v is not None}
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


CONTROLS = {"boundary_temperature": None, "boundary_prior_weight": None}
PRIOR = {"boundary_prior_weight": 10.0, "boundary_prior_target": [0.1, 0.1, 0.1]}


@pytest.mark.parametrize(
    ("variant", "model_keys", "prior"),
    [
        *((v, {}, False) if v == "lstm_soft" else (v, PRIOR, True) for v in VARIANTS),
        ("soft", {"boundary": "always", **CONTROLS}, False),
        ("soft", {"boundary": "update", **CONTROLS}, False),
    ],
    ids=[*VARIANTS, "control-always", "control-update"],
)
def test_training_step_reads_no_value_back(
    variant: str, model_keys: dict[str, object], prior: bool
) -> None:
    """Forward, loss and backward on the ``meta`` device, whose tensors have no values: a
    read on the host (``.item()``, a check in an ``if``) or a value-dependent shape raises,
    as each would wait for a GPU and stop a CUDA-graph capture (tests/test_no_host_sync.py)."""
    model = _model(variant, **model_keys).to("meta")
    features = torch.randn(BATCH, STEPS, REGIONS, FEATURES, device="meta")
    mask = torch.ones(BATCH, STEPS, dtype=torch.bool, device="meta")
    labels = torch.zeros(BATCH, dtype=torch.long, device="meta")
    with OneDevice("meta"):  # nor a host tensor handed to the device (tests/one_device.py)
        out = model(features, mask)
        loss_terms(model, out, labels, mask).total.backward()
    assert out.logits.shape == (BATCH, STEPS, CLASSES)
    assert all(p.grad is not None for p in model.parameters())
    has_prior = isinstance(model, HMAN) and model.rnn.boundary_prior is not None
    assert has_prior == prior  # the prior's Bernoulli was once a host read


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
    assert terms.boundary_prior.item() == 0.0  # no prior in these configs
    if isinstance(model, HMAN):
        assert model.rnn.boundary_prior is None  # not the library's default prior either
    total = terms.cross_entropy + terms.surrogate + terms.penalty + terms.boundary_prior
    assert torch.allclose(terms.total, total)


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


def _learnt(**model: object) -> dict[str, object]:
    return {"boundary_prior_weight": 2.0, "boundary_prior_target": [0.5, 0.2, 0.1], **model}


def test_hman_output_holds_the_clip_as_one_hmrnn_output() -> None:
    model = _model("soft")
    features, mask, _ = _batch()
    torch.manual_seed(3)
    out = model(features, mask)
    assert out.rnn is not None and out.boundaries is not None
    assert out.rnn.boundary_logits.shape == (BATCH, STEPS, 3)
    assert torch.equal(out.rnn.boundaries, out.boundaries)
    assert torch.equal(out.rnn.log_prob, out.boundary_log_prob)
    assert (out.rnn.boundary_logits[1, 4:] == 0).all()  # padded frames
    assert (out.rnn.boundary_logits[0] != 0).all()
    full = [0, 2]  # clips without padding: the last output is the final state
    assert torch.equal(out.rnn.output[full, -1], torch.cat(out.rnn.state.h, dim=-1)[full])


def test_prior_is_the_library_prior_on_the_clip_and_its_gradient_moves_the_rates() -> None:
    model = _model("gumbel_hard", **_learnt())
    assert isinstance(model, HMAN) and isinstance(model.rnn.boundary_prior, BoundaryRatePrior)
    features, mask, labels = _batch()
    torch.manual_seed(4)
    out = model(features, mask)
    terms = loss_terms(model, out, labels, mask)
    assert out.rnn is not None
    expected = BoundaryRatePrior([0.5, 0.2, 0.1], weight=2.0)(out.rnn, model.rnn.boundaries, mask)
    assert terms.boundary_prior.item() == pytest.approx(expected.item()) and expected.item() > 0
    assert torch.allclose(
        terms.total, terms.cross_entropy + terms.surrogate + terms.penalty + terms.boundary_prior
    )
    rates = model.rnn.boundary_prior.rates(out.rnn, model.rnn.boundaries, mask).detach()
    model.zero_grad()
    terms.boundary_prior.backward()
    bias = [cell.bias.grad[-1].item() for cell in model.rnn.layers]  # rows i, f, o, g, z
    targets = [0.5, 0.2, 0.1]
    for rate, target, grad in zip(rates.tolist(), targets, bias, strict=True):
        assert (grad < 0) == (rate < target)  # descent raises a rate under its target


def test_always_control_fires_every_boundary_and_has_nothing_to_learn_about_them() -> None:
    model = _model("soft", boundary="always", boundary_temperature=None, boundary_prior_weight=None)
    assert isinstance(model, HMAN)
    assert all(isinstance(est, AlwaysBoundary) for est in model.rnn.boundaries)
    features, mask, labels = _batch()
    out = model(features, mask)
    assert out.boundaries is not None
    assert out.boundaries[mask].eq(1).all() and out.boundaries[~mask].eq(0).all()
    assert out.boundary_log_prob.eq(0).all()
    assert model.rnn.boundary_prior is None  # not the library's default prior
    assert loss_terms(model, out, labels, mask).boundary_prior.item() == 0.0


@pytest.mark.parametrize("boundary", ["gumbel_sigmoid", "always", "update"])
def test_init_gain_widens_the_recurrent_weights_alike_in_hman_and_its_controls(
    boundary: str,
) -> None:
    fixed = {"boundary_temperature": None, "boundary_prior_weight": None}
    keys = {"boundary": boundary, **(fixed if boundary != "gumbel_sigmoid" else {})}
    models = {}
    for gain in (1.0, 5.0):
        torch.manual_seed(7)
        models[gain] = _model("soft", init_gain=gain, **keys)
    narrow, wide = models[1.0], models[5.0]
    if boundary == "update":  # nn.LSTMCell's draws, the weights (not the biases) times the gain
        for c1, c5 in zip(narrow.cells, wide.cells, strict=True):
            torch.testing.assert_close(c5.weight_ih, 5.0 * c1.weight_ih)
            torch.testing.assert_close(c5.weight_hh, 5.0 * c1.weight_hh)
            torch.testing.assert_close(c5.bias_ih, c1.bias_ih)
        return
    for l1, l5 in zip(narrow.rnn.layers, wide.rnn.layers, strict=True):
        bound = 1.0 / l1.hidden_size**0.5
        assert (l1.init_gain, l5.init_gain) == (1.0, 5.0)
        assert l1.weight.abs().max() <= bound < l5.weight.abs().max() <= 5.0 * bound
        assert l5.bias.abs().max() <= bound


@pytest.mark.parametrize("gain", [0.0, -1.0, float("nan"), float("inf")])
def test_update_control_refuses_a_bad_init_gain(gain: float) -> None:
    model = _model("soft", boundary="update", boundary_temperature=None, boundary_prior_weight=None)
    with pytest.raises(ValueError, match="init_gain must be a finite number > 0"):
        StackedLSTMHMAN(model.attention, FEATURES, 16, 3, CLASSES, init_gain=gain)


def test_update_control_is_an_lstm_stack_that_hman_would_be_if_every_layer_updated() -> None:
    torch.manual_seed(5)
    model = _model("soft", boundary="update", boundary_temperature=None, boundary_prior_weight=None)
    assert isinstance(model, StackedLSTMHMAN)
    features, mask, _ = _batch()
    out = model(features, mask)
    assert out.boundaries is None and out.logits.shape == (BATCH, STEPS, CLASSES)
    # the HM-LSTM equations with z_prev = 0 and z_below = 1 at every step are an LSTM step:
    rnn = HMRNN(FEATURES, 16, num_layers=3, boundary=[AlwaysBoundary() for _ in range(3)])
    for cell, lstm in zip(rnn.layers, model.cells, strict=True):
        with torch.no_grad():
            size = lstm.hidden_size
            # torch's gate order i, f, g, o; the HM-LSTM cell's i, f, o, g, z
            w_ih, w_hh = lstm.weight_ih.chunk(4), lstm.weight_hh.chunk(4)
            b = (lstm.bias_ih + lstm.bias_hh).chunk(4)
            order = (0, 1, 3, 2)
            cell.weight_bottom_up[: 4 * size] = torch.cat([w_ih[k] for k in order])
            cell.weight_recurrent[: 4 * size] = torch.cat([w_hh[k] for k in order])
            cell.bias[: 4 * size] = torch.cat([b[k] for k in order])
    x = torch.randn(2, FEATURES)
    h, c = [torch.zeros(2, 16) for _ in range(3)], [torch.zeros(2, 16) for _ in range(3)]
    state = rnn.initial_state(2)  # z = 0: the first step of every layer is an UPDATE
    out_rnn = rnn(x.unsqueeze(1), state)
    below = x
    for l, lstm in enumerate(model.cells):
        h[l], c[l] = lstm(below, (h[l], c[l]))  # type: ignore[operator]
        below = h[l]
    assert torch.allclose(out_rnn.output[:, 0], torch.cat(h, dim=-1), atol=1e-6)
