"""IR-ResNet (InsightFace's `iresnet18/34/50`): `net = build_backbone(cfg, (3, 112, 112)); emb = net(images)`.

    >>> from dcs_cli.models.backbones import build_backbone
    >>> from dcs_cli.models.config import ModelConfig
    >>> cfg = ModelConfig(backbone="iresnet18", feature_dim=64, width=8)   # width 64: the InsightFace nets
    >>> net = build_backbone(cfg, (3, 32, 32)).eval()                      # 32×32 demo images; 112×112 faces
    >>> tuple(net(torch.zeros(2, 3, 32, 32)).shape)
    (2, 64)

Shape of the ArcFace backbones: a 3×3 stem at full resolution, four stages of BN-Conv-BN-PReLU-Conv-BN
residual blocks each halving the resolution, then BN → dropout → FC → BN to `feature_dim`. The FC input
size is computed from the input shape, so the same nets accept 112×112 faces or 32×32 demo images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dcs_cli.models.backbones import register_backbone

if TYPE_CHECKING:  # the config package imports model sections at load time
    from dcs_cli.models.config import ModelConfig

_LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
           "iresnet100": (3, 13, 30, 3), "iresnet200": (6, 26, 60, 6)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _downsampled(size: int) -> int:
    """Output size of a 3×3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class IBasicBlock(nn.Module):
    """Pre-activation-style IR block: `y = block(x)` with BN-Conv-BN-PReLU-Conv(stride)-BN plus a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IR-ResNet embedding net: `IResNet((2, 2, 2, 2), (3, 112, 112), feature_dim=256)(x)` → (B, 256)."""

    def __init__(self, layers: tuple[int, ...], input_shape: tuple[int, int, int], feature_dim: int,
                 dropout: float = 0.0, width: int = 64):
        super().__init__()
        channels, height, width_px = input_shape
        widths = [width, width * 2, width * 4, width * 8]
        self.conv1 = _conv3x3(channels, width)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        stages = []
        cin = width
        for cout, blocks in zip(widths, layers, strict=True):
            stage = [IBasicBlock(cin, cout, stride=2)] + [IBasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
            height, width_px = _downsampled(height), _downsampled(width_px)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * height * width_px, feature_dim)
        self.features = nn.BatchNorm1d(feature_dim, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The embedding BN keeps unit scale, as in InsightFace: only its shift and statistics adapt.
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def _factory(name: str):
    def build(cfg: ModelConfig, input_shape: tuple) -> nn.Module:
        return IResNet(_LAYERS[name], input_shape, cfg.feature_dim, cfg.dropout, cfg.width)

    build.__name__ = name
    return register_backbone(name)(build)


for _name in _LAYERS:
    _factory(_name)
