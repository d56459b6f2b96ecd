import pytest

from dcs_cli import __version__
from dcs_cli.cli.app import app


def test_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "--verbose" in result.output and "--quiet" in result.output


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"dcs {__version__}"


def test_unknown_command_is_a_usage_error(runner):
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_bench_lists_every_scenario(runner):
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for name in ("convert", "paramserver", "select-quality", "select-speed", "verify"):
        assert name in result.output
        scenario = runner.invoke(app, ["bench", name, "--help"])  # no shell-completion options, as dcs itself
        assert scenario.exit_code == 0 and "completion" not in scenario.output, name


def test_cli_starts_without_torch():
    """`dcs --help` must stay fast: command modules import their heavy libraries only when they run."""
    import subprocess
    import sys

    code = "import sys, dcs_cli.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_command_line_mistakes_are_one_line(runner):
    result = runner.invoke(app, ["convert", "--bogus"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: No such option: --bogus; see dcs convert --help"]
    result = runner.invoke(app, ["--bogus"])  # a global option: parsed before any command
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: No such option: --bogus") and line.endswith("; see dcs --help")
    result = runner.invoke(app, ["check-dist", "--nproc", "0"])
    assert result.exit_code == 2 and result.output.startswith("error: Invalid value for '--nproc'")


def test_a_group_alone_shows_its_help_not_an_error(runner):
    result = runner.invoke(app, ["bench"])
    assert "train-quality" in result.output and "error:" not in result.output


@pytest.mark.parametrize("code,one_line", [  # ENOSPC, EROFS: the user's to fix; EIO: a fault, shown whole
    (28, "writing an output: No space left on device; free space (or quota) on the output's file system"),
    (30, "writing an output: Read-only file system; choose an output path on a writable file system"),
    (5, None)])
def test_a_full_disk_is_one_line_and_leaves_no_finished_output(runner, mxnet_fixtures, tmp_path, monkeypatch,
                                                               code, one_line):
    import os

    from dcs_cli.data import bin_images, convert

    def failing(path, payload, dir_fd=None):
        raise OSError(code, os.strerror(code))

    for module in (convert, bin_images):  # where the image writers are called
        monkeypatch.setattr(module, "write_file", failing)
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert", "--in-folder", str(mxnet_fixtures), "--out-folder", str(out)])
    assert not (out / "meta.json").exists()
    if one_line:
        assert result.exit_code == 1 and one_line in " ".join(result.output.split()), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    else:
        assert isinstance(result.exception, OSError) and result.exception.errno == code, result.output
