"""A run whose start fails after rank 0 started its own paramserver stops that server (a process of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dcs_cli.paramserver.launcher as launcher
import dcs_cli.train.class_store as class_store
from dcs_cli.config import load_config
from dcs_cli.errors import DataError
from dcs_cli.train.dist import DistContext

REPO = Path(__file__).resolve().parents[2]


def test_a_failed_resume_stops_the_runs_paramserver(monkeypatch, tmp_path):
    started = []

    def spy(*args, **kwargs):
        server = real_start(*args, **kwargs)
        started.append(server)
        return server

    real_start = launcher.start_background
    monkeypatch.setattr(launcher, "start_background", spy)
    # rank 0 of a two-rank world, in one process: the collectives have nobody to wait for
    monkeypatch.setattr(class_store.dist, "broadcast_object_list", lambda obj, src=0: None)
    monkeypatch.setattr(class_store, "barrier", lambda: None)
    cfg = load_config(REPO / "configs" / "synthetic.yaml", ["dist.class_store=paramserver", "selection.mode=random"])
    resume = {"store": {"snapshot": "epoch_001.store.pt", "step": 5}, "_path": str(tmp_path / "epoch_001.pt")}
    try:
        with pytest.raises(DataError, match="class-store snapshot"):
            class_store.build_class_store(cfg, 100, DistContext(rank=0, world_size=2), resume, 0.1)
        assert len(started) == 1 and not started[0].running()
    finally:
        for server in started:
            server.stop()
