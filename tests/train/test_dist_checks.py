"""Launch layouts refused up front, each as one line: master_addr/port node 0 cannot listen on, and more
workers on a node than GPUs under NCCL (no GPU here: CUDA is faked)."""

import errno
import socket

import pytest
import torch
import torch.distributed as dist

from dcs_cli.errors import DistError
from dcs_cli.train import check_dist as check_dist_mod
from dcs_cli.train import dist as dist_mod
from dcs_cli.train.check_dist import check_dist
from dcs_cli.train.dist import LaunchSpec, free_port

FOREIGN = "192.0.2.1"  # TEST-NET-1: never an address of this machine


def _not_local():
    with socket.socket() as s:
        try:
            s.bind((FOREIGN, 0))
        except OSError as exc:
            return exc.errno == errno.EADDRNOTAVAIL
    return False


@pytest.mark.skipif(not _not_local(), reason=f"{FOREIGN} is an address of this machine")
@pytest.mark.parametrize("port", [0, 29999])
def test_a_master_addr_of_another_machine_is_named(port):
    spec = LaunchSpec(nproc=2, master_addr=FOREIGN, master_port=port)
    with pytest.raises(DistError, match=f"master_addr {FOREIGN} is not an address of this machine") as err:
        spec.check()
    assert "\n" not in str(err.value) and "in use" not in str(err.value)
    with pytest.raises(DistError, match="not an address of this machine"):
        free_port(FOREIGN)


def test_a_port_in_use_is_still_named():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(DistError, match=f"port {port} on 127.0.0.1 is in use"):
            LaunchSpec(nproc=2, master_port=port).check()
    LaunchSpec(nproc=2, master_port=port).check()  # free again


@pytest.fixture
def one_fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device before the check"))
    monkeypatch.setattr(check_dist_mod, "launch", lambda *a, **k: pytest.fail("workers launched"))


@pytest.mark.parametrize("backend", ["auto", "nccl"])
def test_more_workers_than_gpus_under_nccl_is_refused(one_fake_gpu, backend):
    """`dcs train --nproc` and `dcs check-dist` refuse before any worker starts (a launcher that shows each
    rank one GPU of its own is another layout: its ranks are not checked)."""
    from pathlib import Path

    from dcs_cli.config import load_config
    from dcs_cli.train.runner import check_run

    config = Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml"
    cfg = load_config(config, ["dist.nproc=2", f"dist.backend={backend}"])
    with pytest.raises(DistError, match=r"2 workers on this node but 1 GPU\(s\) visible.*--nproc 1 or fewer.*"
                                        r"dist.backend=gloo"):
        check_run(cfg, 2)
    with pytest.raises(DistError, match="NCCL needs a GPU per worker"):
        check_dist(LaunchSpec(nproc=2), backend=backend, sizes=[1024], iters=1)


def test_one_worker_per_gpu_or_gloo_passes_the_check():
    dist_mod.check_gpu_per_worker("gloo", 8)
    dist_mod.check_gpu_per_worker("nccl", 1)


def test_each_worker_gets_its_share_of_the_cores_whatever_its_device(monkeypatch):
    # (a GPU worker kept the launcher's OMP_NUM_THREADS=1: one core for its index queries and re-ranking)
    import os

    from dcs_cli import cpus
    from dcs_cli.config import load_config
    from dcs_cli.train.loop import _threads

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr(cpus, "available_cpus", lambda: set(range(64)))  # of a 128-core node (taskset, Slurm)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert _threads(load_config(None, [])) == 8
    assert _threads(load_config(None, ["dist.threads=3"])) == 3
