"""`dcs paramserver`: serve the class store over ZeroMQ (synchronous SGD across training processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import ConfigOpt, SetOpt


def paramserver(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    bind: Annotated[
        Optional[str],
        typer.Option(
            "--bind",
            help="ZeroMQ address to serve; loopback unless --token-file is given. Port * = any free "
            "port. Default: paramserver.bind (tcp://127.0.0.1:5570).",
            show_default=False,
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(
            "--lr",
            help="Initial learning rate of new matrices (clients usually set their own). Default: optim.lr.",
            show_default=False,
        ),
    ] = None,
    momentum: Annotated[
        Optional[float],
        typer.Option(
            "--momentum",
            help="Initial SGD momentum of new matrices. Default: optim.momentum.",
            show_default=False,
        ),
    ] = None,
    weight_decay: Annotated[
        Optional[float],
        typer.Option(
            "--weight-decay",
            help="Initial weight decay of new matrices. Default: optim.weight_decay.",
            show_default=False,
        ),
    ] = None,
    snapshot_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--snapshot-dir",
            help="Folder for snapshots (paramserver.safetensors); written on exit, on request "
            "and every --snapshot-every seconds.",
            show_default=False,
        ),
    ] = None,
    snapshot_every: Annotated[
        Optional[float],
        typer.Option(
            "--snapshot-every",
            help="Seconds between periodic snapshots; 0 = only on exit and on request.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume", help="Start from this snapshot file (its checksum is verified).", show_default=False
        ),
    ] = None,
    token_file: Annotated[
        Optional[Path],
        typer.Option(
            "--token-file",
            help="File holding a shared secret; clients must use the same one.",
            show_default=False,
        ),
    ] = None,
    cpus: Annotated[
        Optional[str],
        typer.Option(
            "--cpus",
            help="Cores to run on, like 0 or 0,2-3 (taskset notation); default: paramserver.cpus "
            "(empty = wherever the OS schedules it). A core of its own speeds up get+push.",
            show_default=False,
        ),
    ] = None,
    ready_file: Annotated[
        Optional[Path],
        typer.Option(
            "--ready-file",
            help="Write the bound address to this file once listening (for scripts).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve class rows by id with synchronous SGD across clients; SIGTERM/Ctrl-C snapshot and exit 0."""
    from dcs_cli.config import load_config
    from dcs_cli.cpus import parse_cpu_list
    from dcs_cli.paramserver.serve import serve

    options = {  # each one a config key, applied after --set (so the option wins), typed
        "paramserver.bind": bind,
        "paramserver.snapshot_dir": str(snapshot_dir) if snapshot_dir else None,
        "paramserver.snapshot_every": snapshot_every,
        "paramserver.token_file": str(token_file) if token_file else None,
        "paramserver.cpus": parse_cpu_list(cpus, "--cpus") if cpus is not None else None,
        "optim.lr": lr,
        "optim.momentum": momentum,
        "optim.weight_decay": weight_decay,
    }
    cfg = load_config(config, list(set_ or []),
                      values={key: value for key, value in options.items() if value is not None})
    raise typer.Exit(
        serve(cfg, resume=str(resume) if resume else None, ready_file=str(ready_file) if ready_file else None)
    )


def register(app: typer.Typer) -> None:
    app.command("paramserver")(paramserver)
