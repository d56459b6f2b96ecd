from pathlib import Path

import numpy as np
import torch

from dcs_cli.cli.app import app
from dcs_cli.config import load_config, to_dict
from dcs_cli.models.backbones import build_backbone


def save_checkpoint(path: Path, ddp=False, classifier_in_backbone=False):
    """A randomly initialised small backbone saved like `dcs train` does (optionally from DDP)."""
    cfg = load_config(overrides=["model.backbone=iresnet18", "model.feature_dim=16", "model.width=4",
                                 "data.image_size=32", "data.workers=0"])
    torch.manual_seed(0)
    state = build_backbone(cfg.model, (3, 32, 32)).state_dict()
    if classifier_in_backbone:
        state["fc_classifier.weight"] = torch.zeros(5, 16)
    if ddp:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save({"backbone": state, "classifier": {"weight": torch.zeros(5, 16)}, "config": to_dict(cfg),
                "epoch": 1, "step": 4, "optimizer": {}, "scheduler": {}, "store": None, "rng": None}, path)
    return path


def test_extract_bin(runner, tmp_path, pairs_bin):
    ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    result = runner.invoke(app, ["extract", "--checkpoint", str(ckpt), "--bin", str(pairs_bin),
                                 "--out-dir", str(tmp_path / "feats"), "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    feats = np.load(tmp_path / "feats" / "pairs.npy")
    assert feats.shape == (24, 16) and feats.dtype == np.float32 and np.isfinite(feats).all()
    again = runner.invoke(app, ["extract", "--checkpoint", str(ckpt), "--bin", str(pairs_bin),
                                "--out-dir", str(tmp_path / "feats")])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_ddp_checkpoint_with_extra_keys_needs_no_strict(runner, tmp_path, pairs_bin):
    ckpt = save_checkpoint(tmp_path / "ddp.pt", ddp=True, classifier_in_backbone=True)
    args = ["extract", "--checkpoint", str(ckpt), "--bin", str(pairs_bin), "--out-dir", str(tmp_path / "f")]
    strict = runner.invoke(app, args)
    assert strict.exit_code == 1
    assert "unexpected" in strict.output and "fc_classifier.weight" in strict.output
    assert not (tmp_path / "f" / "pairs.npy").exists()
    loose = runner.invoke(app, args + ["--no-strict", "--no-flip"])
    assert loose.exit_code == 0, loose.output
    assert "skipped 1" in loose.output
    assert np.load(tmp_path / "f" / "pairs.npy").shape == (24, 16)


def test_ddp_prefix_alone_loads_strictly(runner, tmp_path, pairs_bin):
    ckpt = save_checkpoint(tmp_path / "ddp.pt", ddp=True)
    result = runner.invoke(app, ["extract", "--checkpoint", str(ckpt), "--bin", str(pairs_bin),
                                 "--out-dir", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output


def test_extract_list(runner, tmp_path, pairs_bin):
    from dcs_cli.data.binfile import read_bin

    images, _ = read_bin(pairs_bin)
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    lines = []
    for i, payload in enumerate(images[:5]):
        (root / "a" / f"{i}.jpg").write_bytes(payload)
        lines.append(f"a/{i}.jpg {i % 2}\n")
    (tmp_path / "mine.txt").write_text("".join(lines))
    ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    result = runner.invoke(app, ["extract", "--checkpoint", str(ckpt), "--list", str(tmp_path / "mine.txt"),
                                 "--root", str(root), "--out-dir", str(tmp_path / "f"), "--set", "data.image_size=32"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "f" / "mine.npy").shape == (5, 16)
    assert np.load(tmp_path / "f" / "mine.labels.npy").tolist() == [0, 1, 0, 1, 0]


def test_usage_errors(runner, tmp_path, pairs_bin):
    ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    nothing = runner.invoke(app, ["extract", "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "f")])
    assert nothing.exit_code == 2 and "nothing to extract" in nothing.output
    half = runner.invoke(app, ["extract", "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "f"),
                               "--list", str(tmp_path / "x.txt")])
    assert half.exit_code == 2 and "--root" in half.output
    missing = runner.invoke(app, ["extract", "--checkpoint", str(tmp_path / "nope.pt"), "--bin", str(pairs_bin),
                                  "--out-dir", str(tmp_path / "f")])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_outputs_of_earlier_runs_and_of_the_user_are_kept(runner, tmp_path, pairs_bin):
    import json
    import shutil

    ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "feats"
    base = ["extract", "--checkpoint", str(ckpt), "--out-dir", str(out)]
    shutil.copy(pairs_bin, tmp_path / "lfw.bin")
    shutil.copy(pairs_bin, tmp_path / "cfp.bin")
    assert runner.invoke(app, [*base, "--bin", str(tmp_path / "lfw.bin")]).exit_code == 0
    # a second set into the same folder keeps the first one's record
    assert runner.invoke(app, [*base, "--bin", str(tmp_path / "cfp.bin")]).exit_code == 0
    assert sorted(json.loads((out / "extract.json").read_text())["targets"]) == ["cfp", "lfw"]
    # a bad input anywhere stops the run before the first output is written
    (tmp_path / "bad.bin").write_bytes(b"not a bin")
    result = runner.invoke(app, [*base, "--bin", str(pairs_bin), "--bin", str(tmp_path / "bad.bin")])
    assert result.exit_code == 1 and not (out / "pairs.npy").exists()
    # a list's labels file is an output too: a user's file of that name is kept, a clash between inputs refused
    (out / "mine.labels.npy").write_text("the user's")
    (tmp_path / "mine.txt").write_text("a/0.jpg 0\n")
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    result = runner.invoke(app, [*base, "--list", str(tmp_path / "mine.txt"), "--root", str(tmp_path / "imgs")])
    assert result.exit_code == 1 and "mine.labels.npy exists; pass --overwrite" in result.output
    shutil.copy(pairs_bin, tmp_path / "mine.labels.bin")
    result = runner.invoke(app, [*base, "--bin", str(tmp_path / "mine.labels.bin"), "--list",
                                 str(tmp_path / "mine.txt"), "--root", str(tmp_path / "imgs")])
    assert result.exit_code == 2 and "two inputs would both write mine.labels.npy" in result.output


def test_a_bad_image_is_one_line_and_earlier_targets_stay_recorded(runner, tmp_path, pairs_bin):
    import json

    from dcs_cli.data.binfile import read_bin

    ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "feats"
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "0.jpg").write_bytes(read_bin(pairs_bin)[0][0])
    (root / "1.jpg").write_bytes(b"not an image")
    (tmp_path / "mine.txt").write_text("0.jpg 0\n1.jpg 1\n")
    (tmp_path / "gone.txt").write_text("0.jpg 0\nmissing.jpg 1\n")
    base = ["extract", "--checkpoint", str(ckpt), "--out-dir", str(out), "--set", "data.workers=1"]
    # a listed image that is not there: found before any output is written
    result = runner.invoke(app, [*base, "--bin", str(pairs_bin), "--list", str(tmp_path / "gone.txt"),
                                 "--root", str(root)])
    assert result.exit_code == 1 and "gone.txt: entry 2: image" in result.output and "missing.jpg" in result.output
    assert not out.exists() or not list(out.iterdir())
    # one that does not decode: one line from the worker, the target before it written and recorded
    result = runner.invoke(app, [*base, "--bin", str(pairs_bin), "--list", str(tmp_path / "mine.txt"),
                                 "--root", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "1.jpg" in result.output
    assert len(result.output.strip().splitlines()) <= 3, result.output  # the info lines and the error
    assert json.loads((out / "extract.json").read_text())["targets"].keys() == {"pairs"}
    assert (out / "pairs.npy").exists() and not (out / "mine.npy").exists()


def test_a_run_folder_means_its_newest_checkpoint_and_wrong_kinds_are_named(runner, tmp_path, pairs_bin):
    import json

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "epoch_001.pt")
    newest = save_checkpoint(run / "checkpoints" / "epoch_002.pt")
    result = runner.invoke(app, ["extract", "--checkpoint", str(run), "--bin", str(pairs_bin),
                                 "--out-dir", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f" / "extract.json").read_text())["checkpoint"] == str(newest)
    folder_bin = runner.invoke(app, ["extract", "--checkpoint", str(newest), "--bin", str(tmp_path),
                                     "--out-dir", str(tmp_path / "g")])
    assert folder_bin.exit_code == 1 and "is a folder, not a file; pass a .bin file to --bin" in folder_bin.output


def test_overwrite_with_another_checkpoint_removes_the_files_of_the_record_it_drops(runner, tmp_path, pairs_bin):
    import json
    import shutil

    from dcs_cli.data.binfile import read_bin

    root = tmp_path / "imgs"
    root.mkdir()
    (root / "0.jpg").write_bytes(read_bin(pairs_bin)[0][0])
    (tmp_path / "mine.txt").write_text("0.jpg 0\n")
    shutil.copy(pairs_bin, tmp_path / "lfw.bin")
    shutil.copy(pairs_bin, tmp_path / "cfp.bin")
    out = tmp_path / "feats"
    first = save_checkpoint(tmp_path / "a.pt")
    result = runner.invoke(app, ["extract", "--checkpoint", str(first), "--out-dir", str(out), "--bin",
                                 str(tmp_path / "lfw.bin"), "--bin", str(tmp_path / "cfp.bin"),
                                 "--list", str(tmp_path / "mine.txt"), "--root", str(root)])
    assert result.exit_code == 0, result.output
    (out / "users.npy").write_bytes(b"not dcs's")  # not in the record: never touched
    second = save_checkpoint(tmp_path / "b.pt")
    result = runner.invoke(app, ["extract", "--checkpoint", str(second), "--out-dir", str(out), "--bin",
                                 str(tmp_path / "lfw.bin"), "--overwrite"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "extract.json").read_text())
    assert record["checkpoint"] == str(second) and list(record["targets"]) == ["lfw"]
    assert sorted(p.name for p in out.iterdir()) == ["extract.json", "lfw.npy", "users.npy"]
