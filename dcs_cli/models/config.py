"""`model:` and `head:` sections — backbone and classifier head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dcs_cli.config_fields import opt, require


@dataclass
class ModelConfig:
    """Backbone that turns an input into a `feature_dim` embedding."""

    backbone: str = opt("iresnet50", "registered backbone: iresnet18/34/50/100/200, mobilefacenet, mlp")
    feature_dim: int = opt(256, "embedding size")
    dropout: float = opt(0.0, "dropout before the embedding layer")
    mlp_hidden: int = opt(256, "hidden width of the mlp backbone")
    width: int = opt(64, "base channel width: iresnet stages are width×(1, 2, 4, 8), mobilefacenet width×(1, 2) "
                         "(64 = the InsightFace nets; smaller trains faster on a CPU)")

    def validate(self, key: str) -> None:
        require(self.feature_dim > 0, f"{key}.feature_dim", "must be > 0")
        require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")
        require(self.mlp_hidden > 0, f"{key}.mlp_hidden", "must be > 0")
        require(self.width > 0, f"{key}.width", "must be > 0")


@dataclass
class HeadConfig:
    """Logits over the active classes' rows."""

    type: Literal["softmax", "cosface", "arcface"] = opt("softmax", "head type")
    bias: bool = opt(False, "learn a per-class bias (softmax head only)")
    scale: float = opt(64.0, "logit scale s (cosface, arcface)")
    margin: float = opt(0.35, "margin m: cosine margin (cosface) or angular margin in radians (arcface)")
    init_std: float = opt(0.0, "standard deviation of the class rows' initial values; 0 = auto: 0.01 for softmax "
                               "(logits start near zero), 1/sqrt(feature_dim) for cosface/arcface (rows of about "
                               "unit norm: a normalised row's angular step grows as 1/|w|^2, so tiny rows take "
                               "huge, noisy steps, worst for rows a sampled mode updates rarely)")

    def row_init_std(self, feature_dim: int) -> float:
        """The initial standard deviation of the class rows, `init_std` or its automatic value."""
        if self.init_std > 0:
            return self.init_std
        return 0.01 if self.type == "softmax" else feature_dim ** -0.5

    def validate(self, key: str) -> None:
        require(self.scale > 0, f"{key}.scale", "must be > 0")
        require(self.margin >= 0, f"{key}.margin", "must be >= 0")
        require(self.init_std >= 0, f"{key}.init_std", "must be >= 0 (0 = automatic)")
        require(not (self.bias and self.type != "softmax"), f"{key}.bias",
                "is only supported with head.type=softmax (margin heads use normalised rows)")
