"""MLP backbone for feature-level data (synthetic classes, precomputed embeddings):
`net = build_backbone(cfg, (dim,)); emb = net(vectors)`.

    >>> from dcs_cli.models.backbones import build_backbone
    >>> from dcs_cli.models.config import ModelConfig
    >>> net = build_backbone(ModelConfig(backbone="mlp", mlp_hidden=32, feature_dim=16), (64,)).eval()
    >>> tuple(net(torch.zeros(5, 64)).shape)
    (5, 16)

Linear → BN → PReLU → dropout → Linear → BN: enough capacity to re-embed fixed features, cheap enough
that selection dominates the step time in the benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dcs_cli.models.backbones import register_backbone

if TYPE_CHECKING:  # the config package imports model sections at load time
    from dcs_cli.models.config import ModelConfig


class MLP(nn.Module):
    """Two-layer embedding MLP: `MLP(64, hidden=256, feature_dim=128)(x)` → (B, 128)."""

    def __init__(self, dim: int, hidden: int, feature_dim: int, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.PReLU(hidden),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_backbone("mlp", input_kind="vector")
def mlp(cfg: ModelConfig, input_shape: tuple) -> nn.Module:
    return MLP(input_shape[0], cfg.mlp_hidden, cfg.feature_dim, cfg.dropout)
