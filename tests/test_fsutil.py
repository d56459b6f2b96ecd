"""Outputs: one-line errors before the work for files that cannot be written; a user's folder or a command's
inputs are never cleared by --overwrite; an output never overwrites an input."""

import os
from pathlib import Path

import pytest

from dcs_cli.cli.app import app
from dcs_cli.errors import OutputError, OutputExistsError
from dcs_cli.fsutil import check_output_file, guard_output_folder, write_json_atomic

from .conftest import REPO


def test_a_writable_path_passes_and_missing_folders_are_made(tmp_path):
    target = tmp_path / "new" / "sub" / "r.json"
    assert check_output_file(target) == target
    write_json_atomic(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temporary left beside it


def test_a_folder_in_place_of_the_file(tmp_path):
    with pytest.raises(OutputError, match="is a folder; give the name of a file"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="is a folder"):
        write_json_atomic(tmp_path, {"a": 1})


def test_a_file_where_a_folder_would_go(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match=r"plain is a file, not a folder"):
        check_output_file(tmp_path / "plain" / "deeper" / "r.json")
    with pytest.raises(OutputError, match=r"cannot create the folder .*plain.*Not a directory"):
        guard_output_folder(tmp_path / "plain" / "run", overwrite=False, marker="done")


def test_no_write_permission_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores permission bits
    with pytest.raises(OutputError, match=r"no permission to write in .*; choose another path"):
        check_output_file(tmp_path / "r.json")


@pytest.mark.parametrize("command", [
    ["bench", "verify", "--pairs", "120", "--folds", "4", "--dim", "8", "--repeat", "1"],
    ["bench", "train-quality", "--quick"],
])
def test_json_into_a_folder_fails_before_the_work(runner, tmp_path, command):
    result = runner.invoke(app, [*command, "--json", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {tmp_path} is a folder; give the name of a file to write"]


def test_verify_plot_is_checked_too(runner, tmp_path):
    (tmp_path / "plain").write_text("x")
    result = runner.invoke(app, ["verify", "--features", "f.npy", "--bin", "p.bin",
                                 "--plot", str(tmp_path / "plain" / "roc.png")])
    assert result.exit_code == 1 and "plain is a file, not a folder" in result.output


def test_overwrite_clears_only_a_folder_dcs_made(tmp_path):
    mine = guard_output_folder(tmp_path / "out", overwrite=False, marker="done")
    (mine / "done").write_text("x")
    guard_output_folder(mine, overwrite=True, marker="done")
    assert sorted(p.name for p in mine.iterdir()) == [".dcs-output"]  # cleared, and still dcs's

    users = tmp_path / "project"
    users.mkdir()
    (users / "done").write_text("the user's")
    (users / "notes.md").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"holds files dcs did not write.*empty it yourself"):
        guard_output_folder(users, overwrite=True, marker="done")
    assert sorted(p.name for p in users.iterdir()) == ["done", "notes.md"]


def test_overwrite_never_clears_a_folder_holding_an_input(tmp_path):
    out = guard_output_folder(tmp_path / "out", overwrite=False, marker="done")
    (out / "done").write_text("x")
    (out / "list.txt").write_text("0/1.jpg 0")
    with pytest.raises(OutputExistsError, match=r"list.txt, an input of this command, lies inside"):
        guard_output_folder(out, overwrite=True, marker="done", inputs=[out / "list.txt"])
    assert (out / "list.txt").exists()


def test_overwrite_never_clears_the_current_folder(tmp_path, monkeypatch):
    out = guard_output_folder(tmp_path / "out", overwrite=False, marker="done")
    (out / "done").write_text("x")
    (out / "sub").mkdir()
    monkeypatch.chdir(out)
    with pytest.raises(OutputExistsError, match=r"is the current folder or holds it"):
        guard_output_folder(Path("."), overwrite=True, marker="done")
    monkeypatch.chdir(out / "sub")
    with pytest.raises(OutputExistsError, match=r"is the current folder or holds it"):
        guard_output_folder(out, overwrite=True, marker="done")
    assert (out / "done").exists()


def test_convert_never_removes_a_leftover_holding_the_current_folder(tmp_path, monkeypatch):
    from dcs_cli.data.outfolder import PARTIAL, prepare_output

    out = prepare_output(tmp_path / "out", overwrite=False, produces=["images"])  # an interrupted convert
    (out / "images" / "0").mkdir(parents=True)
    assert (out / PARTIAL).exists()
    monkeypatch.chdir(out / "images" / "0")
    with pytest.raises(OutputExistsError, match=r"images is the current folder or holds it"):
        prepare_output(out, overwrite=True, produces=["images"])
    assert (out / "images" / "0").is_dir()


def test_train_keeps_a_users_folder_holding_a_config(runner, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text((REPO / "configs" / "synthetic.yaml").read_text())
    (project / "notes.md").write_text("keep me")
    result = runner.invoke(app, ["train", "--config", str(project / "config.yaml"), "--out", str(project)])
    assert result.exit_code == 1 and "holds files dcs did not write" in result.output
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "notes.md"]


def test_convert_overwrite_into_its_own_input_folder_keeps_the_input(runner, tmp_path, mxnet_fixtures):
    folder = tmp_path / "inplace"
    folder.mkdir()
    for name in ("train.rec", "train.idx"):
        (folder / name).write_bytes((mxnet_fixtures / name).read_bytes())
    args = ["convert", "--in-folder", str(folder), "--out-folder", str(folder)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 1 and "holds files dcs did not write" in result.output
    assert (folder / "train.rec").exists() and (folder / "train.idx").exists()


def test_verify_outputs_never_overwrite_inputs_or_each_other(runner, tmp_path):
    base = ["verify", "--features", str(tmp_path / "f.npy"), "--bin", str(tmp_path / "p.bin")]
    result = runner.invoke(app, [*base, "--json", str(tmp_path / "p.bin")])
    assert result.exit_code == 2 and "would overwrite an input" in result.output
    result = runner.invoke(app, [*base, "--json", str(tmp_path / "o"), "--plot", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--json" in result.output and "the --plot file" in result.output


def test_missing_says_what_an_input_path_is_instead():
    from dcs_cli.fsutil import missing

    here = Path(__file__)
    assert missing(here.with_name("no-such-file")) == "not found"
    assert missing(here.parent) == "is a folder, not a file"
    assert missing(here, folder=True) == "is a file, not a folder"
    if Path("/dev/null").exists():
        assert missing(Path("/dev/null")) == "is not a regular file"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_temporary_files_are_removed_by_the_next_write(tmp_path):
    from dcs_cli.data.recordio import RecordWriter
    from dcs_cli.fsutil import _host

    old = os.path.getmtime(tmp_path) - 3600
    dead, host = _dead_pid(), _host()
    stale = [tmp_path / f".train.rec.tmp-{host}-{dead}", tmp_path / f".train.idx.tmp-{host}-{dead}"]
    kept = [
        tmp_path / f".train.rec.tmp-{host}-{os.getppid()}",  # a process still running (even if untouched)
        tmp_path / f".train.rec.tmp-another-host-{dead}",  # a shared file system's other writers: not ours
        tmp_path / f".val.rec.tmp-{host}-{dead}",  # another target's: not this write's to judge
        tmp_path / f".train.rec.tmp-{host}-notapid",
    ]
    for path in stale + kept:
        path.write_bytes(b"x" * 10)
        os.utime(path, (old, old))
    fresh = tmp_path / f".train.rec.tmp-{host}-{dead + 1}"  # touched just now
    fresh.write_bytes(b"x")
    with RecordWriter(tmp_path / "train.rec") as writer:
        writer.write(0, b"payload")
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept + [fresh])
    assert (tmp_path / "train.rec").exists() and (tmp_path / "train.idx").exists()
    dead_json = tmp_path / f".meta.json.tmp-{host}-{dead}"  # every atomic output goes the same way
    dead_json.write_text("{")
    os.utime(dead_json, (old, old))
    write_json_atomic(tmp_path / "meta.json", {"a": 2})
    assert not dead_json.exists()
