"""Running training figures between two log lines, reduced over ranks.

>>> import torch
>>> from dcs_cli.train.dist import DistContext
>>> meter = StepMeter(DistContext(), batch_size=2)
>>> meter.update(torch.tensor(1.0), correct=1, n=2, stats={"active": 40, "tail": 90, "refreshes": 1})
>>> meter.update(torch.tensor(3.0), correct=2, n=2, stats={"active": 40, "tail": 70, "refreshes": 2})
>>> row = meter.flush(step=2, epoch=1, lr=0.1)
>>> {key: row[key] for key in ("kind", "step", "loss", "acc", "active")}
{'kind': 'train', 'step': 2, 'loss': 2.0, 'acc': 0.75, 'active': 40.0}
>>> row["tail"], row["refreshes"]   # sizes per step: the mean; counts: the latest
(80.0, 2)

Loss and accuracy are means over every sample of every rank since the last flush; samples/s counts all
ranks. Selection stats are rank 0's: the per-step sizes (MEAN_KEYS: classes active, rows read for the
tail estimate, ...) averaged over the window's steps, the others (refresh counts, index age) the latest. Under
the sharded store rank 0's sizes already are the step's over every shard (`sharded_softmax`).
The loss is summed on the device and read back once per flush; the correct counts arrive as Python ints,
which the step computed from device tensors (on a GPU that is one synchronisation per step).
"""

from __future__ import annotations

import time

import torch

from dcs_cli.train.dist import DistContext, all_reduce_sum

# Selection figures worth a column in metrics.jsonl (the selector may report more).
SELECTION_KEYS = ("active", "tail", "positives", "retrieved", "random_fill", "refreshes", "index_age", "drift",
                  "refresh_seconds", "shard_overflow")
MEAN_KEYS = ("active", "tail", "positives", "retrieved", "random_fill")  # sizes per step: a window's mean


class StepMeter:
    """Sums loss, correct predictions and samples over a window of steps."""

    def __init__(self, ctx: DistContext, batch_size: int):
        self.ctx, self.batch_size = ctx, batch_size
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        self.correct = 0
        self.samples = 0
        self.steps = 0
        self.stats: dict = {}
        self.sums: dict[str, list[float]] = {}  # MEAN_KEYS: [sum, steps that reported it]
        self.start = time.perf_counter()

    def update(self, loss: torch.Tensor, correct: int, n: int, stats: dict) -> None:
        self.loss_sum += loss.detach().double() * n  # stays on the device: no sync per step
        self.correct += correct
        self.samples += n
        self.steps += 1
        self.stats = stats
        for key in MEAN_KEYS:
            if isinstance(stats.get(key), (int, float)):
                total = self.sums.setdefault(key, [0.0, 0])
                total[0] += stats[key]
                total[1] += 1

    def flush(self, step: int, epoch: int, lr: float) -> dict:
        totals = torch.tensor([float(self.loss_sum), float(self.correct), float(self.samples)], dtype=torch.float64,
                              device=self.ctx.device if self.ctx.backend == "nccl" else "cpu")
        all_reduce_sum(totals)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        loss_sum, correct, samples = (float(v) for v in totals.tolist())
        row = {"kind": "train", "step": step, "epoch": epoch, "loss": loss_sum / max(samples, 1),
               "acc": correct / max(samples, 1), "lr": lr, "samples_per_s": samples / elapsed}
        for key in SELECTION_KEYS:
            value = self.sums[key][0] / self.sums[key][1] if key in self.sums else self.stats.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = value
        self.reset()
        return row
