"""`python -m dcs_cli.paramserver [OPTIONS]`: the `dcs paramserver` command on its own.

`start_background` launches this entry so a server starts fast and does not depend on every other
command of the `dcs` app importing cleanly. Options are exactly those of `dcs paramserver`.
An entry point, not library code: it runs the CLI command itself, so the options are defined once.
"""

from __future__ import annotations

import sys

import typer

from dcs_cli.cli.paramserver import register
from dcs_cli.console import error_line
from dcs_cli.errors import DcsError


def main() -> None:
    app = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    register(app)
    try:
        app(prog_name="dcs paramserver")
    except DcsError as exc:
        error_line(str(exc))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
