"""Training configurations: TOML files checked key by key.

A config file names one of the five variants of the paper's Section IV.A and
gives every setting of the run; nothing has a hidden default, so a file says
everything that was run. A key that is unknown, missing or of the wrong type
is refused with its dotted name::

    variant = "adaptive_gumbel_hard"   # lstm_soft | soft | reinforce_hard | gumbel_hard
    seed = 0                           #   | adaptive_gumbel_hard

    [data]
    split = "1"            # split id of the features index
    clip_len = 60          # frames per training clip (the paper: 60, 30 for lstm_soft)
    eval_clip_len = 60     # frames per test-time block
    num_workers = 4        # DataLoader workers

    [model]
    hidden_size = 1024     # units per layer
    num_layers = 3
    dropout = 0.0          # on the classifier's input
    layer_norm = false           # (not for lstm_soft; nor are the keys below)
    init_gain = 3.0              # weights uniform in +-init_gain/sqrt(hidden_size)
                                 #   (stochrnn's HM-RNN default; 1: torch.nn.LSTM's)
    boundary = "gumbel_sigmoid"  # learnt boundaries (Eq. 10-11); controls, which take no
                                 #   other boundary key: "always" (every boundary 1) or
                                 #   "update" (every layer UPDATEs: a stacked LSTM)
    boundary_temperature = 0.3   # Gumbel-sigmoid tau of the boundaries
    boundary_prior_weight = 10.0  # weight of the boundary-rate prior (0: none, the paper's
                                  #   objective alone)
    boundary_prior_target = [0.1, 0.1, 0.1]  # its target rate per layer (only when weight > 0)

    [attention]            # keys depend on the variant, see ATTENTION_KEYS
    scoring = "location"   # Eq. 12 (scores from h alone) or "additive"
    temperature = 0.3      # gumbel_hard only

    [optim]
    batch_size = 64
    lr = 1e-4
    lr_after = 1e-5        # learning rate from lr_drop_iteration on
    lr_drop_iteration = 10000
    max_grad_norm = inf    # gradient clipping (inf: none, as in the paper)

    [train]
    iterations = 15000
    log_every = 10         # iterations between metrics rows
    checkpoint_every = 500 # iterations between checkpoints (and one at the end)
    amp = true             # mixed precision on CUDA (ignored on CPU)

Examples
--------
>>> cfg = parse_config({**example_config(), "seed": 3})
>>> cfg.seed, cfg.model.hidden_size, cfg.attention.temperature
(3, 16, 0.3)
>>> parse_config({**example_config(), "sed": 3})
Traceback (most recent call last):
...
ValueError: unknown config key 'sed' (expected one of: attention, data, model, ...)
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found]

__all__ = [
    "ATTENTION_KEYS",
    "BOUNDARIES",
    "HMRNN_KEYS",
    "LEARNT_BOUNDARY_KEYS",
    "VARIANTS",
    "AttentionConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_to_dict",
    "example_config",
    "load_config",
    "parse_config",
]

Variant = Literal["lstm_soft", "soft", "reinforce_hard", "gumbel_hard", "adaptive_gumbel_hard"]

#: The five models of the paper's Section IV.A, in the order of its tables.
VARIANTS: tuple[Variant, ...] = (
    "lstm_soft",
    "soft",
    "reinforce_hard",
    "gumbel_hard",
    "adaptive_gumbel_hard",
)

#: Keys of the ``[attention]`` table that each variant takes (and requires).
ATTENTION_KEYS: dict[str, tuple[str, ...]] = {
    "lstm_soft": ("scoring", "penalty"),
    "soft": ("scoring", "penalty"),
    "reinforce_hard": ("scoring", "reinforce_weight", "baseline_decay"),
    "gumbel_hard": ("scoring", "temperature"),
    "adaptive_gumbel_hard": ("scoring",),
}

#: Keys of the ``[model]`` table that only the HM-AN variants take.
HMRNN_KEYS = (
    "layer_norm",
    "init_gain",
    "boundary",
    "boundary_temperature",
    "boundary_prior_weight",
    "boundary_prior_target",
)

#: How an HM-AN's boundaries are made: learnt (Gumbel-sigmoid, the paper), or a control.
BOUNDARIES = ("gumbel_sigmoid", "always", "update")

#: ``[model]`` keys that only learnt boundaries take (``boundary = "gumbel_sigmoid"``).
LEARNT_BOUNDARY_KEYS = ("boundary_temperature", "boundary_prior_weight", "boundary_prior_target")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which split, and how clips are cut."""

    split: str
    clip_len: int
    eval_clip_len: int
    num_workers: int


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the recurrent network. HM-RNN keys are ``None`` for ``lstm_soft``.

    Attributes
    ----------
    init_gain:
        The recurrent layers' weights are drawn uniform in
        :math:`\\pm g/\\sqrt{H}` (biases in :math:`\\pm 1/\\sqrt{H}`), in the
        learnt-boundary variants and in both controls alike (``init_gain`` of
        :class:`stochrnn.HMRNN`; 3 its default, 1 :class:`torch.nn.LSTM`'s range).
    boundary:
        ``"gumbel_sigmoid"``: boundaries drawn by Gumbel-sigmoid at
        ``boundary_temperature`` (Eq. 10-11). Two controls with nothing learnt
        about when to fire: ``"always"``, every boundary is 1 at every step
        (every layer FLUSHes and hands its state up at every step); ``"update"``,
        every layer UPDATEs at every step (its input from below always on, its
        memory never flushed: a stacked LSTM with HM-AN's wiring, see
        :class:`.model.StackedLSTMHMAN`).
    boundary_prior_weight:
        Weight of the boundary-rate prior (:func:`.model.boundary_prior`) added to
        the loss; 0: none (the paper's objective).
    boundary_prior_target:
        Its target firing rate, one per layer (``None`` when the weight is 0).
    """

    hidden_size: int
    num_layers: int
    dropout: float
    layer_norm: bool | None = None
    init_gain: float | None = None
    boundary: Literal["gumbel_sigmoid", "always", "update"] | None = None
    boundary_temperature: float | None = None
    boundary_prior_weight: float | None = None
    boundary_prior_target: tuple[float, ...] | None = None


@dataclass(frozen=True)
class AttentionConfig:
    """``[attention]``: the pooling over regions; keys a variant does not take are ``None``.

    Attributes
    ----------
    scoring:
        ``"location"`` (Eq. 12) or ``"additive"``.
    penalty:
        :math:`\\lambda` of the doubly stochastic penalty (soft attention).
    reinforce_weight:
        :math:`\\lambda` of Eq. 19 (REINFORCE hard attention).
    baseline_decay:
        Decay of the moving-average baseline of Eq. 18 (0.9 in the paper).
    temperature:
        Constant Gumbel-softmax temperature (0.3 in the paper).
    """

    scoring: Literal["location", "additive"]
    penalty: float | None = None
    reinforce_weight: float | None = None
    baseline_decay: float | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class OptimConfig:
    """``[optim]``: Adam with one step down of the learning rate."""

    batch_size: int
    lr: float
    lr_after: float
    lr_drop_iteration: int
    max_grad_norm: float

    def learning_rate(self, iteration: int) -> float:
        """The learning rate of (0-based) ``iteration``.

        Examples
        --------
        >>> o = OptimConfig(64, 1e-4, 1e-5, 10_000, math.inf)
        >>> o.learning_rate(9_999), o.learning_rate(10_000)
        (0.0001, 1e-05)
        """
        return self.lr if iteration < self.lr_drop_iteration else self.lr_after


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: length of the run, logging and checkpoints."""

    iterations: int
    log_every: int
    checkpoint_every: int
    amp: bool


@dataclass(frozen=True)
class Config:
    """A whole training configuration (see the module docstring for the file format)."""

    variant: Variant
    seed: int
    data: DataConfig
    model: ModelConfig
    attention: AttentionConfig
    optim: OptimConfig
    train: TrainConfig

    @property
    def is_hmrnn(self) -> bool:
        """True for the four HM-AN variants, False for the LSTM baseline."""
        return self.variant != "lstm_soft"

    @property
    def has_prior(self) -> bool:
        """True when the loss has a boundary-rate prior (a weight > 0)."""
        return bool(self.model.boundary_prior_weight)


# --------------------------------------------------------------------------- value checks

Check = Callable[[str, Any], Any]


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config key {key!r}: expected an integer >= 1, got {value!r}")
    return value


def _non_negative_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"config key {key!r}: expected an integer >= 0, got {value!r}")
    return value


def _int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"config key {key!r}: expected an integer, got {value!r}")
    return value


