"""Sharded class-store checkpoints: save on W ranks, load on M (1 = a LocalStore), only the needed files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from shard_workers import run_ranks, save_worker  # noqa: E402

from dcs_cli.errors import DataError  # noqa: E402
from dcs_cli.selection.local_store import LocalStore  # noqa: E402
from dcs_cli.selection.sharded_store import ShardedStore  # noqa: E402
from dcs_cli.selection.store import OptimParams  # noqa: E402
from dcs_cli.train import shard_checkpoint  # noqa: E402
from dcs_cli.train.shard_checkpoint import (  # noqa: E402
    MANIFEST,
    load_store,
    local_state_dict,
    save_shard,
    save_sharded_store,
    write_manifest,
)

PARAMS = OptimParams(lr=0.5, momentum=0.9, weight_decay=1e-3)
N, D = 30, 4


def trained_shards(world: int, bias: bool = False, momentum_dtype: str = "float32") -> list[ShardedStore]:
    stores = [ShardedStore(N, D, rank=r, world=world, seed=5, params=PARAMS, bias=bias,
                           momentum_dtype=momentum_dtype) for r in range(world)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for s in stores:  # one push per rank per step, as in training
            ids = s.lo + torch.randperm(s.shard_size, generator=gen)[:3]
            s.push(ids, torch.randn(3, D, generator=gen), torch.randn(3, generator=gen) if bias else None)
    return stores


def save_simulated(stores, folder: Path) -> None:
    """What save_sharded_store does on each rank, without a process group (loading is file-level)."""
    entries = [save_shard(s.state_dict(), folder) for s in stores]
    write_manifest(folder, entries, stores[0].state_dict())


def whole(stores) -> dict:
    states = [s.state_dict() for s in stores]
    return {k: torch.cat([st[k] for st in states]) for k in ("weight", "momentum")}


@pytest.mark.parametrize("bias", [False, True])
def test_two_shards_resume_on_one_and_on_three(tmp_path, bias):
    stores = trained_shards(2, bias)
    save_simulated(stores, tmp_path)
    want = whole(stores)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and [(e["lo"], e["hi"]) for e in manifest["shards"]] == [(0, 15), (15, 30)]

    one = LocalStore(N, D, seed=123, bias=bias)  # 2 → 1
    load_store(one, tmp_path)
    assert torch.equal(one.weight, want["weight"]) and torch.equal(one.momentum, want["momentum"])
    assert one.steps == 3 and one.get_optim() == PARAMS
    if bias:
        assert torch.equal(one.bias, torch.cat([s.bias for s in stores]))

    three = [ShardedStore(N, D, rank=r, world=3, seed=123, bias=bias) for r in range(3)]  # 2 → 3
    for s in three:
        load_store(s, tmp_path)
        assert torch.equal(s.weight, want["weight"][s.lo:s.hi]) and s.steps == 3
        assert torch.equal(s.momentum, want["momentum"][s.lo:s.hi])
    assert torch.equal(local_state_dict(tmp_path)["weight"], want["weight"])


def test_one_process_store_resumes_on_two(tmp_path):
    local = LocalStore(N, D, seed=5, params=PARAMS)
    local.push(torch.tensor([3, 17, 29]), torch.ones(3, D))
    assert save_sharded_store(local, tmp_path) == tmp_path / MANIFEST
    for r in range(2):
        s = ShardedStore(N, D, rank=r, world=2)
        load_store(s, tmp_path)
        assert torch.equal(s.weight, local.weight[s.lo:s.hi]) and torch.equal(s.momentum, local.momentum[s.lo:s.hi])


def test_loading_opens_only_the_overlapping_shards(tmp_path, monkeypatch):
    save_simulated(trained_shards(2), tmp_path)
    opened = []
    real = shard_checkpoint._open_shard
    monkeypatch.setattr(shard_checkpoint, "_open_shard", lambda p, e, v: opened.append(p.name) or real(p, e, v))
    load_store(ShardedStore(N, D, rank=0, world=3), tmp_path)  # rows 0..9: shard 0 only
    assert opened == ["store_shard_000_of_002.pt"]
    opened.clear()
    load_store(ShardedStore(N, D, rank=1, world=3), tmp_path)  # rows 10..19 straddle both
    assert opened == ["store_shard_000_of_002.pt", "store_shard_001_of_002.pt"]


def test_bf16_momentum_shards_load_into_a_float32_store(tmp_path):
    stores = trained_shards(2, momentum_dtype="bfloat16")
    save_simulated(stores, tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["momentum_dtype"] == "torch.bfloat16"
    one = LocalStore(N, D)
    load_store(one, tmp_path)
    assert one.momentum.dtype == torch.float32
    assert torch.equal(one.momentum, torch.cat([s.momentum.float() for s in stores]))


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no store_manifest.json"):
        load_store(LocalStore(N, D), tmp_path)
    save_simulated(trained_shards(2), tmp_path)
    with pytest.raises(DataError, match="use the config"):
        load_store(LocalStore(N + 1, D), tmp_path)
    shard = tmp_path / "store_shard_001_of_002.pt"
    state = torch.load(shard, weights_only=True)
    state["weight"][0, 0] += 1.0  # a silent change the content checksum must catch
    torch.save(state, shard)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_store(ShardedStore(N, D, rank=1, world=2), tmp_path)
    load_store(ShardedStore(N, D, rank=0, world=2), tmp_path)  # the intact shard alone still loads
    (tmp_path / "store_shard_000_of_002.pt").unlink()
    with pytest.raises(DataError, match="shard file missing"):
        load_store(ShardedStore(N, D, rank=0, world=2), tmp_path)


@pytest.mark.slow
def test_two_ranks_save_collectively_and_one_process_loads(tmp_path):
    folder = tmp_path / "ckpt"
    spec = {"classes": N, "dim": D, "head": "softmax", "folder": str(folder)}
    ranks = run_ranks(save_worker, 2, tmp_path / "ranks", spec)
    assert ranks[0]["manifest"] == str(folder / MANIFEST) and ranks[1]["manifest"] is None
    one = LocalStore(N, D)
    load_store(one, folder)
    assert torch.equal(one.weight, torch.cat([r["state"]["weight"] for r in ranks]))
    assert torch.equal(one.momentum, torch.cat([r["state"]["momentum"] for r in ranks]))
