"""Learning-rate schedules as pure functions of training progress, so a resumed run sets the same LR.

>>> from dcs_cli.train.config import OptimConfig
>>> sched = LRSchedule(OptimConfig(lr_steps=[21, 27], lr_gamma=0.1), base_lr=0.1, steps_per_epoch=1000)
>>> sched.lr(epoch=3, step_in_epoch=10), round(sched.lr(epoch=21), 6)
(0.1, 0.01)
>>> cosine = LRSchedule(OptimConfig(schedule="cosine", epochs=10, warmup_epochs=1.0), 0.5, steps_per_epoch=100)
>>> cosine.lr(0, 50), cosine.lr(1), cosine.lr(5, 50), cosine.lr(10)
(0.255, 0.5, 0.25, 0.0)

Progress is measured in epochs (fractional within an epoch), not raw steps, so a checkpoint made with N
workers resumes with M workers (different steps per epoch) on the same curve.
"""

from __future__ import annotations

import math

from dcs_cli.train.config import OptimConfig


class LRSchedule:
    """`lr = LRSchedule(optim_cfg, base_lr, steps_per_epoch).lr(epoch, step_in_epoch)`: multistep or warmup+cosine."""

    def __init__(self, cfg: OptimConfig, base_lr: float, steps_per_epoch: int):
        self.kind = cfg.schedule
        self.base_lr = base_lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epochs = cfg.epochs
        self.lr_steps = sorted(cfg.lr_steps)
        self.gamma = cfg.lr_gamma
        self.warmup = cfg.warmup_epochs

    def lr(self, epoch: int, step_in_epoch: int = 0) -> float:
        progress = epoch + step_in_epoch / self.steps_per_epoch  # epochs done, fractional
        if self.kind == "multistep":
            # The original steps at epoch boundaries: epoch e (0-based) uses gamma^(#steps <= e).
            return self.base_lr * self.gamma ** sum(1 for s in self.lr_steps if s <= epoch)
        if self.warmup > 0 and progress < self.warmup:
            return self.base_lr * (progress + 1.0 / self.steps_per_epoch) / self.warmup
        span = max(self.epochs - self.warmup, 1e-12)
        t = min(max((progress - self.warmup) / span, 0.0), 1.0)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch}
