"""`dcs check-dist`: two gloo workers all-reduce correctly; a corrupted rank is caught."""

from __future__ import annotations

import pytest

from dcs_cli.cli.app import app
from dcs_cli.errors import DistError, UsageError
from dcs_cli.train.check_dist import check_dist, parse_sizes
from dcs_cli.train.dist import LaunchSpec, free_port


def test_check_dist_two_workers_pass(runner):
    result = runner.invoke(app, ["check-dist", "--nproc", "2", "--backend", "gloo", "--sizes", "1K,64K",
                                 "--iters", "3"])
    assert result.exit_code == 0, result.output
    assert "64K" in result.output and "True" in result.output and "False" not in result.output


def test_corrupted_rank_fails_the_check():
    rows = check_dist(LaunchSpec(nproc=2), backend="gloo", sizes=[4096], iters=1, corrupt_rank=1)
    assert [r["ok"] for r in rows] == [False]


def test_parse_sizes():
    assert parse_sizes("1K,1M, 25M,10") == [1024, 1 << 20, 25 << 20, 12]
    with pytest.raises(UsageError):
        parse_sizes("1K,lots")


def test_nccl_without_gpu_is_a_one_line_error(runner):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    result = runner.invoke(app, ["check-dist", "--nproc", "2", "--backend", "nccl"])
    assert result.exit_code == 1
    assert "needs CUDA" in result.output


def test_port_in_use_gives_a_hint():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(DistError, match="in use"):
            check_dist(LaunchSpec(nproc=2, master_port=port), backend="gloo", sizes=[1024], iters=1)


def test_node_rank_outside_nnodes_is_a_usage_error(runner):
    result = runner.invoke(app, ["check-dist", "--nproc", "1", "--nnodes", "2", "--node-rank", "5"])
    assert result.exit_code == 2
    assert "--node-rank 5 must be in [0, --nnodes 2)" in result.output


def test_sizes_beyond_the_free_memory_are_refused_before_workers_start(runner, monkeypatch):
    from dcs_cli.train import check_dist

    monkeypatch.setattr(check_dist, "mem_available", lambda: 1 << 30)
    monkeypatch.setattr(check_dist, "launch", lambda *a: pytest.fail("workers started"))
    result = runner.invoke(app, ["check-dist", "--nproc", "2", "--backend", "gloo", "--sizes", "1G"])
    assert result.exit_code == 2 and "GiB is free; lower --sizes" in result.output
