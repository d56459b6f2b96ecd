"""The training loop of one worker: epochs of steps, validation, checkpoint — one code path for one process
or many (under `dcs train --nproc N` or an external torchrun).

`train_worker(job)` runs it: `run_train` calls it in place (one process, or each process of an external
torchrun), passing the data it opened and the checkpoint it loaded; workers that `dcs train --nproc N`
starts get only the picklable `TrainJob` and open both themselves.

Each epoch reseeds the data order, the selector's random fill and the tail draws (`selection.tail_samples`)
from (seed, stream, epoch, rank) (`dcs_cli.seeds`), so a run resumed from an epoch checkpoint replays
exactly the batches and selections an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dcs_cli import console
from dcs_cli.config import config_from_dict
from dcs_cli.cpus import share_of_cores
from dcs_cli.errors import DataError
from dcs_cli.seeds import stream_seed
from dcs_cli.train.checkpoint import load_checkpoint, save_checkpoint
from dcs_cli.train.data import TrainData, build_data, seed_everything, steps_per_epoch, train_loader, val_loader
from dcs_cli.train.dist import barrier, init_distributed
from dcs_cli.train.meter import StepMeter
from dcs_cli.train.metrics import MetricsLog
from dcs_cli.train.parts import build_parts
from dcs_cli.train.schedule import LRSchedule


@dataclass
class TrainJob:
    """What every worker needs (picklable): the resolved config, the run folder and the resume point."""

    config: dict
    run_dir: str
    resume: str | None = None
    quiet: bool = False
    stop_after_steps: int | None = None  # test hook: stop like a kill after this global step (no save)


def train_worker(job: TrainJob, data: TrainData | None = None, resume: dict | None = None) -> dict:
    """Train as `job` says; returns {"step", "epoch", "val_acc", "stopped"}. `data` and `resume` (the loaded
    checkpoint of `job.resume`) are opened here unless the caller, in the same process, already has them."""
    console.set_quiet(job.quiet)
    cfg = config_from_dict(job.config)
    ctx = init_distributed(cfg.dist.backend)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(_threads(cfg))
    run_dir = Path(job.run_dir)
    if data is None:  # a worker re-opens what the parent checked (and reported on)
        data = build_data(cfg, report=False)
    if resume is None and job.resume:
        resume = load_checkpoint(job.resume)
    parts = build_parts(cfg, data.num_classes, data.input_shape, ctx, resume)
    spe = steps_per_epoch(len(data.train), cfg.data.batch_size, ctx.world_size)
    sched = LRSchedule(cfg.optim, cfg.optim.base_lr(cfg.selection.mode), spe)
    log = MetricsLog(run_dir, enabled=ctx.is_main)
    start_epoch, step = (int(resume["epoch"]), int(resume["step"])) if resume else (0, 0)
    if resume:
        log.truncate_after(step)  # drop what a killed run logged after its last checkpoint
    else:
        log.reset()
    meter = StepMeter(ctx, cfg.data.batch_size)
    result = {"step": step, "epoch": start_epoch, "val_acc": None, "stopped": False}
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            seed_everything(stream_seed(cfg.optim.seed, "global", epoch, ctx.rank))
            if parts.sampled is not None:
                parts.sampled.reseed(stream_seed(cfg.selection.seed, "selection", epoch, ctx.rank))
            loader = train_loader(data.train, cfg.data.batch_size, cfg.data.workers, epoch, cfg.optim.seed,
                                  ctx.rank, ctx.world_size)
            parts.model.train()
            meter.reset()
            desc = f"epoch {epoch + 1}/{cfg.optim.epochs}"
            bar = console.progress_bar(desc, total=spe, unit="steps") if ctx.is_main else _no_bar()
            with bar as advance:
                for i, (x, y) in enumerate(loader):
                    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                    lr = sched.lr(epoch, i)
                    parts.set_lr(lr)
                    loss, correct, stats = parts.forward(x, y)
                    parts.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    parts.optimizer.step()
                    parts.after_step()
                    step += 1
                    meter.update(loss, correct, y.numel(), stats)
                    advance(1)
                    if step % cfg.output.print_freq == 0 or i + 1 == spe:
                        row = meter.flush(step=step, epoch=epoch + 1, lr=lr)
                        log.write(row)
                        _log_line(ctx, row, i + 1, spe)
                        _check_finite(row, cfg)
                    if job.stop_after_steps is not None and step >= job.stop_after_steps:
                        result.update(step=step, epoch=epoch, stopped=True)
                        return result
            acc = _validate(parts, data, cfg, ctx)
            if acc is not None:
                log.write({"kind": "val", "step": step, "epoch": epoch + 1, "acc": acc})
                if ctx.is_main:
                    console.info(f"epoch {epoch + 1}: val top-1 {acc:.4f} over {data.num_classes:,} classes")
            parts.save_class_store(run_dir, epoch + 1)  # collective: a sharded store's shards
            if ctx.is_main:
                state = parts.state_dict(run_dir, epoch + 1, step)
                save_checkpoint(run_dir, epoch + 1, state, keep=cfg.output.keep_checkpoints)
                log.plot()
            barrier()
            result.update(step=step, epoch=epoch + 1, val_acc=acc)
    finally:
        log.close()
        parts.close()
        torch.set_num_threads(threads_before)
    return result


def _check_finite(row: dict, cfg) -> None:
    """A diverged run stops at its next log line, before saving a checkpoint of NaN weights (the sampled
    modes stop even earlier, on the batch's features: `selection.compose.check_batch`)."""
    if not math.isfinite(row["loss"]):
        raise DataError(f"training diverged at step {row['step']} (epoch {row['epoch']}): the loss is "
                        f"{row['loss']}; lower optim.lr (now {cfg.optim.lr}) or check the input data")


def _threads(cfg) -> int:
    """`dist.threads`, else the cores this process may use / the workers on this node: on a GPU too, where
    the index queries, re-ranking and the class store's CPU work of each step still run on them (the
    launcher's OMP_NUM_THREADS=1, which keeps import-time thread pools small, is not the workers' share)."""
    if cfg.dist.threads:
        return cfg.dist.threads
    return share_of_cores(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _validate(parts, data, cfg, ctx) -> float | None:
    if data.val is None:
        return None
    loader = val_loader(data.val, cfg.data.batch_size, cfg.data.workers, ctx.rank, ctx.world_size)
    acc, _ = parts.top1(loader)
    return acc


def _log_line(ctx, row: dict, i: int, spe: int) -> None:
    if ctx.is_main:
        sel = f" active {row['active']:,.0f}" if "active" in row else ""  # (a window's mean)
        console.info(f"epoch {row['epoch']} step {row['step']} ({i}/{spe}) loss {row['loss']:.4f} "
                     f"acc {row['acc']:.4f} lr {row['lr']:.4g} {row['samples_per_s']:,.0f} samples/s{sel}")


def _no_bar():
    return contextlib.nullcontext(lambda n=1: None)