def _number(key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"config key {key!r}: expected a number, got {value!r}")
    return float(value)


def _positive(key: str, value: Any) -> float:
    number = _number(key, value)
    if number <= 0:
        raise ValueError(f"config key {key!r}: expected a number > 0, got {value!r}")
    return number


def _positive_finite(key: str, value: Any) -> float:
    number = _positive(key, value)
    if math.isinf(number):
        raise ValueError(f"config key {key!r}: expected a finite number > 0, got {value!r}")
    return number


def _non_negative_finite(key: str, value: Any) -> float:
    number = _number(key, value)
    if number < 0 or math.isinf(number):
        raise ValueError(f"config key {key!r}: expected a finite number >= 0, got {value!r}")
    return number


def _probability(key: str, value: Any) -> float:
    number = _number(key, value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"config key {key!r}: expected a number in [0, 1), got {value!r}")
    return number


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config key {key!r}: expected true or false, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"config key {key!r}: expected a non-empty string, got {value!r}")
    return value


def _rates(key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"config key {key!r}: expected a list of rates in (0, 1), got {value!r}")
    rates = tuple(_number(key, v) for v in value)
    if not all(0.0 < r < 1.0 for r in rates):
        raise ValueError(f"config key {key!r}: expected rates in (0, 1), got {value!r}")
    return rates


