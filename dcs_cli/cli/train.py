"""`dcs train`: full softmax or a sampled mode, one process or one worker per device.

    dcs train --config configs/synthetic.yaml --mode hf --out runs/hf
    dcs train --resume runs/hf --set optim.epochs=10

The work is `dcs_cli.train.runner`: `resolve_config` (the typed options here override the config's keys
named in their help), then `run_train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import ConfigOpt, OverwriteOpt, SetOpt
from dcs_cli.console import print_table


def train_command(
    config: ConfigOpt = None,
    mode: Annotated[
        Optional[str],
        typer.Option("--mode", help="full | hf | ivf | hnsw | random | exact (overrides selection.mode).",
                     show_default=False),
    ] = None,
    overrides: SetOpt = None,
    resume: Annotated[
        Optional[Path],
        typer.Option("--resume", help="Continue from a checkpoint (file, or a run folder → its newest).",
                     show_default=False),
    ] = None,
    nproc: Annotated[
        Optional[int], typer.Option("--nproc", help="Workers on this node, one per device (dist.nproc); the class rows "
                                    "are then sharded across them (dist.class_store).", min=1,
                                    show_default=False)
    ] = None,
    nnodes: Annotated[Optional[int], typer.Option("--nnodes", help="Number of nodes (dist.nnodes).", min=1,
                                                  show_default=False)] = None,
    node_rank: Annotated[Optional[int], typer.Option("--node-rank", help="Rank of this node (dist.node_rank).",
                                                     min=0, show_default=False)] = None,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Address of node 0 (dist.master_addr).",
                                                       show_default=False)] = None,
    master_port: Annotated[Optional[int], typer.Option(
        "--master-port", help="Rendezvous port on node 0; 0 = a free one, one node only (dist.master_port).",
        min=0, max=65535, show_default=False)] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "--out-folder", "-o", help="Run folder (output.dir).",
                                     show_default=False)
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a backbone and classifier; writes config.yaml, metrics.jsonl, curves.png and checkpoints."""
    from dcs_cli.train.runner import resolve_config, run_train

    settings = {"selection.mode": mode, "dist.nproc": nproc, "dist.nnodes": nnodes, "dist.node_rank": node_rank,
                "dist.master_addr": master_addr, "dist.master_port": master_port,
                "output.dir": str(out) if out is not None else None}
    cfg, state = resolve_config(config, overrides or [], str(resume) if resume else None, settings)
    summary = run_train(cfg, resume=state, overwrite=overwrite)
    if summary.get("steps") is not None:
        rows = [{"figure": k, "value": v} for k, v in summary.items() if k != "stopped" and v is not None]
        print_table("dcs train", rows)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
