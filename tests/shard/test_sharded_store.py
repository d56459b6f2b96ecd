"""ShardedStore in one process (ranks simulated): init, ownership, updates, state, and a one-rank step."""

from __future__ import annotations

import pytest
import torch

from dcs_cli.errors import ConfigError, DataError
from dcs_cli.models.heads import CosFaceHead
from dcs_cli.selection.full import FullSelector
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.sampled import SampledSoftmax
from dcs_cli.selection.sharded_store import ShardedStore, init_rows, shard_range
from dcs_cli.selection.store import OptimParams
from dcs_cli.train.sharded_softmax import ShardedSoftmax

PARAMS = OptimParams(lr=0.5, momentum=0.9, weight_decay=1e-3)


@pytest.mark.parametrize("init", ["normal", "uniform"])
@pytest.mark.parametrize(("n", "d"), [(1, 3), (5, 3), (41, 7), (37, 16), (100, 13), (3, 17), (1000, 5)])
def test_init_rows_equal_local_store_rows(init, n, d):
    full = LocalStore(n, d, init=init, init_std=0.2, seed=7).weight
    for world in (1, 2, 3, 4):
        if world > n:
            continue
        for rank in range(world):
            lo, hi = shard_range(n, world, rank)
            assert torch.equal(init_rows(n, d, lo, hi, init, 0.2, 7), full[lo:hi]), (world, rank)
    assert torch.equal(init_rows(n, d, n - 1, n, init, 0.2, 7), full[n - 1:])  # the redrawn tail alone


def test_shards_partition_the_classes_and_refuse_foreign_rows():
    n, world = 103, 4
    stores = [ShardedStore(n, 4, rank=r, world=world) for r in range(world)]
    assert [s.lo for s in stores] == [0] + [s.hi for s in stores[:-1]] and stores[-1].hi == n
    assert max(s.shard_size for s in stores) - min(s.shard_size for s in stores) <= 1
    s1 = stores[1]
    assert s1.owns(torch.tensor([s1.lo - 1, s1.lo, s1.hi - 1, s1.hi])).tolist() == [False, True, True, False]
    with pytest.raises(DataError, match="outside its shard"):
        s1.rows(torch.tensor([s1.lo, s1.hi]))
    with pytest.raises(DataError, match="outside its shard"):
        s1.push(torch.tensor([0]), torch.zeros(1, 4))
    with pytest.raises(ConfigError):
        ShardedStore(3, 4, rank=0, world=4)
    with pytest.raises(ConfigError):
        ShardedStore(10, 4, rank=2, world=2)