def _one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"config key {key!r}: expected one of {list(choices)}, got {value!r}")
        return cast(str, value)

    return check


_SECTIONS: dict[str, dict[str, Check]] = {
    "data": {
        "split": _string,
        "clip_len": _positive_int,
        "eval_clip_len": _positive_int,
        "num_workers": _non_negative_int,
    },
    "model": {
        "hidden_size": _positive_int,
        "num_layers": _positive_int,
        "dropout": _probability,
        "layer_norm": _bool,
        "init_gain": _positive_finite,
        "boundary": _one_of(*BOUNDARIES),
        "boundary_temperature": _positive_finite,
        "boundary_prior_weight": _non_negative_finite,
        "boundary_prior_target": _rates,
    },
    "attention": {
        "scoring": _one_of("location", "additive"),
        "penalty": _non_negative_finite,
        "reinforce_weight": _non_negative_finite,
        "baseline_decay": _probability,
        "temperature": _positive_finite,
    },
    "optim": {
        "batch_size": _positive_int,
        "lr": _positive_finite,
        "lr_after": _positive_finite,
        "lr_drop_iteration": _non_negative_int,
        "max_grad_norm": _positive,
    },
    "train": {
        "iterations": _positive_int,
        "log_every": _positive_int,
        "checkpoint_every": _positive_int,
        "amp": _bool,
    },
}

_TOP_LEVEL: dict[str, Check] = {"variant": _one_of(*VARIANTS), "seed": _int}


def _expected_keys(variant: str, model_table: Any = None) -> dict[str, tuple[str, ...]]:
    """The keys of each table; which boundary keys ``[model]`` takes depends on its values."""
    model = tuple(_SECTIONS["model"])
    table = model_table if isinstance(model_table, Mapping) else {}
    if variant == "lstm_soft":
        model = tuple(k for k in model if k not in HMRNN_KEYS)
    elif table.get("boundary") in ("always", "update"):
        model = tuple(k for k in model if k not in LEARNT_BOUNDARY_KEYS)
    elif table.get("boundary_prior_weight", 1) == 0:
        model = tuple(k for k in model if k != "boundary_prior_target")
    return {
        "data": tuple(_SECTIONS["data"]),
        "model": model,
        "attention": ATTENTION_KEYS[variant],
        "optim": tuple(_SECTIONS["optim"]),
        "train": tuple(_SECTIONS["train"]),
    }


def _check_keys(where: str, given: Mapping[str, Any], expected: tuple[str, ...]) -> None:
    prefix = f"{where}." if where else ""
    for key in given:
        if key not in expected:
            raise ValueError(
                f"unknown config key {prefix + key!r} "
                f"(expected one of: {', '.join(sorted(expected))})"
            )
    for key in expected:
        if key not in given:
            raise ValueError(f"missing config key {prefix + key!r}")


