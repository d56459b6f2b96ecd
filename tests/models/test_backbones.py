import pytest
import torch

from dcs_cli.config import ModelConfig
from dcs_cli.errors import ConfigError
from dcs_cli.models.backbones import available_backbones, backbone_input_kind, build_backbone


def test_registry_lists_every_backbone():
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet",
            "mlp"} <= set(available_backbones())
    assert backbone_input_kind("mlp") == "vector"
    assert backbone_input_kind("iresnet50") == "image"


@pytest.mark.parametrize("name,size", [("iresnet18", 32), ("iresnet18", 40), ("iresnet34", 32), ("iresnet50", 32),
                                       ("mobilefacenet", 32), ("mobilefacenet", 40)])
def test_image_backbones_embed_small_inputs(name, size):
    net = build_backbone(ModelConfig(backbone=name, feature_dim=24, width=4), (3, size, size))
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 24)
    # A random projection: a plain sum of batch-normalised outputs is constant and has no gradient.
    (out * torch.randn_like(out)).sum().backward()  # trains: gradients reach the stem
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_iresnet_at_insightface_size_has_the_original_shape():
    net = build_backbone(ModelConfig(backbone="iresnet18", feature_dim=512, width=64), (3, 112, 112)).eval()
    assert net.fc.in_features == 512 * 7 * 7  # 112 → 7 after four stride-2 stages
    with torch.no_grad():
        assert net(torch.randn(1, 3, 112, 112)).shape == (1, 512)
    assert not net.features.weight.requires_grad  # unit-scale embedding BN as in InsightFace


@pytest.mark.parametrize("name,blocks", [("iresnet18", 8), ("iresnet34", 16), ("iresnet50", 24),
                                         ("iresnet100", 49), ("iresnet200", 98)])
def test_iresnet_depths(name, blocks):
    from dcs_cli.models.backbones.iresnet import IBasicBlock

    net = build_backbone(ModelConfig(backbone=name, feature_dim=8, width=4), (3, 32, 32))
    assert sum(isinstance(m, IBasicBlock) for m in net.modules()) == blocks


def test_mobilefacenet_gdc_covers_the_remaining_map():
    net = build_backbone(ModelConfig(backbone="mobilefacenet", feature_dim=16, width=8), (3, 112, 112))
    assert net.gdc[0].kernel_size == (7, 7)
    net = build_backbone(ModelConfig(backbone="mobilefacenet", feature_dim=16, width=8), (3, 32, 32))
    assert net.gdc[0].kernel_size == (2, 2)


def test_mlp_embeds_vectors():
    net = build_backbone(ModelConfig(backbone="mlp", feature_dim=12, mlp_hidden=20), (7,))
    assert net(torch.randn(5, 7)).shape == (5, 12)


def test_unknown_backbone_and_wrong_input_shape_are_config_errors():
    with pytest.raises(ConfigError, match="not registered.*iresnet18"):
        build_backbone(ModelConfig(backbone="resnet9000"), (3, 32, 32))
    with pytest.raises(ConfigError, match="feature vectors"):
        build_backbone(ModelConfig(backbone="mlp"), (3, 32, 32))
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        build_backbone(ModelConfig(backbone="iresnet18"), (64,))


def test_width_is_validated():
    from dcs_cli.config import load_config

    with pytest.raises(ConfigError, match="model.width"):
        load_config(overrides=["model.width=0"])
