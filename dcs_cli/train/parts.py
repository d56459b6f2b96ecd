"""Everything a training worker builds before its first step, and restores on resume.

    parts = build_parts(cfg, data, ctx, resume_state)
    loss, correct, stats = parts.forward(x, y); ...; parts.state_dict()

Where the class rows live (`class_store_kind`): in one process, an in-process `LocalStore`; under several
workers, by default a `ShardedStore` (rank r owns 1/W of the classes) behind a `ShardedClassifier`, in
every mode (full = each shard's whole slice); or, with `dist.class_store=paramserver` or a
`paramserver.address`, the paramserver every rank shares. Full mode outside the sharded store: backbone +
N×d classifier parameter in one module (DDP under several workers, DataParallel over the visible GPUs in
one process). Sampled modes: the backbone (DDP under several workers) and a `SampledClassifier` over the
store. Checkpoints move between these forms (N → M processes, sharded ↔ one process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dcs_cli.config import to_dict
from dcs_cli.console import warn
from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection.sharded_store import ShardedStore
from dcs_cli.selection.store import OptimParams
from dcs_cli.torchfile import load_torch_file, save_torch_file
from dcs_cli.train.checkpoint import checkpoint_path, store_folder_path, store_snapshot_path
from dcs_cli.train.classifier import FullClassifier, FullModel, SampledClassifier
from dcs_cli.train.dist import DistContext, barrier
from dcs_cli.train.evaluate import evaluate_top1
from dcs_cli.train.shard_checkpoint import load_store, local_state_dict, save_sharded_store
from dcs_cli.train.sharded_softmax import ShardedClassifier, build_shard_selector


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


def autocast_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it (no loss scaling needed, so pushed row gradients stay exact)."""
    if not cfg.optim.amp or device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    warn("optim.amp: this GPU has no bfloat16; training in float32")
    return None


@dataclass
class Parts:
    """The trainable pieces of one worker and how to step them."""

    cfg: object
    ctx: DistContext
    model: nn.Module  # what forward runs: FullModel (maybe DDP) or the backbone (maybe DDP)
    backbone: nn.Module  # the bare backbone (checkpoints, evaluation)
    optimizer: torch.optim.Optimizer
    full: FullClassifier | None = None
    sampled: SampledClassifier | ShardedClassifier | None = None
    amp: torch.dtype | None = None
    server: object | None = None  # paramserver this worker started (rank 0, auto-start)
    extra: dict = field(default_factory=dict)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, dict]:
        if self.full is not None:
            loss, logits = self.model(x, y)
            return loss, int((logits.argmax(1) == y).sum()), {"active": self.full.weight.shape[0]}
        with torch.autocast("cuda", dtype=self.amp, enabled=self.amp is not None):
            features = self.model(x)
        return self.sampled.loss(features.float(), y)

    def after_step(self) -> None:
        if self.sampled is not None:
            self.sampled.after_step()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.sampled is not None:
            self.sampled.set_lr(lr, self.ctx.is_main)

    def top1(self, loader) -> tuple[float, int]:
        """Validation top-1 over all N classes (a collective under several workers)."""
        if self.full is None:
            return self.sampled.top1(self.backbone, loader, self.ctx.device)
        bias = self.full.bias.detach() if self.full.bias is not None else None
        angular = getattr(self.full.head, "metric", "dot") == "angular"
        return evaluate_top1(self.backbone, self.full.weight.detach(), bias, loader, self.ctx.device, angular)

    def save_class_store(self, run_dir: Path, epoch: int, step: int) -> None:
        """Collective, every rank before rank 0's `state_dict`: a sharded store writes its shards and manifest
        into `epoch_NNN.store/` beside the checkpoint. Nothing to do for the other stores."""
        store = self.sampled.store if self.sampled is not None else None
        if not isinstance(store, ShardedStore):
            return
        folder = store_folder_path(checkpoint_path(run_dir, epoch))
        if self.ctx.is_main and folder.exists():
            shutil.rmtree(folder)  # a killed run's leftovers, maybe of another world size
        barrier()
        save_sharded_store(store, folder)
        self.extra["store"] = {"sharded": folder.name, "step": step}

    def state_dict(self, run_dir: Path, epoch: int, step: int) -> dict:
        """The checkpoint dict (rank 0 calls this; a remote store writes its snapshot beside the checkpoint,
        a sharded one has written its shards in `save_class_store`)."""

        state = {
            "backbone": self.backbone.state_dict(),
            "classifier": self.full.state_dict() if self.full is not None else None,
            "config": to_dict(self.cfg), "epoch": epoch, "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"epoch": epoch, "step": step, "kind": self.cfg.optim.schedule},
            "store": None, "selector": None,
            "rng": {"torch": torch.get_rng_state()},
            "world_size": self.ctx.world_size,
        }
        if self.sampled is not None:
            store = self.sampled.store
            state["selector"] = self.sampled.selector.state_dict()
            # The refresh count is a figure of the run, not of the process: carried across a resume.
            state["selector"]["_refreshes"] = int(getattr(self.sampled.selector, "refreshes", 0))
            if isinstance(store, ShardedStore):
                state["store"] = self.extra["store"]
            elif hasattr(store, "address"):
                snap = store_snapshot_path(checkpoint_path(run_dir, epoch))
                save_torch_file(store.state_dict(), snap)
                state["store"] = {"snapshot": snap.name, "step": step}
            else:
                state["store"] = store.state_dict()
        return state

    def close(self) -> None:
        if self.sampled is not None:
            self.sampled.close()
            closer = getattr(self.sampled.store, "close", None)
            if closer is not None:
                closer()
        if self.server is not None:
            self.server.stop()
            self.server = None


