"""Backbone registry: `model = build_backbone(cfg.model, input_shape=(3, 112, 112))` → (B, feature_dim).

    >>> import torch
    >>> from dcs_cli.models.config import ModelConfig
    >>> available_backbones()
    ['iresnet100', 'iresnet18', 'iresnet200', 'iresnet34', 'iresnet50', 'mlp', 'mobilefacenet']
    >>> net = build_backbone(ModelConfig(backbone="iresnet18", feature_dim=32, width=8), input_shape=(3, 32, 32))
    >>> tuple(net.eval()(torch.zeros(2, 3, 32, 32)).shape)     # (B, feature_dim)
    (2, 32)
    >>> backbone_input_kind("mlp"), backbone_input_kind("iresnet18")
    ('vector', 'image')

A backbone is one function registered under a name with `@register_backbone("name")`, taking the
`ModelConfig` and the shape of one input sample (`(C, H, W)` for images, `(dim,)` for feature vectors).
Adding one is one file in this package plus one line in `_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from dcs_cli.errors import ConfigError

if TYPE_CHECKING:  # the config package imports model sections at load time
    from dcs_cli.models.config import ModelConfig

BackboneFactory = Callable[["ModelConfig", tuple], nn.Module]

# Modules whose import registers backbones; one line per file.
_MODULES = [
    "dcs_cli.models.backbones.iresnet",
    "dcs_cli.models.backbones.mobilefacenet",
    "dcs_cli.models.backbones.mlp",
]

_REGISTRY: dict[str, BackboneFactory] = {}
# What kind of input each backbone takes: "image" (C, H, W) or "vector" (dim,).
_INPUT_KIND: dict[str, str] = {}


def register_backbone(name: str, input_kind: str = "image") -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: `@register_backbone("iresnet18")` on `def factory(cfg, input_shape) -> nn.Module`."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        _INPUT_KIND[name] = input_kind
        return factory

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def available_backbones() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def backbone_input_kind(name: str) -> str:
    """"image" for backbones fed (3, H, W) images, "vector" for those fed feature vectors."""
    _load_all()
    if name not in _INPUT_KIND:
        raise ConfigError(f"model.backbone = {name!r} is not registered; choose one of: "
                          f"{', '.join(available_backbones())}")
    return _INPUT_KIND[name]


def check_backbone_input(cfg: ModelConfig, input_shape: tuple) -> tuple:
    """`input_shape` as ints, or a ConfigError if `cfg.backbone` cannot take inputs of that shape."""
    kind = backbone_input_kind(cfg.backbone)
    shape = tuple(int(s) for s in input_shape)
    if kind == "image" and (len(shape) != 3 or min(shape) <= 0):
        raise ConfigError(f"model.backbone = {cfg.backbone!r} takes images shaped (C, H, W); got input shape {shape}")
    if kind == "vector" and (len(shape) != 1 or shape[0] <= 0):
        raise ConfigError(f"model.backbone = {cfg.backbone!r} takes feature vectors shaped (dim,); "
                          f"got input shape {shape}")
    return shape


def build_backbone(cfg: ModelConfig, input_shape: tuple) -> nn.Module:
    """Instantiate `cfg.backbone` for inputs of `input_shape`; the module maps (B, *input_shape) → (B, feature_dim)."""
    shape = check_backbone_input(cfg, input_shape)  # registers every backbone first (`_load_all`)
    return _REGISTRY[cfg.backbone](cfg, shape)


__all__ = ["available_backbones", "backbone_input_kind", "build_backbone", "check_backbone_input", "register_backbone"]
