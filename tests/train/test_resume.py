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


@pytest.mark.parametrize("mode", ["hf", "full"])
def test_killed_run_resumes_exactly(tmp_path, synthetic_config, tiny, mode):
    straight = tmp_path / "straight"
    run_train(load_config(synthetic_config, tiny(straight, mode, epochs=3)))

    killed = tmp_path / "killed"
    summary = run_train(load_config(synthetic_config, tiny(killed, mode, epochs=3)), stop_after_steps=75)
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
