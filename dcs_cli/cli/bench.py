"""`dcs bench <scenario>`: side-by-side benchmarks (see BENCHMARKS in the README).

Each scenario's command (its options) lives in `dcs_cli/cli/bench_<scenario>.py` and its work in
`dcs_cli/bench/<scenario>.py`. A scenario's command module is imported only when that scenario (or
`dcs bench --help`) is asked for, and it imports its library module, with torch, numpy and friends, only
when the command runs, so `dcs --help` and every other command start without them.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

# scenario name → command module exposing `register(bench_app)`; one line per scenario.
SCENARIOS: dict[str, str] = {
    "convert": "dcs_cli.cli.bench_convert",
    "paramserver": "dcs_cli.cli.bench_paramserver",
    "scale": "dcs_cli.cli.bench_scale",
    "select-quality": "dcs_cli.cli.bench_select_quality",
    "select-speed": "dcs_cli.cli.bench_select_speed",
    "train-quality": "dcs_cli.cli.bench_train_quality",
    "verify": "dcs_cli.cli.bench_verify",
}


class _LazyScenarios(TyperGroup):
    """Builds a scenario's command from its module on first use."""

    def list_commands(self, ctx):
        return list(SCENARIOS)

    def get_command(self, ctx, name):
        module = SCENARIOS.get(name)
        if module is None:
            return None
        scenario_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        importlib.import_module(module).register(scenario_app)
        return typer.main.get_command(scenario_app)


bench_app = typer.Typer(
    cls=_LazyScenarios,
    help="Benchmarks that compare contenders side by side in one run; prints a table, --json writes it.",
    no_args_is_help=True,
)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks that compare contenders side by side in one run; prints a table, --json writes it."""


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