def _wrap(module: nn.Module, ctx: DistContext, data_parallel: bool) -> nn.Module:
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if data_parallel and ctx.device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(module)
    return module


def _start_shared_server(cfg, ctx: DistContext):
    """Rank 0 starts a paramserver for this run and tells every rank its address (and token, multi-node)."""
    from dcs_cli.paramserver.server import start_background

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


def saved_store_state(resume: dict) -> dict:
    """The whole-table class-store state of a checkpoint: inside it (in-process store), its snapshot beside
    it (paramserver), or assembled from its shards beside it (sharded store)."""
    saved = resume["store"]
    if "sharded" in saved:
        return local_state_dict(sharded_store_folder(resume))
    if "snapshot" not in saved:
        return saved
    path = Path(resume["_path"]).with_name(saved["snapshot"])
    if not path.is_file():
        raise DataError(f"{resume['_path']}: its class-store snapshot {path} is missing; copy it beside the "
                        f"checkpoint")
    return load_torch_file(path, "class-store snapshot")


def sharded_store_folder(resume: dict) -> Path:
    """The folder of a checkpoint's sharded class store (beside the checkpoint)."""
    folder = Path(resume["_path"]).with_name(resume["store"]["sharded"])
    if not folder.is_dir():
        raise DataError(f"{resume['_path']}: its class-store shards {folder} are missing; copy that folder "
                        f"beside the checkpoint")
    return folder


def _full_classifier_store_state(resume: dict) -> dict:
    """A full-mode checkpoint's classifier (FullClassifier form) as a whole-table class-store state: its rows
    and their momentum, which lived in the optimiser's buffers (the last parameters of its one group)."""
    classifier = resume["classifier"]
    rows = ["weight"] + (["bias"] if classifier.get("bias") is not None else [])
    group = resume["optimizer"]["param_groups"][0]["params"]
    momenta = resume["optimizer"]["state"]
    ids = group[len(group) - len(rows):]
    state = {"steps": int(resume["step"]), "num_classes": int(classifier["weight"].shape[0]),
             "dim": int(classifier["weight"].shape[1])}
    for key, idx in zip(rows, ids, strict=True):
        value = classifier[key].float()
        buf = (momenta.get(idx) or {}).get("momentum_buffer")
        state[key] = value
        state["momentum" if key == "weight" else "bias_momentum"] = (
            buf.float() if buf is not None else torch.zeros_like(value))
    return state


def _fit_optimizer_state(saved: dict, count: int, momenta: list[torch.Tensor]) -> dict:
    """The saved optimiser state for this run's `count` parameters when the classifier changed form across
    the resume: FullClassifier → class store drops the classifier's entries (the store took its momentum);
    class store → FullClassifier appends them, the store's momentum (`momenta`) as their buffers."""
    groups = saved["param_groups"]
    have = len(groups[0]["params"]) if len(groups) == 1 else None
    if have is None or have == count:
        return saved
    ids = list(groups[0]["params"])
    if have > count:
        keep = ids[:count]
        state = {k: v for k, v in saved["state"].items() if k in keep}
    else:
        if len(momenta) != count - have:
            raise DataError(f"the checkpoint's optimiser holds {have} parameters, this model {count}; resume "
                            "with the model and head it was trained with")
        start = max(ids, default=-1) + 1
        extra = list(range(start, start + count - have))
        keep = ids + extra
        state = dict(saved["state"])
        for idx, buf in zip(extra, momenta, strict=True):
            state[idx] = {"momentum_buffer": buf.float().clone()}
    return {"state": state, "param_groups": [dict(groups[0], params=keep)]}


def _restore_sharded(store: ShardedStore, resume: dict) -> None:
    """A sharded store from any checkpoint form: shards of any world size (only the overlapping files are
    read), a whole-table state (one process, paramserver snapshot) or a full-mode FullClassifier."""
    saved = resume.get("store")
    if saved and "sharded" in saved:
        load_store(store, sharded_store_folder(resume))
    elif saved:
        store.load_state_dict(saved_store_state(resume))
    elif resume.get("classifier"):
        store.load_state_dict(_full_classifier_store_state(resume))