def _section(name: str, table: Any, expected: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ValueError(f"config key {name!r}: expected a table [{name}], got {table!r}")
    _check_keys(name, table, expected)
    checks = _SECTIONS[name]
    return {key: checks[key](f"{name}.{key}", table[key]) for key in expected}


def _check_boundary_choice(variant: str, table: Any) -> None:
    """Check the ``[model]`` values that decide which boundary keys are expected."""
    if variant == "lstm_soft" or not isinstance(table, Mapping):
        return
    checks = _SECTIONS["model"]
    if "boundary" in table:
        checks["boundary"]("model.boundary", table["boundary"])
    if table.get("boundary") in ("always", "update"):
        return
    if "boundary_prior_weight" in table:
        weight = checks["boundary_prior_weight"](
            "model.boundary_prior_weight", table["boundary_prior_weight"]
        )
        if weight == 0 and "boundary_prior_target" in table:
            raise ValueError(
                "config key 'model.boundary_prior_target' is taken only when "
                "model.boundary_prior_weight > 0 (it is 0: no prior)"
            )


def parse_config(document: Mapping[str, Any]) -> Config:
    """Check a parsed TOML document and build the :class:`Config`.

    Raises
    ------
    ValueError
        Naming the dotted key that is unknown, missing or has a bad value.
    """
    variant = document.get("variant")
    if variant is None:
        raise ValueError("missing config key 'variant'")
    variant = _TOP_LEVEL["variant"]("variant", variant)
    _check_boundary_choice(variant, document.get("model"))
    expected = _expected_keys(variant, document.get("model"))
    _check_keys("", document, (*_TOP_LEVEL, *expected))
    seed = _TOP_LEVEL["seed"]("seed", document["seed"])
    tables = {name: _section(name, document[name], keys) for name, keys in expected.items()}
    if tables["model"].get("boundary") == "update" and tables["model"].get("layer_norm"):
        raise ValueError(
            "config key 'model.layer_norm': expected false with model.boundary = \"update\" "
            "(its LSTM layers have no layer norm), got true"
        )
    target = tables["model"].get("boundary_prior_target")
    layers = tables["model"]["num_layers"]
    if target is not None and len(target) != layers:
        raise ValueError(
            f"config key 'model.boundary_prior_target': expected one rate per layer "
            f"({layers}), got {len(target)}"
        )
    return Config(
        variant=cast(Variant, variant),
        seed=seed,
        data=DataConfig(**tables["data"]),
        model=ModelConfig(**tables["model"]),
        attention=AttentionConfig(**tables["attention"]),
        optim=OptimConfig(**tables["optim"]),
        train=TrainConfig(**tables["train"]),
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a TOML config file; errors name the file and the key."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from error
    try:
        return parse_config(document)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as the document :func:`parse_config` reads (keys a variant lacks dropped).

    Examples
    --------
    >>> cfg = parse_config(example_config())
    >>> parse_config(config_to_dict(cfg)) == cfg
    True
    """
    document = asdict(config)
    for name in _SECTIONS:
        document[name] = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in document[name].items()
            if v is not None
        }
    return document


def example_config(variant: Variant = "gumbel_hard") -> dict[str, Any]:
    """A small valid config document for ``variant`` (the tests' starting point).

    Examples
    --------
    >>> parse_config(example_config("lstm_soft")).model.boundary_temperature is None
    True
    """
    attention: dict[str, Any] = {
        "scoring": "location",
        "penalty": 1.0,
        "reinforce_weight": 1.0,
        "baseline_decay": 0.9,
        "temperature": 0.3,
    }
    model: dict[str, Any] = {
        "hidden_size": 16,
        "num_layers": 3,
        "dropout": 0.0,
        "layer_norm": False,
        "init_gain": 3.0,
        "boundary": "gumbel_sigmoid",
        "boundary_temperature": 0.3,
        "boundary_prior_weight": 0.0,
    }
    expected = _expected_keys(variant, model)
    return {
        "variant": variant,
        "seed": 0,
        "data": {"split": "1", "clip_len": 8, "eval_clip_len": 8, "num_workers": 0},
        "model": {k: model[k] for k in expected["model"]},
        "attention": {k: attention[k] for k in expected["attention"]},
        "optim": {
            "batch_size": 4,
            "lr": 1e-3,
            "lr_after": 1e-4,
            "lr_drop_iteration": 100,
            "max_grad_norm": 5.0,
        },
        "train": {"iterations": 2, "log_every": 1, "checkpoint_every": 2, "amp": False},
    }
