"""LR schedules as functions of progress; atomic checkpoints that keep the newest K."""

from __future__ import annotations

import pytest
import torch

from dcs_cli.errors import DataError
from dcs_cli.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from dcs_cli.train.config import OptimConfig
from dcs_cli.train.schedule import LRSchedule


def test_multistep_matches_the_original_recipe():
    sched = LRSchedule(OptimConfig(epochs=30, lr_steps=[21, 27], lr_gamma=0.1), base_lr=0.5, steps_per_epoch=100)
    assert sched.lr(0) == 0.5 and sched.lr(20, 99) == 0.5
    assert sched.lr(21) == pytest.approx(0.05) and sched.lr(27, 5) == pytest.approx(0.005)


def test_warmup_cosine():
    cfg = OptimConfig(epochs=10, schedule="cosine", warmup_epochs=2)
    sched = LRSchedule(cfg, base_lr=1.0, steps_per_epoch=10)
    warm = [sched.lr(e, i) for e in range(2) for i in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(0.05) and warm[-1] == pytest.approx(1.0)
    assert sched.lr(2) == pytest.approx(1.0) and sched.lr(6) == pytest.approx(0.5)
    assert sched.lr(9, 9) < 0.01
    # the same progress gives the same LR whatever the steps per epoch (N-worker → M-worker resume)
    assert LRSchedule(cfg, 1.0, 40).lr(5, 20) == pytest.approx(sched.lr(5, 5))


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    state = {"backbone": {"w": torch.ones(2)}, "config": {}, "epoch": 0, "step": 0, "optimizer": {}}
    for epoch in range(1, 5):
        save_checkpoint(tmp_path, epoch, dict(state, epoch=epoch, step=10 * epoch), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_003.pt", "epoch_004.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files
    assert load_checkpoint(tmp_path)["step"] == 40  # a run folder resolves to its newest checkpoint
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_the_runs_throughput_weighs_each_log_window_by_its_steps():
    from dcs_cli.train.runner import run_samples_per_s

    # a 50-step window at 320 samples/s, then an epoch's last 10 steps at 80 (batch 64: 3,840 samples, 18 s)
    rows = [{"step": 50, "samples_per_s": 320.0}, {"step": 60, "samples_per_s": 80.0}]
    assert run_samples_per_s(rows) == pytest.approx(3840 / 18)  # not the windows' plain mean, 200
    assert run_samples_per_s([]) is None
