from pathlib import Path

import numpy as np
import pytest
import torch

from dcs_cli.config import load_config, to_dict
from dcs_cli.errors import ConfigError, OutputExistsError, UsageError
from dcs_cli.eval.extract import ExtractJob, extract
from dcs_cli.models.backbones import build_backbone


def make_checkpoint(path: Path, image_size=32, backbone="mobilefacenet"):
    cfg = load_config(overrides=[f"model.backbone={backbone}", "model.feature_dim=16", "model.width=8",
                                 f"data.image_size={image_size}", "data.workers=0"])
    torch.manual_seed(0)
    net = build_backbone(cfg.model, (3, image_size, image_size)).eval()
    torch.save({"backbone": net.state_dict(), "config": to_dict(cfg), "epoch": 1, "step": 1}, path)
    return net


def _reference(net, images, image_size, flip):
    from dcs_cli.data.images import decode_rgb, to_input_tensor

    x = torch.stack([to_input_tensor(decode_rgb(b, image_size)) for b in images])
    with torch.no_grad():
        emb = net(x)
        if flip:
            emb = emb + net(torch.flip(x, dims=[3]))
    return emb.numpy()


@pytest.mark.parametrize("flip,image_size", [(True, 32), (False, 24)])
def test_features_are_the_backbone_embeddings_in_file_order(tmp_path, pairs_bin, flip, image_size):
    from dcs_cli.data.binfile import read_bin

    net = make_checkpoint(tmp_path / "ckpt.pt", image_size=image_size)
    summary = extract(ExtractJob(checkpoint=tmp_path / "ckpt.pt", out_dir=tmp_path / "f", bins=[pairs_bin],
                                 flip=flip, batch_size=5))
    feats = np.load(tmp_path / "f" / "pairs.npy")
    images, issame = read_bin(pairs_bin)
    assert feats.dtype == np.float32 and feats.shape == (2 * issame.size, 16)
    np.testing.assert_allclose(feats, _reference(net, images, image_size, flip), rtol=1e-4, atol=1e-4)
    assert summary["targets"]["pairs"]["pairs"] == issame.size
    assert (tmp_path / "f" / "extract.json").exists()
    assert not list((tmp_path / "f").glob(".*tmp*"))  # atomic writes leave no temp files


def test_config_override_and_refusals(tmp_path, pairs_bin):
    make_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "f"
    extract(ExtractJob(checkpoint=tmp_path / "ckpt.pt", out_dir=out, bins=[pairs_bin]))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        extract(ExtractJob(checkpoint=tmp_path / "ckpt.pt", out_dir=out, bins=[pairs_bin]))
    with pytest.raises(UsageError, match="nothing to extract"):
        extract(ExtractJob(checkpoint=tmp_path / "ckpt.pt", out_dir=out))
    with pytest.raises(UsageError, match="both write pairs.npy"):
        extract(ExtractJob(checkpoint=tmp_path / "ckpt.pt", out_dir=out, bins=[pairs_bin, pairs_bin]))
    from dcs_cli.errors import DataError

    # Overriding the architecture makes the weights not fit: strict mode names the keys.
    with pytest.raises(DataError, match="do not match model.backbone"):
        extract(ExtractJob(checkpoint=tmp_path / "ckpt.pt", out_dir=out, bins=[pairs_bin], overwrite=True,
                           overrides=["model.backbone=iresnet18"]))


def test_vector_backbone_is_refused(tmp_path, pairs_bin):
    cfg = load_config(overrides=["model.backbone=mlp"])
    net = build_backbone(cfg.model, (8,))
    torch.save({"backbone": net.state_dict(), "config": to_dict(cfg)}, tmp_path / "mlp.pt")
    with pytest.raises(ConfigError, match="takes feature vectors"):
        extract(ExtractJob(checkpoint=tmp_path / "mlp.pt", out_dir=tmp_path / "f", bins=[pairs_bin]))


def test_bare_state_dict_needs_a_config(tmp_path, pairs_bin):
    net = make_checkpoint(tmp_path / "ckpt.pt")
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="carries no config"):
        extract(ExtractJob(checkpoint=tmp_path / "bare.pt", out_dir=tmp_path / "f", bins=[pairs_bin]))
    (tmp_path / "model.yaml").write_text("model: {backbone: mobilefacenet, feature_dim: 16, width: 8}\n"
                                         "data: {image_size: 32, workers: 0}\n")
    extract(ExtractJob(checkpoint=tmp_path / "bare.pt", out_dir=tmp_path / "f", bins=[pairs_bin],
                       config=tmp_path / "model.yaml"))
    assert np.load(tmp_path / "f" / "pairs.npy").shape == (24, 16)
