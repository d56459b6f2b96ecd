"""`dcs bench <scenario>`: side-by-side benchmarks (see BENCHMARKS in the README)."""

from __future__ import annotations

import importlib

import typer

# One line per scenario module; each exposes `register(bench_app)`.
SCENARIOS: list[str] = [
    "dcs_cli.bench.verify",
    "dcs_cli.bench.convert",
    "dcs_cli.bench.select_speed",
    "dcs_cli.bench.select_quality",
    "dcs_cli.bench.paramserver",
]

bench_app = typer.Typer(
    help="Benchmarks that compare contenders side by side in one run; prints a table, --json writes it.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    for module in SCENARIOS:
        importlib.import_module(module).register(bench_app)
    if SCENARIOS:
        app.add_typer(bench_app, name="bench")
