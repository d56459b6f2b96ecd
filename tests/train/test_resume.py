"""A run killed mid-epoch resumes from its last checkpoint and then logs what an uninterrupted run logs."""

from __future__ import annotations

import pytest

from dcs_cli.config import load_config
from dcs_cli.train.checkpoint import checkpoint_path, list_checkpoints
from dcs_cli.train.metrics import read_metrics
from dcs_cli.train.runner import resolve_config, run_train

TIMING = {"samples_per_s", "refresh_seconds", "build_seconds"}  # wall-clock figures differ run to run


def _deterministic(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("mode,head", [("hf", "softmax"), ("full", "softmax"), ("random", "cosface")])
def test_killed_run_resumes_exactly(tmp_path, synthetic_config, tiny, mode, head):
    # random/cosface: the random fill and the tail draws (selection.tail_samples, auto-on for cosface)
    sets = [f"head.type={head}"]
    straight = tmp_path / "straight"
    run_train(load_config(synthetic_config, tiny(straight, mode, epochs=3) + sets))

    killed = tmp_path / "killed"
    summary = run_train(load_config(synthetic_config, tiny(killed, mode, epochs=3) + sets), stop_after_steps=75)
    assert summary["stopped"] and summary["steps"] == 75
    assert [p.name for p in list_checkpoints(killed)] == ["epoch_001.pt"]  # the kill lost half of epoch 2
    assert max(r["step"] for r in read_metrics(killed / "metrics.jsonl")) == 70  # logged every 10 steps

    cfg, state = resolve_config(None, [], str(checkpoint_path(killed, 1)))
    assert cfg.output.dir == str(killed.resolve())
    run_train(cfg, resume=state)

    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert _deterministic(a) == _deterministic(b)


def test_resume_refuses_a_finished_run(tmp_path, synthetic_config, tiny):
    from dcs_cli.errors import ConfigError

    run_train(load_config(synthetic_config, tiny(tmp_path / "r", "random", epochs=1)))
    with pytest.raises(ConfigError, match="optim.epochs"):
        cfg, state = resolve_config(None, [], str(tmp_path / "r"))
        run_train(cfg, resume=state)


def test_a_checkpoint_with_the_keys_no_longer_written_resumes_in_place(tmp_path, synthetic_config, tiny, monkeypatch):
    """Checkpoints of earlier versions carry rng, scheduler, world_size and the selector's generator state;
    they still resume. One process resumes on the data and checkpoint `run_train` opened: the loop opens
    neither again."""
    import torch

    import dcs_cli.train.loop as loop
    from dcs_cli.torchfile import save_torch_file
    from dcs_cli.train.checkpoint import load_checkpoint

    run = tmp_path / "old"
    run_train(load_config(synthetic_config, tiny(run, "random", epochs=1)))
    ckpt = checkpoint_path(run, 1)
    state = load_checkpoint(ckpt)
    refreshes = state["selector"]["_refreshes"]
    state.pop("_path")
    state.update(scheduler={"epoch": 1, "step": state["step"], "kind": "cosine"}, rng={"torch": torch.get_rng_state()},
                 world_size=1, selector={"generator": torch.Generator().get_state(), "_refreshes": refreshes})
    save_torch_file(state, ckpt)

    def opened_again(*args, **kwargs):
        raise AssertionError("the loop opened what run_train had already opened")

    monkeypatch.setattr(loop, "build_data", opened_again)
    monkeypatch.setattr(loop, "load_checkpoint", opened_again)
    cfg, state = resolve_config(None, ["optim.epochs=2"], str(run))
    summary = run_train(cfg, resume=state)
    assert summary["steps"] == 2 * 50 and summary["val_top1"] > 0.2, summary


def test_resuming_an_earlier_epoch_removes_the_later_checkpoints_with_its_first(tmp_path, synthetic_config, tiny):
    """The later checkpoints belong to the abandoned run: a resume that fails before saving keeps them; its
    first checkpoint removes them, so a kill after it leaves nothing a plain --resume would mistake for its
    progress (and `keep_checkpoints` never prunes the new checkpoint as the oldest)."""
    run = tmp_path / "r"
    run_train(load_config(synthetic_config, tiny(run, "random", epochs=3) + ["output.keep_checkpoints=0"]))
    assert len(list_checkpoints(run)) == 3 and (run / "summary.json").exists()
    cfg, state = resolve_config(None, [], str(checkpoint_path(run, 1)))
    assert run_train(cfg, resume=state, stop_after_steps=75)["stopped"]  # killed in epoch 2: nothing saved
    assert len(list_checkpoints(run)) == 3 and not (run / "summary.json").exists()  # no longer finished
    cfg, state = resolve_config(None, ["output.keep_checkpoints=1"], str(checkpoint_path(run, 1)))
    assert run_train(cfg, resume=state, stop_after_steps=125)["stopped"]  # killed in epoch 3, after saving 2
    assert [p.name for p in list_checkpoints(run)] == ["epoch_002.pt"]  # this run's; 3 stale, 1 pruned


def test_resume_applies_the_new_momentum_and_weight_decay_to_the_backbone(tmp_path, synthetic_config, tiny):
    from dcs_cli.train.dist import DistContext
    from dcs_cli.train.parts import build_parts

    run = tmp_path / "r"
    run_train(load_config(synthetic_config, tiny(run, "random", epochs=1)))
    cfg, state = resolve_config(None, ["optim.epochs=2", "optim.momentum=0.5", "optim.weight_decay=0.05"], str(run))
    parts = build_parts(cfg, 200, (32,), DistContext(), state)
    try:
        assert {(g["momentum"], g["weight_decay"]) for g in parts.optimizer.param_groups} == {(0.5, 0.05)}
        assert any(s.get("momentum_buffer") is not None for s in parts.optimizer.state.values())  # velocities kept
    finally:
        parts.close()
