"""Outputs that cannot be written are one-line errors, and before the work when a command can tell."""

import os

import pytest

from dcs_cli.cli.app import app
from dcs_cli.errors import OutputError
from dcs_cli.fsutil import check_output_file, guard_output_folder, write_json_atomic


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
