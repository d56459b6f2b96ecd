"""MobileFaceNet (Chen et al. 2018, InsightFace variant): `net = build_backbone(cfg, (3, 112, 112))`.

    >>> from dcs_cli.models.backbones import build_backbone
    >>> from dcs_cli.models.config import ModelConfig
    >>> net = build_backbone(ModelConfig(backbone="mobilefacenet", feature_dim=32, width=8), (3, 16, 16))
    >>> tuple(net.eval()(torch.zeros(2, 3, 16, 16)).shape)
    (2, 32)

Depthwise-separable inverted-residual stages (64→64→128→128 channels at width 64) down to 1/16 of the
input, a 1×1 conv to 512, then a global depthwise conv (GDC) whose kernel covers the whole remaining
feature map, a linear layer and BN to `feature_dim`. The GDC kernel is computed from the input shape, so
112×112 and small demo inputs both work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dcs_cli.models.backbones import register_backbone

if TYPE_CHECKING:  # the config package imports model sections at load time
    from dcs_cli.models.config import ModelConfig


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class DepthWise(nn.Module):
    """Inverted bottleneck `y = block(x)`: 1×1 expand → 3×3 depthwise (stride) → 1×1 linear project (+x)."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """Small face-embedding net: `MobileFaceNet((3, 112, 112), feature_dim=256)(x)` → (B, 256)."""

    BLOCKS = (4, 6, 2)

    def __init__(self, input_shape: tuple[int, int, int], feature_dim: int, dropout: float = 0.0, width: int = 64):
        super().__init__()
        channels, height, width_px = input_shape
        w1, w2 = width, width * 2

        def down(size: int) -> int:
            return (size - 1) // 2 + 1

        self.stem = nn.Sequential(_conv_bn(channels, w1, 3, stride=2), _conv_bn(w1, w1, 3, groups=w1))
        stages: list[nn.Module] = [DepthWise(w1, w1, 2 * w1, stride=2)]
        stages += [DepthWise(w1, w1, 2 * w1) for _ in range(self.BLOCKS[0])]
        stages += [DepthWise(w1, w2, 4 * w1, stride=2)]
        stages += [DepthWise(w2, w2, 2 * w2) for _ in range(self.BLOCKS[1])]
        stages += [DepthWise(w2, w2, 4 * w2, stride=2)]
        stages += [DepthWise(w2, w2, 2 * w2) for _ in range(self.BLOCKS[2])]
        self.stages = nn.Sequential(*stages)
        for _ in range(4):  # stem stride 2 + three stride-2 stages
            height, width_px = down(height), down(width_px)
        sep = width * 8
        self.conv_sep = _conv_bn(w2, sep, 1)
        # Global depthwise conv: one weight per position and channel instead of average pooling.
        self.gdc = nn.Sequential(nn.Conv2d(sep, sep, (height, width_px), groups=sep, bias=False), nn.BatchNorm2d(sep))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(sep, feature_dim, bias=False)
        self.features = nn.BatchNorm1d(feature_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_sep(self.stages(self.stem(x)))
        x = torch.flatten(self.gdc(x), 1)
        return self.features(self.fc(self.dropout(x)))


@register_backbone("mobilefacenet")
def mobilefacenet(cfg: ModelConfig, input_shape: tuple) -> nn.Module:
    return MobileFaceNet(input_shape, cfg.feature_dim, cfg.dropout, cfg.width)
