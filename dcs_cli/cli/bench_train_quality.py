"""`dcs bench train-quality`: the command's options; the work is
`dcs_cli.bench.train_quality.run_train_quality`.

    dcs bench train-quality --quick --json train_quality.json
"""

from __future__ import annotations

from typing import Annotated

import typer

from dcs_cli.cli.options import JsonOpt, SetOpt, seed_value


def register(app: typer.Typer) -> None:
    @app.command("train-quality")
    def train_quality(
        quick: Annotated[bool, typer.Option("--quick", help="1,000 identities, 3 epochs (about 4 minutes).")] = False,
        identities: Annotated[int, typer.Option(help="Training identities (classes); 0 = the size's default.")] = 0,
        sample_num: Annotated[int, typer.Option(help="Active classes per step; 0 = 5% of the identities.")] = 0,
        epochs: Annotated[int, typer.Option(help="Training epochs; 0 = the size's default.")] = 0,
        mode: Annotated[list[str], typer.Option(help="Modes to run (repeatable); default: all.")] = None,
        head: Annotated[list[str], typer.Option(help="Heads to run (repeatable); default: softmax, cosface.")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the data, the initialisation and the data order.",
                                                     callback=seed_value)] = 0,
        runs: Annotated[int, typer.Option(help="Trainings per contender (training seeds seed, seed+1, ...); "
                                               "rows report the mean and the spread.")] = 1,
        overrides: SetOpt = None,
        json: JsonOpt = None,
    ) -> None:
        """Val top-1 and held-out verification of full, hf, ivf, hnsw, random and exact, through dcs train."""
        from dcs_cli.bench.train_quality import TrainQualitySpec, run_train_quality

        spec = TrainQualitySpec.from_options(quick=quick, identities=identities, sample_num=sample_num,
                                             epochs=epochs, modes=mode, heads=head, seed=seed, runs=runs,
                                             overrides=overrides)
        run_train_quality(spec, json)