def test_push_updates_exactly_the_pushed_rows_like_local_store():
    n, d = 50, 6
    local = LocalStore(n, d, seed=1, params=PARAMS, bias=True)
    shard = ShardedStore(n, d, rank=1, world=2, seed=1, params=PARAMS, bias=True)
    before = shard.weight.clone()
    gen = torch.Generator().manual_seed(0)
    for ids in ([26, 30, 49], [30, 27], [49]):
        ids = torch.tensor(ids)
        g, gb = torch.randn(len(ids), d, generator=gen), torch.randn(len(ids), generator=gen)
        local.push(ids, g, gb)
        shard.push(ids, g, gb)
    touched = torch.tensor([26, 27, 30, 49]) - shard.lo
    untouched = torch.ones(shard.shard_size, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(shard.weight[untouched], before[untouched])
    assert torch.equal(shard.momentum[untouched], torch.zeros_like(shard.momentum[untouched]))
    w, b = shard.rows(torch.tensor([26, 30, 49]))
    lw, lb = local.rows(torch.tensor([26, 30, 49]))
    assert torch.equal(w, lw) and torch.equal(b, lb)
    state, lstate = shard.state_dict(), local.state_dict()  # both settle their rows first
    assert torch.equal(state["weight"], lstate["weight"][shard.lo:])
    assert torch.equal(state["momentum"], lstate["momentum"][shard.lo:])


@pytest.mark.parametrize("catch_up", [False, True])
def test_bf16_momentum_stays_close_to_float32(catch_up):
    n, d = 40, 8
    exact = ShardedStore(n, d, rank=0, world=1, params=PARAMS, catch_up=catch_up)
    half = ShardedStore(n, d, rank=0, world=1, params=PARAMS, momentum_dtype="bfloat16", catch_up=catch_up)
    assert half.momentum.dtype == torch.bfloat16 and half.weight.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = torch.randperm(n, generator=gen)[:10]
        g = torch.randn(10, d, generator=gen)
        torch.testing.assert_close(half.current_rows(ids)[0], exact.current_rows(ids)[0], atol=2e-2, rtol=0)
        exact.push(ids, g)
        half.push(ids, g)
    exact.settle()
    half.settle()  # with catch-up: every row's bf16 momentum goes through the widened catch-up
    assert not torch.equal(half.weight, exact.weight)  # it is rounded...
    torch.testing.assert_close(half.weight, exact.weight, atol=2e-2, rtol=0)  # ...and stays close (lr 0.5)
    with pytest.raises(ConfigError, match="momentum dtype"):
        ShardedStore(n, d, rank=0, world=1, momentum_dtype="float16")


def test_load_whole_table_state_slices_it():
    local = LocalStore(30, 4, seed=2, params=PARAMS)
    local.push(torch.tensor([1, 20]), torch.ones(2, 4))
    shard = ShardedStore(30, 4, rank=1, world=2, seed=99)
    shard.load_state_dict(local.state_dict())
    assert torch.equal(shard.weight, local.weight[15:]) and torch.equal(shard.momentum, local.momentum[15:])
    other = ShardedStore(30, 4, rank=0, world=2)
    with pytest.raises(DataError, match="not this rank's shard"):
        other.load_state_dict(shard.state_dict())
    with pytest.raises(DataError, match="use the config"):
        ShardedStore(31, 4, rank=0, world=2).load_state_dict(local.state_dict())


def test_local_view_is_the_shard_in_local_ids():
    shard = ShardedStore(30, 4, rank=1, world=2)
    view = shard.local_view()
    assert view.num_classes == 15 and torch.equal(view.rows(torch.tensor([0]))[0], shard.rows(torch.tensor([15]))[0])
    assert view.weights().shape == (15, 4)


@pytest.mark.parametrize("head", ["softmax", "cosface"])
def test_one_rank_sharded_softmax_equals_sampled_softmax(head):
    """World 1 (no process group): the distributed cross-entropy must reduce to F.cross_entropy."""
    from dcs_cli.models.heads import SoftmaxHead

    make = (lambda: SoftmaxHead()) if head == "softmax" else (lambda: CosFaceHead(16.0, 0.35))
    n, d, b = 30, 8, 6
    gen = torch.Generator().manual_seed(0)
    local = LocalStore(n, d, seed=4, init_std=0.3, params=PARAMS)
    shard = ShardedStore(n, d, rank=0, world=1, seed=4, init_std=0.3, params=PARAMS)
    ref = SampledSoftmax(FullSelector(n), local, make())
    mine = ShardedSoftmax(FullSelector(n), shard, make())
    for _ in range(2):
        x = torch.randn(b, d, generator=gen)
        y = torch.randint(0, n, (b,), generator=gen)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, _ = ref(xa, y)
        lb, stats = mine(xb, y)
        la.backward()
        lb.backward()
        ref.push()
        mine.push()
        assert float(lb.detach()) == pytest.approx(float(la.detach()), rel=1e-6)
        torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=1e-5)
        assert stats["active"] == n
    torch.testing.assert_close(shard.weight, local.weight, atol=1e-6, rtol=1e-5)


def test_one_rank_tail_estimate_equals_sampled_softmax():
    """The inactive classes' estimated mass (drawn, not exact: 16 of ~160) and the rows' gradient it
    shapes match the one-process classifier (world 1)."""
    from dcs_cli.models.heads import SoftmaxHead
    from dcs_cli.selection.random_sel import RandomSelector
    from dcs_cli.train.sharded_softmax import ShardedClassifier

    n, d, b = 200, 8, 6
    gen = torch.Generator().manual_seed(0)
    local = LocalStore(n, d, seed=4, init_std=0.3, params=PARAMS)
    shard = ShardedStore(n, d, rank=0, world=1, seed=4, init_std=0.3, params=PARAMS)
    ref = SampledSoftmax(RandomSelector(n, 40, seed=1), local, SoftmaxHead(), tail_samples=16)
    mine = ShardedClassifier(RandomSelector(n, 40, seed=1), shard, SoftmaxHead(), tail_samples=16)
    for _ in range(3):
        x = torch.randn(b, d, generator=gen) * 3
        y = torch.randint(0, n, (b,), generator=gen)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, stats = ref(xa, y)
        lb, correct, _ = mine.loss(xb, y)
        assert stats["random_fill"] > 0 and stats["tail"] == 16
        la.backward()
        lb.backward()
        ref.push()
        mine.after_step()
        assert float(lb.detach()) == pytest.approx(float(la.detach()), rel=1e-6)
        torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shard.weight, local.weight, atol=1e-6, rtol=1e-5)
