"""`dcs bench scale`: the command's options; the work is `dcs_cli.bench.scale.run_scale`.

    dcs bench scale --quick --json scale.json
    dcs bench scale --classes 10000000 --only hf --procs 2 --momentum-dtype bfloat16
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import JsonOpt


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("scale")
    def scale(
        quick: Annotated[bool, typer.Option("--quick", help="20k and 125k classes (a few minutes).")] = False,
        classes: Annotated[Optional[list[int]], typer.Option(
            "--classes", help="Class counts (repeatable); default 125k, 1M, 4M, 10M.")] = None,
        only: Annotated[Optional[list[str]], typer.Option(
            "--only", help="Contenders (repeatable): full, random, hf.")] = None,
        procs: Annotated[Optional[list[int]], typer.Option(
            "--procs", help="Process counts (repeatable); default 1 and 2.")] = None,
        dim: Annotated[int, typer.Option("--dim", help="Feature dimension d.")] = 128,
        batch: Annotated[int, typer.Option("--batch", help="Batch size per process.")] = 128,
        sample_num: Annotated[int, typer.Option("--sample-num", help="Active classes per step per process, as "
                                                "dcs train's selection.sample_num: P processes train P × this "
                                                "over all shards (random, hf).")] = 10_000,
        steps: Annotated[int, typer.Option("--steps", help="Timed steps per sampled contender.")] = 20,
        full_steps: Annotated[int, typer.Option("--full-steps", help="Timed steps for full.")] = 3,
        ntrees: Annotated[int, typer.Option("--ntrees", help="Annoy trees (hf).")] = 4,
        index_dim: Annotated[int, typer.Option("--index-dim", help="hf: PCA dimensions indexed.")] = 32,
        rerank: Annotated[int, typer.Option("--rerank", help="hf: candidates per kept neighbour.")] = 4,
        momentum_dtype: Annotated[str, typer.Option(
            "--momentum-dtype", help="Sharded store momentum: float32 or bfloat16 (halves it).")] = "float32",
        threads: Annotated[int, typer.Option("--threads", help="torch threads per process; 0 = cores / processes. "
                                             "1 keeps a shared machine's load from distorting the ratios.")] = 1,
        json: JsonOpt = None,
    ) -> None:
        """Classifier samples/s and peak RSS per class count, contender and process count."""
        from dcs_cli.bench.scale import run_scale

        params = {"dim": dim, "batch": batch, "sample_num": sample_num, "steps": steps, "full_steps": full_steps,
                  "ntrees": ntrees, "index_dim": index_dim, "rerank": rerank, "momentum_dtype": momentum_dtype,
                  "threads": threads}
        run_scale(params, classes, only, procs, json, quick=quick)
