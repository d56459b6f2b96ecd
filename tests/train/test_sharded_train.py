"""`dcs train --nproc 2` on the default, sharded class store (gloo): every mode, checkpoints as shards plus a
manifest, and resumes onto another number of processes (2 → 1, 1 → 2), in sampled and full mode."""

from __future__ import annotations

import pytest

from dcs_cli.config import load_config
from dcs_cli.errors import ConfigError
from dcs_cli.train.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    store_folder_path,
    store_snapshot_path,
)
from dcs_cli.train.class_store import class_store_kind
from dcs_cli.train.runner import resolve_config, run_train
from dcs_cli.train.shard_checkpoint import read_manifest

TWO = ["dist.nproc=2", "dist.master_port=0", "dist.backend=gloo", "dist.threads=1"]
ONE = ["dist.nproc=1", "dist.threads=1"]


def test_store_choice(synthetic_config):
    def kind(world, *sets):
        return class_store_kind(load_config(synthetic_config, list(sets)), world)

    assert kind(1) == "local" and kind(2) == "sharded"
    assert kind(2, "paramserver.address=tcp://127.0.0.1:5570") == "paramserver"
    assert kind(2, "dist.class_store=paramserver") == "paramserver"
    assert kind(1, "dist.class_store=sharded") == "sharded"
    assert kind(2, "dist.class_store=sharded", "paramserver.address=tcp://127.0.0.1:5570") == "sharded"
    assert kind(1, "optim.momentum_dtype=bfloat16") == "sharded"
    with pytest.raises(ConfigError, match="optim.momentum_dtype"):
        kind(2, "dist.class_store=paramserver", "optim.momentum_dtype=bfloat16")


def _assert_sharded(run, epoch: int, world: int) -> dict:
    ckpt = checkpoint_path(run, epoch)
    state = load_checkpoint(ckpt)
    folder = store_folder_path(ckpt)
    assert state["store"] == {"sharded": folder.name, "step": state["step"]}
    assert not store_snapshot_path(ckpt).exists()  # no paramserver was involved
    assert state["classifier"] is None
    assert read_manifest(folder)["world_size"] == world
    return state


@pytest.mark.slow
def test_hf_sharded_on_two_then_resume_on_one(tmp_path, synthetic_config, tiny):
    run = tmp_path / "hf"
    summary = run_train(load_config(synthetic_config, tiny(run, "hf", epochs=2) + TWO +
                                    ["output.keep_checkpoints=1"]))
    assert summary["workers"] == 2 and summary["steps"] == 2 * 25
    assert summary["val_top1"] > 0.3, summary  # chance: 0.005
    _assert_sharded(run, 2, world=2)
    assert not store_folder_path(checkpoint_path(run, 1)).exists()  # pruned with its checkpoint

    cfg, state = resolve_config(None, ONE + ["optim.epochs=3"], str(run))
    summary = run_train(cfg, resume=state)
    assert summary["workers"] == 1 and summary["steps"] == 50 + 50
    assert summary["val_top1"] > 0.4, summary
    assert load_checkpoint(checkpoint_path(run, 3))["store"]["weight"].shape == (200, 32)  # in-process store


@pytest.mark.slow
def test_full_sharded_on_two_then_resume_on_one(tmp_path, synthetic_config, tiny):
    run = tmp_path / "full"
    summary = run_train(load_config(synthetic_config, tiny(run, "full", epochs=1) + TWO))
    assert summary["workers"] == 2 and summary["steps"] == 25
    _assert_sharded(run, 1, world=2)

    cfg, state = resolve_config(None, ONE + ["optim.epochs=2"], str(run))
    summary = run_train(cfg, resume=state)  # the shards become the FullClassifier and its momentum
    assert summary["workers"] == 1 and summary["steps"] == 25 + 50
    assert summary["val_top1"] > 0.3, summary
    assert load_checkpoint(checkpoint_path(run, 2))["classifier"]["weight"].shape == (200, 32)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "random"])
def test_one_process_checkpoint_resumes_sharded_on_two(tmp_path, synthetic_config, tiny, mode):
    run = tmp_path / mode
    run_train(load_config(synthetic_config, tiny(run, mode, epochs=1) + ONE))
    cfg, state = resolve_config(None, TWO + ["optim.epochs=2"], str(run))
    summary = run_train(cfg, resume=state)
    assert summary["workers"] == 2 and summary["steps"] == 50 + 25
    assert summary["val_top1"] > (0.3 if mode == "full" else 0.15), summary  # chance: 0.005
    _assert_sharded(run, 2, world=2)
    assert [p.name for p in list_checkpoints(run)] == ["epoch_001.pt", "epoch_002.pt"]


def test_a_sampled_budget_too_tight_for_uneven_shards_is_warned(synthetic_config, tiny, tmp_path, monkeypatch):
    from dcs_cli.train import runner

    said = []
    monkeypatch.setattr(runner.console, "warn", said.append)
    runner.check_run(load_config(synthetic_config, tiny(tmp_path, "hf") + ["data.batch_size=16",
                                                                         "selection.sample_num=20"]), world=2)
    assert len(said) == 1 and "raise sample_num to 24 or more" in said[0]
    said.clear()
    runner.check_run(load_config(synthetic_config, tiny(tmp_path, "hf") + ["data.batch_size=16",
                                                                         "selection.sample_num=24"]), world=2)
    assert said == []
