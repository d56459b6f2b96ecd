"""`resolve_config`: the run's config from a checkpoint, a YAML file, `--set` overrides and typed settings."""

from __future__ import annotations

import pytest

from dcs_cli.config import load_config, to_dict
from dcs_cli.errors import ConfigError
from dcs_cli.train.checkpoint import save_checkpoint
from dcs_cli.train.runner import resolve_config


def test_typed_settings_override_the_sets(synthetic_config):
    cfg, state = resolve_config(synthetic_config, ["selection.mode=hf", "dist.nproc=3"], None,
                                {"selection.mode": "random", "dist.nproc": None, "dist.master_port": 0})
    assert state is None
    assert (cfg.selection.mode, cfg.dist.nproc, cfg.dist.master_port) == ("random", 3, 0)


def test_typed_values_are_taken_as_they_are(synthetic_config):
    """A value is not read as YAML: a folder named like a mapping, or with a `#`, stays the folder."""
    cfg, _ = resolve_config(synthetic_config, [], None, {"output.dir": "runs/a: b #1", "dist.master_addr": "on"})
    assert cfg.output.dir == "runs/a: b #1" and cfg.dist.master_addr == "on"


def test_typed_values_are_checked_like_sets(synthetic_config):
    with pytest.raises(ConfigError, match="selection.mode = 'nope' is not valid"):
        resolve_config(synthetic_config, [], None, {"selection.mode": "nope"})
    with pytest.raises(ConfigError, match="dist.node_rank must be in"):
        resolve_config(synthetic_config, [], None, {"dist.node_rank": 1})


def test_sets_and_typed_values_are_validated_once_together(synthetic_config):
    """`--set dist.node_rank=1 --nnodes 2`: valid as a whole, though the --set alone would not be."""
    cfg, _ = resolve_config(synthetic_config, ["dist.node_rank=1"], None, {"dist.nnodes": 2})
    assert (cfg.dist.node_rank, cfg.dist.nnodes) == (1, 2)


def test_a_config_or_a_checkpoint_is_needed():
    with pytest.raises(ConfigError, match="--config"):
        resolve_config(None, [], None, {"selection.mode": "hf"})


@pytest.fixture
def checkpoint_run(tmp_path, synthetic_config):
    run = tmp_path / "run"
    config = to_dict(load_config(synthetic_config, ["output.dir=elsewhere"]))
    save_checkpoint(run, 1, {"backbone": {}, "config": config, "epoch": 1, "step": 10, "optimizer": {}})
    (run / "config.yaml").write_text("# a run folder holds its config.yaml\n")
    return run


def test_resume_continues_in_the_checkpoint_run_folder(checkpoint_run, synthetic_config):
    cfg, state = resolve_config(None, [], str(checkpoint_run))
    assert cfg.output.dir == str(checkpoint_run.resolve()) and state["epoch"] == 1
    cfg, _ = resolve_config(synthetic_config, [], str(checkpoint_run))  # the YAML's output.dir too
    assert cfg.output.dir == str(checkpoint_run.resolve())


def test_resume_into_another_folder(checkpoint_run, tmp_path):
    for sets, settings in ((["output.dir=x"], None), (["output={dir: x}"], None), ([], {"output.dir": "x"}),
                           (["output.dir=y"], {"output.dir": "x"})):
        cfg, _ = resolve_config(None, sets, str(checkpoint_run), settings)
        assert cfg.output.dir == "x", (sets, settings)
