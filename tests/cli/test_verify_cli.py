import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dcs_cli.cli.app import app
from dcs_cli.config import load_config, to_dict
from dcs_cli.models.backbones import build_backbone


def _extract(runner, tmp_path, bin_path) -> Path:
    cfg = load_config(overrides=["model.backbone=mobilefacenet", "model.feature_dim=16", "model.width=8",
                                 "data.image_size=32", "data.workers=0"])
    torch.manual_seed(0)
    net = build_backbone(cfg.model, (3, 32, 32))
    torch.save({"backbone": net.state_dict(), "config": to_dict(cfg)}, tmp_path / "ckpt.pt")
    result = runner.invoke(app, ["extract", "--checkpoint", str(tmp_path / "ckpt.pt"), "--bin", str(bin_path),
                                 "--out-dir", str(tmp_path / "feats")])
    assert result.exit_code == 0, result.output
    return tmp_path / "feats" / f"{bin_path.stem}.npy"


def test_fixture_extracts_and_verifies_end_to_end(runner, tmp_path, pairs_bin):
    features = _extract(runner, tmp_path, pairs_bin)
    result = runner.invoke(app, ["verify", "--features", str(features), "--bin", str(pairs_bin), "--folds", "3",
                                 "--plot", str(tmp_path / "roc.png"), "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "pairs" in result.output
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "out.json").read_text())
    target = report["targets"]["pairs"]
    assert target["pairs"] == 12 and len(target["fold_accuracy"]) == 3
    assert 0.0 <= target["accuracy"] <= 1.0 and set(target["tar_at_far"]) == {"0.0001", "0.001", "0.01"}


def test_directory_mode_matches_names(runner, tmp_path, pairs_bin):
    features = _extract(runner, tmp_path, pairs_bin)
    bins = tmp_path / "bins"
    bins.mkdir()
    shutil.copy(pairs_bin, bins / "pairs.bin")
    shutil.copy(pairs_bin, bins / "agedb_30.bin")  # no features for it: not a target
    np.save(features.parent / "lfw.npy", np.ones((4, 3), dtype=np.float32))  # no .bin for it: not a target
    result = runner.invoke(app, ["verify", "--features-dir", str(features.parent), "--bin-dir", str(bins),
                                 "--folds", "2", "--json", str(tmp_path / "all.json")])
    assert result.exit_code == 0, result.output
    assert list(json.loads((tmp_path / "all.json").read_text())["targets"]) == ["pairs"]
    assert "lfw.npy not verified: no .bin of the same name" in result.output  # said, not silently dropped
    none = runner.invoke(app, ["verify", "--features-dir", str(tmp_path), "--bin-dir", str(bins)])
    assert none.exit_code == 1 and "matching" in none.output


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.parametrize("array,needle", [
    (np.zeros((10, 4), dtype=np.float32), "feature rows"),
    (np.zeros(24, dtype=np.float32), "2-D array"),
    (np.full((24, 4), np.inf, dtype=np.float32), "NaN or inf"),
    (np.zeros((24, 4)).astype(str), "are not real numbers"),
    (np.zeros((24, 0), dtype=np.float32), "0 columns"),
])
def test_mismatched_features_are_one_line_errors(runner, tmp_path, pairs_bin, array, needle):
    np.save(tmp_path / "f.npy", array)
    result = runner.invoke(app, ["verify", "--features", str(tmp_path / "f.npy"), "--bin", str(pairs_bin)])
    assert needle in _one_error_line(result)


def test_bin_without_pairs_and_option_mixups(runner, tmp_path, pairs_bin):
    with open(tmp_path / "empty.bin", "wb") as fh:
        pickle.dump(([], []), fh, protocol=2)
    np.save(tmp_path / "f.npy", np.zeros((4, 4), dtype=np.float32))
    result = runner.invoke(app, ["verify", "--features", str(tmp_path / "f.npy"), "--bin", str(tmp_path / "empty.bin")])
    assert "no pairs" in _one_error_line(result)
    both = runner.invoke(app, ["verify", "--features", "a.npy", "--bin", "a.bin", "--bin-dir", "b"])
    assert both.exit_code == 2
    alone = runner.invoke(app, ["verify", "--features", "a.npy"])
    assert alone.exit_code == 2


def test_a_text_file_as_features_is_named_as_not_npy(runner, tmp_path, pairs_bin):
    text = tmp_path / "lfw.npy"
    text.write_text("these are not features\n")
    result = runner.invoke(app, ["verify", "--features", str(text), "--bin", str(pairs_bin)])
    assert result.exit_code == 1
    assert "not a .npy file" in result.output and "pickled" not in result.output


@pytest.mark.parametrize("value,kind", [(True, "same-identity"), (False, "different-identity")])
def test_a_bin_of_one_kind_of_pair_is_a_one_line_error(runner, tmp_path, value, kind):
    from dcs_cli.data.binfile import write_bin

    write_bin(tmp_path / "one.bin", [b"x"] * 40, [value] * 20)
    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32))
    result = runner.invoke(app, ["verify", "--features", str(tmp_path / "f.npy"), "--bin", str(tmp_path / "one.bin"),
                                 "--folds", "2"])
    line = _one_error_line(result)
    assert "one.bin" in line and f"all 20 pairs are {kind} pairs" in line and "needs both" in line


def test_directory_mode_names_features_its_extract_json_does_not_record(runner, tmp_path, pairs_bin):
    features = _extract(runner, tmp_path, pairs_bin)
    bins = tmp_path / "bins"
    bins.mkdir()
    shutil.copy(pairs_bin, bins / "pairs.bin")
    shutil.copy(pairs_bin, bins / "lfw.bin")
    args = ["verify", "--features-dir", str(features.parent), "--bin-dir", str(bins), "--folds", "2"]
    recorded = runner.invoke(app, args)
    assert recorded.exit_code == 0 and "not recorded" not in recorded.output, recorded.output
    shutil.copy(features, features.parent / "lfw.npy")  # e.g. left by an earlier checkpoint's extraction
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "lfw.npy not recorded in its extract.json" in " ".join(result.output.split())
