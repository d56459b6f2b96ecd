"""`dcs bench verify`: the command's options; the work is `dcs_cli.bench.verify.run_bench`.

    dcs bench verify --pairs 6000 --folds 10 --json bench_verify.json
"""

from __future__ import annotations

from typing import Annotated

import typer

from dcs_cli.cli.options import JsonOpt, seed_value


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("verify")
    def verify_bench(
        pairs: Annotated[int, typer.Option(help="Number of pairs (2 feature rows each).")] = 6000,
        folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 10,
        dim: Annotated[int, typer.Option(help="Feature dimension.")] = 256,
        seed: Annotated[int, typer.Option(help="Seed of the random features.", callback=seed_value)] = 0,
        repeat: Annotated[int, typer.Option(help="Timed repetitions of every contender (the best counts).")] = 5,
        json: JsonOpt = None,
    ) -> None:
        """dcs verify's vectorised protocol vs a per-threshold loop: seconds and proof of identical figures."""
        from dcs_cli.bench.verify import run_bench

        result = run_bench(pairs, folds, dim, seed, repeat, json)
        if any(row["identical_to_loop"] is False for row in result["rows"]):  # (the loop's own row: None)
            raise typer.Exit(1)
