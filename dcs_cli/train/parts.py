"""The pieces one training worker steps, built once per run: backbone, classifier, optimiser.

`build_parts(cfg, num_classes, input_shape, ctx, resume)` returns a `Parts`: the loop calls its `set_lr`,
`forward` (loss, correct predictions, selection stats), `after_step` once per step, `top1` to validate,
and, at each epoch's end, `save_class_store` on every rank, then `state_dict` on rank 0 for the checkpoint.

Full mode outside the sharded store: backbone + N×d classifier parameter in one module (DDP under several
workers, DataParallel over the visible GPUs in one process). Sampled modes, and full mode over the
sharded store: the backbone (DDP under several workers) and a `SampledClassifier` or `ShardedClassifier`
over the class store that `dcs_cli.train.class_store` builds. A checkpoint of any of these forms resumes
in any other (`dcs_cli.train.resume`).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dcs_cli.config import to_dict
from dcs_cli.console import warn
from dcs_cli.selection.sharded_store import ShardedStore
from dcs_cli.torchfile import save_torch_file
from dcs_cli.train.checkpoint import checkpoint_path, store_folder_path, store_snapshot_path
from dcs_cli.train.class_store import build_class_store, class_store_kind, release_class_store
from dcs_cli.train.classifier import Autocast, FullClassifier, FullModel, SampledClassifier
from dcs_cli.train.dist import DistContext, barrier
from dcs_cli.train.evaluate import evaluate_top1
from dcs_cli.train.resume import fit_optimizer_state, restore_full_classifier, strip_module_prefix
from dcs_cli.train.shard_checkpoint import save_sharded_store
from dcs_cli.train.sharded_softmax import ShardedClassifier, build_shard_selector


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
    num_classes: int
    full: FullClassifier | None = None
    sampled: SampledClassifier | ShardedClassifier | None = None
    server: object | None = None  # paramserver this worker started (rank 0, auto-start)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, dict]:
        if self.full is not None:
            loss, logits = self.model(x, y)
            return loss, int((logits.argmax(1) == y).sum()), {"active": self.full.weight.shape[0]}
        return self.sampled.loss(self.model(x).float(), y)

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

    def save_class_store(self, run_dir: Path, epoch: int) -> None:
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

    def state_dict(self, run_dir: Path, epoch: int, step: int) -> dict:
        """The checkpoint dict (rank 0 calls this; a remote store writes its snapshot beside the checkpoint,
        a sharded one has written its shards in `save_class_store`).

        No generator state is saved: each epoch reseeds the global generators, the selector's and the tail
        sampler's from (seed, epoch, rank) before their first draw, and the LR is a function of (epoch, step)
        and the config, all three saved here.
        """
        state = {
            "backbone": self.backbone.state_dict(),
            "classifier": self.full.state_dict() if self.full is not None else None,
            "config": to_dict(self.cfg), "epoch": epoch, "step": step, "num_classes": self.num_classes,
            "optimizer": self.optimizer.state_dict(),
            "store": None, "selector": None,
        }
        if self.sampled is not None:
            store = self.sampled.store
            # The refresh count is a figure of the run, not of the process: carried across a resume.
            state["selector"] = {"_refreshes": int(getattr(self.sampled.selector, "refreshes", 0))}
            if isinstance(store, ShardedStore):
                state["store"] = {"sharded": store_folder_path(checkpoint_path(run_dir, epoch)).name, "step": step}
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
        release_class_store(self.sampled.store if self.sampled is not None else None, self.server)
        self.server = None


def _wrap(module: nn.Module, ctx: DistContext, data_parallel: bool) -> nn.Module:
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if data_parallel and ctx.device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(module)
    return module


def build_parts(cfg, num_classes: int, input_shape: tuple, ctx: DistContext, resume: dict | None) -> Parts:
    """Everything one worker steps, restored from the loaded checkpoint `resume` when given (collective under
    several workers: the class store may be sharded or shared)."""
    from dcs_cli.models.backbones import build_backbone
    from dcs_cli.models.heads import build_head

    mode = cfg.selection.mode
    lr = cfg.optim.base_lr(mode)
    torch.manual_seed(cfg.optim.seed)  # the same initial weights on every rank
    backbone = build_backbone(cfg.model, input_shape).to(ctx.device)
    head = build_head(cfg.head)
    amp = autocast_dtype(cfg, ctx.device)
    if resume is not None:
        backbone.load_state_dict(strip_module_prefix(resume["backbone"]))
    step = int(resume["step"]) if resume is not None else 0
    sharded = class_store_kind(cfg, ctx.world_size) == "sharded"
    momenta: list[torch.Tensor] = []  # a sharded full checkpoint's row momentum, for the optimiser
    if mode == "full" and not sharded:
        full = FullClassifier(num_classes, cfg.model.feature_dim, head, bias=cfg.head.bias, seed=cfg.optim.seed,
                              init_std=cfg.head.row_init_std(cfg.model.feature_dim)).to(ctx.device)
        if resume is not None:
            momenta = restore_full_classifier(full, resume)
        # DataParallel over the visible GPUs only in a single process; workers own one device each.
        local = DistContext(device=ctx.device)
        inner = FullModel(_wrap(Autocast(backbone, amp), local, data_parallel=not ctx.distributed), full)
        model = _wrap(inner, ctx, data_parallel=False)
        params = list(backbone.parameters()) + list(full.parameters())
        sampled, server = None, None
    else:
        full = None
        model = _wrap(Autocast(backbone, amp), ctx, data_parallel=False)
        params = list(backbone.parameters())
        store, server = build_class_store(cfg, num_classes, ctx, resume, lr)
        sampled = None
    try:  # a failure from here on must not leave the run's paramserver (a process of its own) running
        if full is None:
            sampled = _sampled_classifier(cfg, num_classes, ctx, store, head, step, resume)
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        if resume is not None:  # the saved velocities; the hyper-parameters stay the config's (as the rows')
            optimizer.load_state_dict(fit_optimizer_state(resume["optimizer"], len(params), momenta))
            for group in optimizer.param_groups:
                group.update(momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    except BaseException:
        if sampled is not None:
            sampled.close()
        if full is None:
            release_class_store(store, server)
        raise
    return Parts(cfg=cfg, ctx=ctx, model=model, backbone=backbone, optimizer=optimizer, num_classes=num_classes,
                 full=full, sampled=sampled, server=server)


def _sampled_classifier(cfg, num_classes: int, ctx: DistContext, store, head, step: int, resume: dict | None):
    """The selector and the sampled classifier over `store` (a shard's under a sharded store)."""
    from dcs_cli.selection import build_selector

    if isinstance(store, ShardedStore):
        # selection.sample_num is per worker's batch, as in one process: the global batch of W·B
        # samples draws W·sample_num active classes over all shards, each shard its share.
        world = ctx.world_size
        selection = dataclasses.replace(cfg.selection, sample_num=cfg.selection.sample_num * world)
        selector = build_shard_selector(selection, store, cfg.data.batch_size * world)
        _restore_refreshes(selector, resume)
        sampled = ShardedClassifier(selector, store, head, step=step,
                                    tail_samples=cfg.selection.tail_samples, seed=cfg.selection.seed,
                                    tail_near=cfg.selection.tail_near,
                                    random_share=cfg.selection.random_share)
    else:
        selector = build_selector(cfg.selection, num_classes, cfg.data.batch_size)
        _restore_refreshes(selector, resume)
        sampled = SampledClassifier(selector, store, head, world=ctx.world_size, step=step,
                                    tail_samples=cfg.selection.tail_samples, seed=cfg.selection.seed,
                                    tail_near=cfg.selection.tail_near,
                                    random_share=cfg.selection.random_share)
    return sampled


def _restore_refreshes(selector, resume: dict | None) -> None:
    """The run's refresh count, before the selector builds its first index (whose seed follows it)."""
    if resume is not None and hasattr(selector, "refreshes"):
        selector.refreshes = int((resume.get("selector") or {}).get("_refreshes", 0))
