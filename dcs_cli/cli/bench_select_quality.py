"""`dcs bench select-quality`: the command's options; the work is
`dcs_cli.bench.select_quality.run_select_quality`.

    dcs bench select-quality --json select_quality.json
"""

from __future__ import annotations

from typing import Annotated

import typer

from dcs_cli.cli.options import JsonOpt


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("select-quality")
    def select_quality(
        classes: Annotated[int, typer.Option("--classes", help="Synthetic classes N.")] = 20_000,
        dim: Annotated[int, typer.Option("--dim", help="Feature and embedding dimension.")] = 64,
        budget: Annotated[float, typer.Option("--budget", help="sample_num as a fraction of N.")] = 0.01,
        batch: Annotated[int, typer.Option("--batch", help="Batch size (at most sample_num).")] = 100,
        steps: Annotated[int, typer.Option("--steps", help="Training steps per contender.")] = 1500,
        interval: Annotated[int, typer.Option("--interval", help="Steps between index refreshes.")] = 150,
        ntrees: Annotated[int, typer.Option("--ntrees", help="Annoy trees (hf).")] = 10,
        hnsw_ef_construction: Annotated[int, typer.Option("--hnsw-ef-construction",
                                                          help="hnswlib ef_construction (hnsw).")] = 40,
        lr: Annotated[float, typer.Option("--lr", help="Backbone learning rate (momentum 0.9).")] = 0.05,
        row_lr: Annotated[float, typer.Option(
            "--row-lr", help="Class rows' learning rate per sample: the store's LR is row_lr × batch, "
                             "because the batch-mean loss gives each row 1/batch of a sample's gradient.")] = 0.32,
        drift_threshold: Annotated[float, typer.Option(
            "--drift-threshold", help="hf+adaptive: refresh when the updated rows moved this much relative to "
                                      "the snapshot (checked every 10 steps).")] = 0.1,
        train_per_class: Annotated[int, typer.Option("--train-per-class",
                                                                help="Training samples per class.")] = 8,
        threads: Annotated[int, typer.Option("--threads", help="torch threads for the steps; 0 = torch's default. "
                                             "1 keeps a shared machine's load from distorting the ratios.")] = 1,
        store_momentum: Annotated[float, typer.Option(
            "--store-momentum",
            help="Momentum of the class store's SGD (lazy: a row's momentum decays only when selected).")] = 0.0,
        head: Annotated[str, typer.Option("--head", help="softmax, cosface or arcface.")] = "softmax",
        scale: Annotated[float, typer.Option("--scale", help="Margin heads' scale s.")] = 16.0,
        margin: Annotated[float, typer.Option("--margin", help="Margin heads' margin m.")] = 0.2,
        json: JsonOpt = None,
    ) -> None:
        """Held-out top-1 and confuser recall after equal training steps, per selection mode."""
        from dcs_cli.bench.select_quality import params_from_options, run_select_quality

        params = params_from_options(
            classes=classes, dim=dim, budget=budget, batch=batch, steps=steps, interval=interval, ntrees=ntrees,
            hnsw_ef_construction=hnsw_ef_construction, lr=lr, row_lr=row_lr, drift_threshold=drift_threshold,
            train_per_class=train_per_class, threads=threads, store_momentum=store_momentum, head=head,
            scale=scale, margin=margin)
        run_select_quality(params, json_path=json)
