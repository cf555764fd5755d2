"""Image backbones that map frames to feature maps, and the encoder that runs them.

A backbone is any :class:`torch.nn.Module` mapping ImageNet-normalised images
``(N, 3, 224, 224)`` to feature maps ``(N, C, h, w)``. :func:`load_backbone`
resolves a name:

* ``"resnet152"``: torchvision's ResNet-152 without its pooling and
  classifier, ``(N, 2048, 7, 7)`` -- the paper's features. torchvision is
  imported only then, and the ImageNet weights come from a local file
  (``--weights``, a state dict such as torchvision's
  ``resnet152-394f9c45.pth``); ``random_weights=True`` skips them, for
  throughput runs only.
* ``"tiny"``: :func:`tiny_backbone`, a fixed two-layer demo network, for tests
  and CPU smoke runs.
* ``"package.module:factory"``: ``factory()`` is called with no argument and
  must return such a module; ``--weights`` is loaded into it when given.

:class:`FrameEncoder` normalises ``uint8`` frames (ImageNet mean and standard
deviation), runs the backbone in inference mode, and returns
``(N, h*w, C)`` float16 with region ``r = row * w + col``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FrameEncoder",
    "load_backbone",
    "resnet152_trunk",
    "tiny_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_backbone(channels: int = 8, grid: int = 2) -> nn.Module:
    """A demo backbone: ``(N, 3, H, W) -> (N, channels, grid, grid)``.

    Adaptive average pooling to ``grid x grid`` then a 1x1 convolution with
    weights drawn from a generator seeded with 0, so every process builds the
    same network. Cheap enough for tests on a CPU.

    Examples
    --------
    >>> tiny_backbone()(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 8, 2, 2])
    """
    conv = nn.Conv2d(3, channels, kernel_size=1, bias=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
    return nn.Sequential(nn.AdaptiveAvgPool2d(grid), conv)


def _load_state(module: nn.Module, weights: Path) -> None:
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict(state)


def resnet152_trunk(weights: Path | None, random_weights: bool = False) -> nn.Module:
    """torchvision's ResNet-152 up to its last convolution block: ``(N, 2048, 7, 7)`` at 224.

    ``weights`` is a state dict of ``torchvision.models.resnet152`` (with its
    ``fc`` layer, as torchvision ships it). Without it, ``random_weights`` must
    be True (features from random weights are good for throughput only).
    """
    try:
        import torchvision
    except ImportError as error:
        raise ImportError(
            "--backbone resnet152 needs torchvision: pip install torchvision (the release "
            f"built for torch {torch.__version__}), or pass --backbone package.module:factory"
        ) from error
    if weights is None and not random_weights:
        raise ValueError(
            "--backbone resnet152 needs --weights FILE, a local state dict of "
            "torchvision.models.resnet152 (e.g. resnet152-394f9c45.pth, the ImageNet weights); "
            "--random-weights skips them, for throughput runs only"
        )
    model = torchvision.models.resnet152(weights=None)
    if weights is not None:
        _load_state(model, weights)
    return nn.Sequential(*list(model.children())[:-2])


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"expected a backbone 'resnet152', 'tiny' or 'package.module:factory', got {spec!r}"
        )
    module = importlib.import_module(module_name)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no callable {attribute!r} (backbone {spec!r})")
    return factory  # type: ignore[no-any-return]


def load_backbone(
    name: str, weights: str | Path | None = None, random_weights: bool = False
) -> nn.Module:
    """Build the backbone ``name`` (see the module docstring), in eval mode, on the CPU.

    Examples
    --------
    >>> load_backbone("examples.action_recognition.backbones:tiny_backbone").training
    False
    """
    weights = None if weights is None else Path(weights)
    if name == "resnet152":
        backbone = resnet152_trunk(weights, random_weights)
    else:
        backbone = tiny_backbone() if name == "tiny" else _import_factory(name)()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone {name!r} returned {type(backbone).__name__}, not nn.Module")
        if weights is not None:
            _load_state(backbone, weights)
    return backbone.eval()


class FrameEncoder:
    """Run a backbone on ``uint8`` frames: ``(N, H, W, 3) -> (N, h*w, C)`` float16.

    ``x = (frames / 255 - mean) / std`` per channel (ImageNet statistics), then
    the backbone under :func:`torch.inference_mode` on ``device`` -- with
    ``amp=True`` inside ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU).
    The caller bounds ``N`` (the extractor's ``--batch-size``).

    Examples
    --------
    >>> encoder = FrameEncoder(tiny_backbone(channels=4, grid=3))
    >>> encoder.feature_shape, encoder(np.zeros((5, 224, 224, 3), np.uint8)).shape
    ((9, 4), (5, 9, 4))
    """

    def __init__(
        self, backbone: nn.Module, device: str | torch.device = "cpu", amp: bool = False
    ) -> None:
        self.device = torch.device(device)
        self.backbone = backbone.eval().to(self.device)
        self.amp = amp
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        probe = self(np.zeros((1, 224, 224, 3), dtype=np.uint8))
        self.feature_shape: tuple[int, int] = (probe.shape[1], probe.shape[2])

    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features of ``frames`` (``(N, H, W, 3)`` uint8) as ``(N, h*w, C)`` float16."""
        images = torch.as_tensor(frames).to(self.device, non_blocking=True)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 frames (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
            )
        x = (images.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.inference_mode(), torch.autocast(self.device.type, dtype, enabled=self.amp):
            maps = self.backbone(x)
        if maps.ndim != 4 or maps.shape[0] != images.shape[0]:
            raise ValueError(
                f"backbone must map (N, 3, H, W) to (N, C, h, w) with N={images.shape[0]}, "
                f"got {tuple(maps.shape)}"
            )
        n, c, h, w = maps.shape
        regions = maps.permute(0, 2, 3, 1).reshape(n, h * w, c)
        features: np.ndarray = regions.to(torch.float16).cpu().numpy()
        return features
