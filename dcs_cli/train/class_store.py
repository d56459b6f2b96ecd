"""Where a run's class rows live, and the store that holds them, restored from a checkpoint on resume.

`class_store_kind` picks the place: in one process, an in-process `LocalStore`; under several workers, by
default a `ShardedStore` (rank r owns 1/W of the classes), in every mode (full = each shard's whole
slice); or, with `dist.class_store=paramserver` or a `paramserver.address`, the paramserver every rank
shares (rank 0 starts one for the run when no address is given). `build_class_store` makes it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile

import torch.distributed as dist

from dcs_cli.errors import ConfigError
from dcs_cli.selection.sharded_store import ShardedStore
from dcs_cli.selection.store import ClassStore, OptimParams
from dcs_cli.train.dist import DistContext, barrier
from dcs_cli.train.resume import restore_sharded_store, saved_store_state


def class_store_kind(cfg, world: int) -> str:
    """Where the class rows live: "local" (in process), "sharded" (model parallel) or "paramserver"."""
    choice = cfg.dist.class_store
    if choice == "paramserver" or (choice == "auto" and cfg.paramserver.address):
        kind = "paramserver" if cfg.paramserver.address or world > 1 else "local"
    elif choice == "sharded" or world > 1 or cfg.optim.momentum_dtype != "float32":
        kind = "sharded"
    else:
        kind = "local"
    if kind != "sharded" and cfg.optim.momentum_dtype != "float32":
        raise ConfigError(f"optim.momentum_dtype = {cfg.optim.momentum_dtype} needs the sharded class store; "
                          "set dist.class_store=sharded (or leave it auto without paramserver.address)")
    return kind


def build_class_store(cfg, num_classes: int, ctx: DistContext, resume: dict | None,
                      lr: float) -> tuple[ClassStore, object | None]:
    """The class store of this run (restored from `resume` when given) and the paramserver this rank
    started for it, if any. Collective under several workers."""
    from dcs_cli.paramserver.client import RemoteStore
    from dcs_cli.selection.local_store import LocalStore

    params = OptimParams(lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    dim, bias, seed = cfg.model.feature_dim, cfg.head.bias, cfg.optim.seed
    init_std = cfg.head.row_init_std(dim)
    if class_store_kind(cfg, ctx.world_size) == "sharded":
        store = ShardedStore(num_classes, dim, bias=bias, init_std=init_std, seed=seed, params=params,
                             device=ctx.device, momentum_dtype=cfg.optim.momentum_dtype, catch_up=cfg.optim.catch_up)
        if resume is not None:
            restore_sharded_store(store, resume)
            store.set_optim(params)
        return store, None
    address, token, server = cfg.paramserver.address, None, None
    if not address and ctx.distributed:
        server, address, token = _start_shared_server(cfg, ctx)
    if not address:
        store = LocalStore(num_classes, dim, bias=bias, init_std=init_std, seed=seed, params=params, device=ctx.device,
                           catch_up=cfg.optim.catch_up)
        if resume is not None and resume.get("store"):
            store.load_state_dict(saved_store_state(resume))
            store.set_optim(params)
        return store, None

    if server is None and token is None:
        from dcs_cli.paramserver.auth import read_token

        token = read_token(cfg.paramserver.token_file)

    def connect():
        return RemoteStore(address, "classifier", num_classes, dim, bias=bias, seed=seed, params=params,
                           token=token, timeout=cfg.paramserver.request_timeout, init_std=init_std,
                           shared_memory=cfg.paramserver.shared_memory, catch_up=cfg.optim.catch_up)

    # Rank 0 restores the snapshot first; the others register afterwards, so they see the restored step,
    # and nobody pushes before every rank is registered in the server's barrier.
    store = None
    try:
        if ctx.is_main:
            store = connect()
            if resume is not None and resume.get("store"):
                state = dict(saved_store_state(resume))
                state.pop("step", None)  # the server keeps counting; the checkpoint's step is the trainer's own
                store.load_state_dict(state)
                store.set_optim(params)
        barrier()
        if store is None:
            store = connect()
        barrier()
    except BaseException:  # the run's own server (and this rank's client) must not outlive a failed start
        release_class_store(store, server)
        raise
    return store, server


def release_class_store(store, server) -> None:
    """Close a store's connection (a paramserver client) and stop the server this rank started, if any;
    for a run that ends or fails to start (errors while releasing are not the run's error)."""
    closer = getattr(store, "close", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            closer()
    if server is not None:
        with contextlib.suppress(Exception):
            server.stop()


def _start_shared_server(cfg, ctx: DistContext):
    """Rank 0 starts a paramserver for this run and tells every rank its address (and token, multi-node)."""
    from dcs_cli.paramserver.launcher import start_background

    server, info = None, [None, None]
    if ctx.is_main:
        multi_node = cfg.dist.nnodes > 1
        token_file = None
        if multi_node:
            token = secrets.token_hex(16)
            fd, token_file = tempfile.mkstemp(prefix="dcs-token-")
            with os.fdopen(fd, "w") as fh:
                fh.write(token)
        bind = "tcp://0.0.0.0:*" if multi_node else "tcp://127.0.0.1:*"
        try:
            server = start_background(bind, token_file=token_file,
                                      heartbeat_timeout=cfg.paramserver.heartbeat_timeout)
        finally:
            if token_file:
                with contextlib.suppress(OSError):
                    os.unlink(token_file)  # the server has read it
        address = server.address
        if multi_node:
            address = f"tcp://{cfg.dist.master_addr}:{address.rsplit(':', 1)[1]}"
        info = [address, token if multi_node else None]
    if ctx.distributed:
        dist.broadcast_object_list(info, src=0)
    return server, info[0], info[1]
