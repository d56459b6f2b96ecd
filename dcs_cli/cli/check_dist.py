"""`dcs check-dist`: spawn N workers, all-reduce a size sweep, check the sums, print an nccl-tests-like table.

    dcs check-dist --nproc 2 --backend gloo --sizes 1K,1M --iters 5
    dcs check-dist --nproc 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500

The work is `dcs_cli.train.check_dist.check_dist`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dcs_cli.cli.options import JsonOpt
from dcs_cli.console import info, print_table
from dcs_cli.errors import DistError, UsageError
from dcs_cli.fsutil import write_json_atomic

NprocOpt = Annotated[int, typer.Option("--nproc", help="Workers on this node (one per device).", min=1)]
NnodesOpt = Annotated[int, typer.Option("--nnodes", help="Number of nodes.", min=1)]
NodeRankOpt = Annotated[int, typer.Option("--node-rank", help="Rank of this node (0 .. nnodes-1).", min=0)]
MasterAddrOpt = Annotated[str, typer.Option("--master-addr", help="Address of node 0.")]
MasterPortOpt = Annotated[
    int, typer.Option("--master-port", help="Rendezvous port on node 0; 0 = a free port (one node only).",
                      min=0, max=65535)
]


def check_dist_command(
    nproc: NprocOpt = 2,
    backend: Annotated[str, typer.Option("--backend", help="auto (nccl with CUDA, else gloo), gloo or nccl.")] = "auto",
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated buffer sizes, e.g. 1K,1M,25M.")] = "1K,1M,25M",
    iters: Annotated[int, typer.Option("--iters", help="Timed all-reduces per size.", min=1)] = 20,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master_addr: MasterAddrOpt = "127.0.0.1",
    master_port: MasterPortOpt = 0,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds to wait for every node to join.", min=1)] = 300,
    json_path: JsonOpt = None,
) -> None:
    """Check that N workers can all-reduce correctly and measure the bandwidth (exit 1 on any mismatch)."""
    from dcs_cli.train.check_dist import check_dist, parse_sizes
    from dcs_cli.train.dist import LaunchSpec, resolve_backend

    if node_rank >= nnodes:
        raise UsageError(f"--node-rank {node_rank} must be in [0, --nnodes {nnodes})")
    backend = resolve_backend(backend)
    spec = LaunchSpec(nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                      master_port=master_port, rdzv_timeout=timeout)
    size_list = parse_sizes(sizes)
    info(f"check-dist: {nproc * nnodes} workers, backend {backend}, sizes {sizes}, {iters} iterations")
    rows = check_dist(spec, backend=backend, sizes=size_list, iters=iters)
    if not rows:
        info(f"node {node_rank}: workers finished; node 0 prints the table")
        return
    print_table(f"all-reduce sum, float32, {nproc * nnodes} workers", rows,
                ["size", "time_us", "algbw_GBps", "busbw_GBps", "ok"])
    if json_path:
        write_json_atomic(json_path, {"workers": nproc * nnodes, "backend": backend, "rows": rows})
    bad = [r["size"] for r in rows if not r["ok"]]
    if bad:
        raise DistError(f"all-reduce returned wrong sums for size(s) {', '.join(bad)}; "
                        f"a rank or link corrupts data — check the devices and the network")


def register(app: typer.Typer) -> None:
    app.command("check-dist")(check_dist_command)
