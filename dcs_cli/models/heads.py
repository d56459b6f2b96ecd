"""Classifier heads over gathered rows: margin logits for the active classes (or all of them).

    >>> head = build_head(HeadConfig(type="cosface", scale=64.0, margin=0.35))   # softmax | cosface | arcface
    >>> features, weight_rows = torch.randn(4, 8), torch.randn(10, 8)   # 4 samples; 10 rows from the store
    >>> local_labels = torch.tensor([0, 3, 3, 9])                       # targets as positions in those rows
    >>> logits = head(features, weight_rows, None, local_labels)        # (features, weight_rows, bias_rows, labels)
    >>> loss = F.cross_entropy(logits, local_labels)
    >>> tuple(logits.shape), head.metric
    ((4, 10), 'angular')

A head holds no weights: the rows come from the class store, so the same head serves full mode (all rows)
and sampled mode (the selected rows with labels remapped into 0..S-1). `metric` tells the selectors which
similarity ranks classes the way the logits do (`dot` for softmax, `angular` for the margin heads).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dcs_cli.errors import ConfigError
from dcs_cli.models.config import HeadConfig


class SoftmaxHead(nn.Module):
    """`logits = SoftmaxHead(bias=False)(x, W, b, y)`: plain x·Wᵀ (+ b)."""

    metric = "dot"

    def __init__(self, bias: bool = False):
        super().__init__()
        self.bias = bias

    def forward(self, features, weight_rows, bias_rows=None, local_labels=None):
        logits = features @ weight_rows.T
        if self.bias and bias_rows is not None:
            logits = logits + bias_rows
        return logits


class _CosineHead(nn.Module):
    metric = "angular"

    def __init__(self, scale: float, margin: float):
        super().__init__()
        self.scale, self.margin = float(scale), float(margin)

    def cosine(self, features, weight_rows):
        return F.normalize(features, dim=1) @ F.normalize(weight_rows, dim=1).T

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        """The target's logit before scaling; subclasses apply their margin (here none: NormFace)."""
        return cos_t

    def forward(self, features, weight_rows, bias_rows=None, local_labels=None):
        cos = self.cosine(features, weight_rows).clamp(-1.0, 1.0)
        if local_labels is None:  # inference: no margin
            return self.scale * cos
        idx = local_labels.view(-1, 1).to(cos.device)
        cos_t = cos.gather(1, idx)
        logits = cos.scatter(1, idx, self.target_logit(cos_t))
        return self.scale * logits


class CosFaceHead(_CosineHead):
    """`logits = CosFaceHead(scale=64, margin=0.35)(x, W, None, y)`: s·(cos θ − m at the target)."""

    def target_logit(self, cos_t):
        return cos_t - self.margin


class ArcFaceHead(_CosineHead):
    """`logits = ArcFaceHead(scale=64, margin=0.5)(x, W, None, y)`: s·cos(θ + m) at the target.

    cos(θ + m) stops decreasing once θ + m > π, which would reward pushing a sample further away. Past
    that threshold (cos θ < cos(π − m)) the target logit continues linearly as cos θ − (1 − cos m): it meets
    cos(θ + m) = −1 exactly at the threshold, so the loss stays continuous and monotone. (InsightFace's
    `cos θ − m·sin m` jumps at the threshold.) `easy_margin=True` applies the margin only where cos θ > 0.
    """

    def __init__(self, scale: float, margin: float, easy_margin: bool = False):
        super().__init__(scale, margin)
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)

    def target_logit(self, cos_t):
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=1e-12))
        phi = cos_t * self.cos_m - sin_t * self.sin_m
        if self.easy_margin:
            return torch.where(cos_t > 0, phi, cos_t)
        return torch.where(cos_t > self.threshold, phi, cos_t - (1.0 - self.cos_m))


HEADS: dict[str, Callable[[HeadConfig], nn.Module]] = {
    "softmax": lambda cfg: SoftmaxHead(bias=cfg.bias),
    "cosface": lambda cfg: CosFaceHead(cfg.scale, cfg.margin),
    "arcface": lambda cfg: ArcFaceHead(cfg.scale, cfg.margin),
}


def build_head(cfg: HeadConfig) -> nn.Module:
    """The head `cfg.type` names; `forward(features, weight_rows, bias_rows, local_labels) -> logits`."""
    if cfg.type not in HEADS:
        raise ConfigError(f"head.type={cfg.type!r} is not one of {', '.join(HEADS)}")
    cfg.validate("head")
    return HEADS[cfg.type](cfg)
