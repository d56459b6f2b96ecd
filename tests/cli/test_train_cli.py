"""`dcs train` from the command line: a run, a resume, and one-line errors before any worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcs_cli.cli.app import app
from dcs_cli.train.dist import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "synthetic.yaml")
TINY = ["--set", "data.synthetic.num_classes=100", "--set", "data.synthetic.train_per_class=4",
        "--set", "data.batch_size=32", "--set", "selection.sample_num=40", "--set", "selection.interval=4",
        "--set", "model.mlp_hidden=32", "--set", "output.print_freq=5"]


def test_train_and_resume(runner, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", CONFIG, "--mode", "random", "--out", str(out), "--set", "optim.epochs=1", *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val_top1" in result.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 12
    # a finished folder is protected; --resume continues it with more epochs
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    resumed = runner.invoke(app, ["train", "--resume", str(out), "--set", "optim.epochs=2"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 24
    assert (out / "checkpoints" / "epoch_002.pt").is_file()


def _list(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "train_list.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    (tmp_path / "images").mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize("case", ["missing_list", "label_too_big", "missing_image", "empty", "sample_num",
                                  "paramserver", "batch_of_one", "adaptive_sharded"])
def test_bad_input_is_one_line_before_workers(runner, tmp_path, case):
    out = tmp_path / "out"
    base = ["train", "--config", CONFIG, "--nproc", "2", "--out", str(out)]
    if case == "missing_list":
        extra = ["--set", "data.source=list", "--set", f"data.train_list={tmp_path / 'nope.txt'}"]
        expect = "not found"
    elif case == "label_too_big":
        lst = _list(tmp_path, ["a.jpg 0", "b.jpg 1", "c.jpg 5"])
        extra = ["--set", "data.source=list", "--set", f"data.train_list={lst}", "--set",
                 f"data.train_root={tmp_path / 'images'}", "--set", "data.num_classes=3"]
        expect = "label 5"
    elif case == "missing_image":
        lst = _list(tmp_path, ["0/a.jpg 0", "1/b.jpg 1"])
        (tmp_path / "images" / "0").mkdir()
        (tmp_path / "images" / "0" / "a.jpg").write_bytes(b"\xff\xd8\xff")
        extra = ["--set", "data.source=list", "--set", f"data.train_list={lst}", "--set",
                 f"data.train_root={tmp_path / 'images'}"]
        expect = "train_list.txt: entry 2: image"
    elif case == "empty":
        lst = _list(tmp_path, [])
        extra = ["--set", "data.source=list", "--set", f"data.train_list={lst}", "--set",
                 f"data.train_root={tmp_path / 'images'}"]
        expect = "empty"
    elif case == "sample_num":
        extra = [*TINY, "--set", "selection.sample_num=500"]
        expect = "sample_num"
    elif case == "batch_of_one":
        extra = [*TINY, "--set", "data.batch_size=1"]
        expect = "data.batch_size = 1: training needs at least 2"
    elif case == "adaptive_sharded":
        extra = [*TINY, "--set", "selection.adaptive=true"]
        expect = "selection.adaptive is not supported with the sharded class store"
    else:
        extra = [*TINY, "--set", f"paramserver.address=tcp://127.0.0.1:{free_port()}",
                 "--set", "paramserver.request_timeout=0.5"]
        expect = "paramserver"
    result = runner.invoke(app, base + extra)
    assert result.exit_code in (1, 2), result.output
    assert expect in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing started, nothing written


def test_train_needs_a_config(runner):
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and "--config" in result.output


def test_a_run_that_never_saved_can_be_started_again(runner, tmp_path):
    out = tmp_path / "run"
    # sample_num below the batch's distinct labels fails inside the first step, after the folder was made
    bad = runner.invoke(app, ["train", "--config", CONFIG, "--mode", "random", "--out", str(out),
                              "--set", "optim.epochs=1", *TINY, "--set", "selection.sample_num=5"])
    assert bad.exit_code != 0
    assert (out / "config.yaml").exists() and not (out / "checkpoints").exists()
    good = runner.invoke(app, ["train", "--config", CONFIG, "--mode", "random", "--out", str(out),
                               "--set", "optim.epochs=1", *TINY])
    assert good.exit_code == 0, good.output


def test_paramserver_address_is_checked(runner, tmp_path):
    result = runner.invoke(app, ["train", "--config", CONFIG, "--mode", "hf", "--out", str(tmp_path / "r"),
                                 "--set", "paramserver.address=foo:bar"])
    assert result.exit_code == 2
    assert "paramserver.address = 'foo:bar' is not a ZeroMQ address" in result.output


def test_a_diverged_run_stops_with_one_line_and_no_checkpoint(runner, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", CONFIG, "--mode", "full", "--out", str(out),
                                 "--set", "optim.epochs=1", "--set", "optim.lr=1e30", *TINY])
    assert result.exit_code == 1, result.output
    assert "error: training diverged at step 5 (epoch 1): the loss is nan; lower optim.lr" in result.output
    assert not (out / "checkpoints").exists() and not (out / "summary.json").exists()


def test_a_resume_on_other_data_is_refused_before_the_run_folder_changes(runner, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", CONFIG, "--mode", "hf", "--out", str(out), "--set", "optim.epochs=1", *TINY]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / "config.yaml").read_text()
    result = runner.invoke(app, ["train", "--resume", str(out), "--set", "optim.epochs=2",
                                 "--set", "data.synthetic.num_classes=120"])
    assert result.exit_code == 2, result.output
    assert "has 100 classes, the data now 120" in result.output
    assert (out / "config.yaml").read_text() == before


def test_older_checkpoints_tell_their_class_count_by_their_rows():
    import torch

    from dcs_cli.train.runner import _saved_num_classes

    assert _saved_num_classes({"num_classes": 9, "store": {"weight": torch.zeros(7, 2)}}) == 9
    assert _saved_num_classes({"classifier": None, "store": {"weight": torch.zeros(7, 2)}}) == 7  # sampled
    assert _saved_num_classes({"classifier": {"weight": torch.zeros(5, 2)}, "store": None}) == 5  # full
    assert _saved_num_classes({"classifier": None, "store": {"snapshot": "x"}}) is None  # remote: checked on load


def test_a_checkpoint_outside_its_run_folder_needs_out(runner, tmp_path):
    """Resuming continues in the checkpoint's run folder, never in whatever folder sits two levels up."""
    import shutil

    import torch

    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--config", CONFIG, "--mode", "random", "--out", str(out),
                               "--set", "optim.epochs=1", *TINY]).exit_code == 0
    (tmp_path / "mine" / "sub").mkdir(parents=True)
    (tmp_path / "mine" / "notes.md").write_text("keep me")
    copied = tmp_path / "mine" / "sub" / "ck.pt"
    shutil.copy(out / "checkpoints" / "epoch_001.pt", copied)
    result = runner.invoke(app, ["train", "--resume", str(copied), "--set", "optim.epochs=2"])
    assert result.exit_code == 2 and "not in a run folder (RUN/checkpoints/); pass --out" in result.output
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.md", "sub"]
    wider = runner.invoke(app, ["train", "--resume", str(out), "--set", "optim.epochs=2", "--set",
                                "model.mlp_hidden=64"])
    assert wider.exit_code == 2 and "model.mlp_hidden = 64 but the checkpoint" in wider.output
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "tensor.pt")])
    assert result.exit_code == 1 and "not a dcs train checkpoint (it holds a Tensor, not a dict)" in result.output


