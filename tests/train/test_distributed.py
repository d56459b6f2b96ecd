"""Two gloo workers on the paramserver store choice: full softmax under DDP, hf through an auto-started
paramserver, N→M resume. The default, sharded store: test_sharded_train.py."""

from __future__ import annotations

import pytest

from dcs_cli.config import load_config
from dcs_cli.train.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, store_snapshot_path
from dcs_cli.train.metrics import read_metrics
from dcs_cli.train.runner import resolve_config, run_train

TWO = ["dist.nproc=2", "dist.master_port=0", "dist.backend=gloo"]
PARAMSERVER = ["dist.class_store=paramserver"]


def test_full_mode_under_ddp(tmp_path, synthetic_config, tiny):
    summary = run_train(load_config(synthetic_config, tiny(tmp_path / "ddp", "full", epochs=2) + TWO + PARAMSERVER))
    assert summary["workers"] == 2 and summary["steps"] == 2 * 25  # 1,600 samples / (2 ranks × 32)
    assert summary["val_top1"] > 0.3, summary  # chance: 0.005
    rows = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: rank 0
    state = load_checkpoint(checkpoint_path(tmp_path / "ddp", 2))
    assert state["classifier"]["weight"].shape == (200, 32)


def test_hf_through_paramserver_then_resume_on_one_worker(tmp_path, synthetic_config, tiny):
    run = tmp_path / "hf2"
    summary = run_train(load_config(synthetic_config, tiny(run, "hf", epochs=1) + TWO + PARAMSERVER))
    assert summary["workers"] == 2 and summary["steps"] == 25
    ckpt = checkpoint_path(run, 1)
    state = load_checkpoint(ckpt)
    assert state["store"]["snapshot"] == store_snapshot_path(ckpt).name and store_snapshot_path(ckpt).is_file()

    cfg, state = resolve_config(None, ["dist.nproc=1", "optim.epochs=3"], str(ckpt))
    summary = run_train(cfg, resume=state)
    assert summary["workers"] == 1 and summary["steps"] == 25 + 2 * 50  # one worker: 50 steps per epoch
    assert summary["val_top1"] > 0.4, summary
    assert [p.name for p in list_checkpoints(run)][-1] == "epoch_003.pt"


@pytest.mark.slow
def test_sampled_checkpoint_from_one_worker_resumes_on_two(tmp_path, synthetic_config, tiny):
    run = tmp_path / "r"
    run_train(load_config(synthetic_config, tiny(run, "random", epochs=1)))
    cfg, state = resolve_config(None, TWO + PARAMSERVER + ["optim.epochs=2"], str(run))
    summary = run_train(cfg, resume=state)
    assert summary["steps"] == 50 + 25 and summary["val_top1"] > 0.2
