"""`dcs bench paramserver`: the command's options; the work is
`dcs_cli.bench.paramserver.run_paramserver_bench`.

    dcs bench paramserver --classes 1000000 --dim 256 --rows 10000 --steps 50 --json ps.json
"""

from __future__ import annotations

from typing import Annotated

import typer

from dcs_cli.cli.options import JsonOpt


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("paramserver")
    def paramserver(
        classes: Annotated[int, typer.Option("--classes", help="Rows in the matrix (N).")] = 1_000_000,
        dim: Annotated[int, typer.Option("--dim", help="Row length (d).")] = 256,
        rows: Annotated[int, typer.Option("--rows", help="Rows fetched and pushed per step.")] = 10_000,
        steps: Annotated[int, typer.Option("--steps", help="Timed steps per contender.")] = 50,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps before timing.")] = 3,
        threads: Annotated[int, typer.Option("--threads", help="torch intra-op threads of every process.")] = 1,
        json_path: JsonOpt = None,
    ) -> None:
        """Rows/s, payload MB/s, p50/p99 step latency of get+push: paramserver (1, 2 clients) vs in-process."""
        from dcs_cli.bench.paramserver import run_paramserver_bench

        run_paramserver_bench(classes, dim, rows, steps, warmup, threads, json_path)
