"""The `dcs` console entry: global options, command registration and error mapping.

Commands live one per module in this package and expose `register(app)` (the `dcs bench` scenarios one per
`bench_*.py`, registered by `bench.py`); a command parses its options, loads the config and makes one call
into library code. A `DcsError` becomes one red line and its exit code; `--verbose` shows the traceback too;
a command-line mistake (unknown option, missing or ill-typed value) is one line too, exit code 2; so is a
full (or read-only) disk under a running command, exit code 1 (outputs are atomic: nothing half-written stays).
"""

from __future__ import annotations

import errno
import importlib
import traceback
from typing import Annotated

import typer
from typer.core import TyperGroup

from dcs_cli import __version__
from dcs_cli.console import console, error_line, is_verbose, set_quiet, set_verbose
from dcs_cli.errors import DcsError

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as _cli_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as _cli_errors
CommandLineError = _cli_errors.UsageError
NoArgsIsHelp = getattr(_cli_errors, "NoArgsIsHelpError", ())  # `dcs bench` alone: the help, not an error

# One line per command module; a module registers only commands that work.
COMMANDS = [
    "dcs_cli.cli.convert",
    "dcs_cli.cli.bench",
    "dcs_cli.cli.demo",
    "dcs_cli.cli.paramserver",
    "dcs_cli.cli.extract",
    "dcs_cli.cli.verify",
    "dcs_cli.cli.check_dist",
    "dcs_cli.cli.train",
]


# The storage ran out or went read-only under a running command: the user's to fix, not a bug
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _usage_exit(exc) -> None:
    """A command-line mistake as one line (exit code 2); a group called alone shows its help instead."""
    if isinstance(exc, NoArgsIsHelp):
        if exc.format_message().strip():  # (typer's rich help prints itself and leaves it empty)
            exc.show()
        raise typer.Exit(exc.exit_code) from None
    where = exc.ctx.command_path if exc.ctx is not None else "dcs"
    error_line(f"{exc.format_message().rstrip('.')}; see {where} --help")
    raise typer.Exit(exc.exit_code) from None


class DcsGroup(TyperGroup):
    """Maps user errors to one-line messages and exit codes instead of tracebacks."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except CommandLineError as exc:  # the group's own options (`dcs --bogus`), before any command runs
            _usage_exit(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DcsError as exc:
            if is_verbose():
                console.print(traceback.format_exc(), markup=False)
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except CommandLineError as exc:  # a subcommand's unknown option, missing or ill-typed value
            _usage_exit(exc)
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:  # anything else is a bug to see whole
                raise
            if is_verbose():
                console.print(traceback.format_exc(), markup=False)
            where = f"{exc.filename}: " if exc.filename else "writing an output: "
            todo = ("choose an output path on a writable file system" if exc.errno == errno.EROFS else
                    "free space (or quota) on the output's file system, or choose another output path")
            error_line(f"{where}{exc.strerror}; {todo}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=DcsGroup,
    name="dcs",
    help="Train classifiers over millions of classes with dynamic class selection (HF-Softmax).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dcs {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks with errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info lines.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    set_verbose(verbose)
    set_quiet(quiet)


for _module in COMMANDS:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()