def _build_store(cfg, num_classes: int, ctx: DistContext, resume: dict | None, run_dir: Path, lr: float):
    from dcs_cli.paramserver.client import RemoteStore
    from dcs_cli.selection.local_store import LocalStore

    params = OptimParams(lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    dim, bias, seed = cfg.model.feature_dim, cfg.head.bias, cfg.optim.seed
    init_std = cfg.head.row_init_std(dim)
    if class_store_kind(cfg, ctx.world_size) == "sharded":
        store = ShardedStore(num_classes, dim, bias=bias, init_std=init_std, seed=seed, params=params,
                             device=ctx.device, momentum_dtype=cfg.optim.momentum_dtype, catch_up=cfg.optim.catch_up)
        if resume is not None:
            _restore_sharded(store, resume)
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
        from dcs_cli.paramserver.server import read_token

        token = read_token(cfg.paramserver.token_file)

    def connect():
        return RemoteStore(address, "classifier", num_classes, dim, bias=bias, seed=seed, params=params,
                           token=token, timeout=cfg.paramserver.request_timeout, init_std=init_std,
                           shared_memory=cfg.paramserver.shared_memory, catch_up=cfg.optim.catch_up)

    # Rank 0 restores the snapshot first; the others register afterwards, so they see the restored step,
    # and nobody pushes before every rank is registered in the server's barrier.
    store = None
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
    return store, server


def build_parts(cfg, num_classes: int, input_shape: tuple, ctx: DistContext, resume: dict | None,
                run_dir: Path) -> Parts:
    from dcs_cli.models.backbones import build_backbone
    from dcs_cli.models.heads import build_head
    from dcs_cli.selection import build_selector

    mode = cfg.selection.mode
    lr = cfg.optim.base_lr(mode)
    torch.manual_seed(cfg.optim.seed)  # the same initial weights on every rank
    backbone = build_backbone(cfg.model, input_shape).to(ctx.device)
    head = build_head(cfg.head)
    amp = autocast_dtype(cfg, ctx.device)
    if resume is not None:
        backbone.load_state_dict(_strip_module(resume["backbone"]))
    step = int(resume["step"]) if resume is not None else 0
    sharded = class_store_kind(cfg, ctx.world_size) == "sharded"
    momenta: list[torch.Tensor] = []  # a sharded full checkpoint's row momentum, for the optimiser
    if mode == "full" and not sharded:
        full = FullClassifier(num_classes, cfg.model.feature_dim, head, bias=cfg.head.bias, seed=cfg.optim.seed,
                              init_std=cfg.head.row_init_std(cfg.model.feature_dim)).to(ctx.device)
        if resume is not None and resume.get("classifier"):
            full.load_state_dict(resume["classifier"])
        elif resume is not None and resume.get("store"):  # saved by a sharded run: its rows, assembled
            whole = saved_store_state(resume)
            rows = {"weight": whole["weight"]}
            momenta = [whole["momentum"]]
            if full.bias is not None:
                rows["bias"] = whole["bias"]
                momenta.append(whole["bias_momentum"])
            full.load_state_dict({**full.state_dict(), **rows})
        # DataParallel over the visible GPUs only in a single process; workers own one device each.
        local = DistContext(device=ctx.device)
        inner = FullModel(_wrap(backbone, local, data_parallel=not ctx.distributed), full, amp)
        model = _wrap(inner, ctx, data_parallel=False)
        params = list(backbone.parameters()) + list(full.parameters())
        sampled, server = None, None
    else:
        full = None
        model = _wrap(backbone, ctx, data_parallel=False)
        params = list(backbone.parameters())
        store, server = _build_store(cfg, num_classes, ctx, resume, run_dir, lr)
        if sharded:
            # selection.sample_num is per worker's batch, as in one process: the global batch of W·B
            # samples draws W·sample_num active classes over all shards, each shard its share.
            world = ctx.world_size
            selection = dataclasses.replace(cfg.selection, sample_num=cfg.selection.sample_num * world)
            selector = build_shard_selector(selection, store, cfg.data.batch_size * world)
            sampled = ShardedClassifier(selector, store, head, step=step,
                                        tail_samples=cfg.selection.tail_samples, seed=cfg.selection.seed)
        else:
            selector = build_selector(cfg.selection, num_classes, cfg.data.batch_size)
            sampled = SampledClassifier(selector, store, head, world=ctx.world_size, step=step,
                                        tail_samples=cfg.selection.tail_samples, seed=cfg.selection.seed)
        if resume is not None and hasattr(selector, "refreshes"):
            selector.refreshes = int((resume.get("selector") or {}).get("_refreshes", 0))
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    if resume is not None:
        optimizer.load_state_dict(_fit_optimizer_state(resume["optimizer"], len(params), momenta))
    return Parts(cfg=cfg, ctx=ctx, model=model, backbone=backbone, optimizer=optimizer, full=full,
                 sampled=sampled, amp=amp, server=server)


def _strip_module(state: dict) -> dict:
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
