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
