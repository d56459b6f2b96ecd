"""`dcs bench select-speed`: the command's options; the work is `dcs_cli.bench.select_speed.run_select_speed`.

    dcs bench select-speed --quick --json select_speed.json
    dcs bench select-speed --quick --sweep --json sweep.json
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import JsonOpt


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("select-speed")
    def select_speed(
        quick: Annotated[bool, typer.Option("--quick", help="N=100k instead of 1M (about 2 minutes).")] = False,
        classes: Annotated[Optional[int], typer.Option("--classes", help="Classes N (default 1,000,000).")] = None,
        dim: Annotated[int, typer.Option("--dim", help="Feature dimension d.")] = 256,
        batch: Annotated[int, typer.Option("--batch", help="Batch size B.")] = 256,
        sample_num: Annotated[int, typer.Option("--sample-num", help="Active classes per step.")] = 10_000,
        interval: Annotated[int, typer.Option("--interval", help="Steps between index refreshes.")] = 100,
        steps: Annotated[int, typer.Option("--steps", help="Steps per sampled contender "
                                           "(hf/hnsw run at least interval+1).")] = 30,
        full_steps: Annotated[int, typer.Option("--full-steps", help="Steps for full and exact "
                                                "(a full step at N=1M takes seconds).")] = 3,
        ntrees: Annotated[int, typer.Option("--ntrees", help="Annoy trees (hf).")] = 4,
        hnsw_m: Annotated[int, typer.Option("--hnsw-m", help="hnswlib M.")] = 12,
        hnsw_ef_construction: Annotated[int, typer.Option(
            "--hnsw-ef-construction", help="hnswlib ef_construction of the hnsw contender.")] = 40,
        hnsw_ef: Annotated[int, typer.Option("--hnsw-ef", help="hnswlib ef at query time.")] = 64,
        index_dim: Annotated[int, typer.Option("--index-dim", help="hf/hnsw: PCA dimensions the index holds "
                                               "(0 = full rows); selection.index_dim.")] = 32,
        rerank: Annotated[int, typer.Option("--rerank", help="hf/hnsw: candidates per kept neighbour, "
                                            "re-scored exactly; selection.rerank.")] = 4,
        ivf_lists: Annotated[int, typer.Option("--ivf-lists", help="ivf: inverted lists (k-means "
                                               "centroids); 0 = one per 100 rows; selection.ivf_lists.")] = 0,
        ivf_nprobe: Annotated[int, typer.Option("--ivf-nprobe", help="ivf: lists each sample probes; "
                                                "selection.ivf_nprobe.")] = 4,
        sweep: Annotated[bool, typer.Option("--sweep", help="Recall vs speed: full, then hf, hnsw and ivf at "
                                            "four or more settings each (--only keeps those kinds).")] = False,
        hnsw_rebuild_fraction: Annotated[float, typer.Option(
            "--hnsw-rebuild-fraction", help="hnsw: fresh build when more than this share of rows changed.")] = 0.25,
        refresh: Annotated[str, typer.Option("--refresh", help="sync: refreshes run in the step and are timed "
                                             "alone; background: in a thread beside the steps.")] = "sync",
        only: Annotated[Optional[list[str]], typer.Option(
            "--only", help="Run only these contenders (repeatable): full, random, exact, hf, hnsw, ivf.")] = None,
        threads: Annotated[int, typer.Option("--threads", help="torch threads for the steps; 0 = torch's default. "
                                             "1 keeps a shared machine's load from distorting the ratios.")] = 1,
        json: JsonOpt = None,
    ) -> None:
        """Seconds per classifier step (fwd+bwd+update) and amortized refresh cost, per selection mode."""
        from dcs_cli.bench.select_speed import run_select_speed, sweep_settings

        n = classes if classes is not None else (100_000 if quick else 1_000_000)
        params = {"classes": n, "dim": dim, "batch": batch, "sample_num": sample_num, "interval": interval,
                  "steps": steps, "full_steps": full_steps, "ntrees": ntrees, "hnsw_m": hnsw_m,
                  "hnsw_ef_construction": hnsw_ef_construction, "hnsw_ef": hnsw_ef, "threads": threads,
                  "index_dim": index_dim, "rerank": rerank, "hnsw_rebuild_fraction": hnsw_rebuild_fraction,
                  "refresh": refresh, "ivf_lists": ivf_lists, "ivf_nprobe": ivf_nprobe}
        run_select_speed(params, only, json, sweep=sweep_settings(only) if sweep else None)
