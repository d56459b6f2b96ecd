import pytest
import torch

from dcs_cli.config import ModelConfig
from dcs_cli.errors import DataError
from dcs_cli.eval.weights import load_backbone_weights, read_checkpoint
from dcs_cli.models.backbones import build_backbone


def _net(seed=0):
    torch.manual_seed(seed)
    return build_backbone(ModelConfig(backbone="mobilefacenet", feature_dim=8, width=4), (3, 16, 16))


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_uniform_module_prefix_loads_in_strict_mode():
    src, dst = _net(0), _net(1)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    report = load_backbone_weights(dst, state, strict=True)
    assert report["stripped_prefix"] and not report["missing"] and _same_weights(src, dst)


def test_strict_refuses_extra_keys_and_lists_them():
    src, dst = _net(0), _net(1)
    state = {**src.state_dict(), "classifier.weight": torch.zeros(10, 8)}
    with pytest.raises(DataError, match=r"unexpected 1: classifier.weight.*--no-strict"):
        load_backbone_weights(dst, state, strict=True)


def test_non_strict_skips_extra_and_mismatched_keys_and_reports_missing():
    src, dst = _net(0), _net(1)
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("features.")}
    state["classifier.weight"] = torch.zeros(10, 8)  # a mixed prefix: strict would not strip it
    state["module.fc.weight"] = torch.zeros(3, 3)  # wrong shape
    report = load_backbone_weights(dst, state, strict=False)
    assert report["unexpected"] == ["classifier.weight"]
    assert report["mismatched"] == ["fc.weight"]
    assert set(report["missing"]) == {k for k in dst.state_dict() if k.startswith("features.")}
    assert torch.equal(dst.stem[0][0].weight, src.stem[0][0].weight)
    assert not torch.equal(dst.fc.weight, torch.zeros(3, 3)) and dst.fc.weight.shape == src.fc.weight.shape


def test_nothing_matching_is_an_error_even_non_strict():
    with pytest.raises(DataError, match="none of the 1 checkpoint keys"):
        load_backbone_weights(_net(), {"head.weight": torch.zeros(2)}, strict=False)


def test_read_checkpoint_variants(tmp_path):
    net = _net()
    torch.save({"backbone": net.state_dict(), "config": {"model": {"backbone": "mobilefacenet"}}}, tmp_path / "a.pt")
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    torch.save({"epoch": 3}, tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    state, cfg = read_checkpoint(tmp_path / "a.pt")
    assert cfg["model"]["backbone"] == "mobilefacenet" and set(state) == set(net.state_dict())
    state, cfg = read_checkpoint(tmp_path / "bare.pt")
    assert cfg is None and len(state) == len(net.state_dict())
    with pytest.raises(DataError, match="no 'backbone' key"):
        read_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(DataError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