def test_adaptive_is_refused_up_front_under_the_sharded_store_and_for_modes_without_it():
    from dcs_cli.config import load_config
    from dcs_cli.errors import ConfigError
    from dcs_cli.train.runner import check_run

    sets = ["data.synthetic.num_classes=100", "data.synthetic.train_per_class=4", "selection.sample_num=40",
            "selection.adaptive=true"]
    for world in (1, 2):  # before any worker starts: random has no use for it
        with pytest.raises(ConfigError, match="selection.adaptive works with modes hf, hnsw, ivf, not random"):
            check_run(load_config(CONFIG, [*sets, "selection.mode=random"]), world)
    with pytest.raises(ConfigError, match="selection.adaptive is not supported with the sharded class store"):
        check_run(load_config(CONFIG, [*sets, "selection.mode=ivf"]), 2)
    check_run(load_config(CONFIG, [*sets, "selection.mode=ivf"]), 1)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="NCCL runs on this machine")
def test_nccl_without_a_gpu_names_the_train_setting(runner, tmp_path):
    result = runner.invoke(app, ["train", "--config", CONFIG, "--nproc", "2", "--out", str(tmp_path / "o"), *TINY,
                                 "--set", "dist.backend=nccl"])
    assert result.exit_code == 1 and "needs CUDA" in result.output and "--set dist.backend=gloo" in result.output
