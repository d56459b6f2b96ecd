"""A sampled store that catches rows up equals dense torch SGD whose unselected rows have zero gradient."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.row_update import RowClock, step_matrix
from dcs_cli.selection.sharded_store import ShardedStore
from dcs_cli.selection.store import OptimParams


def _run(n: int, d: int, steps: int, params: OptimParams, seed: int, catch_up: bool = True, lrs=None,
         kind: str = "local"):
    """Train a store and dense torch SGD alike for `steps` steps (LR `lrs[t]` at step t when given)."""
    gen = torch.Generator().manual_seed(seed)
    store = (LocalStore(n, d, bias=True, params=params, seed=seed, catch_up=catch_up) if kind == "local" else
             ShardedStore(n, d, rank=0, world=1, bias=True, params=params, seed=seed, catch_up=catch_up))
    weight = torch.nn.Parameter(store.weight.clone())
    bias = torch.nn.Parameter(store.bias.clone())
    dense = torch.optim.SGD([weight, bias], lr=params.lr, momentum=params.momentum,
                            weight_decay=params.weight_decay)
    for t in range(steps):
        if lrs is not None:
            store.set_lr(lrs[t])
            for group in dense.param_groups:
                group["lr"] = lrs[t]
        count = int(torch.randint(1, n + 1, (), generator=gen))
        ids = torch.randperm(n, generator=gen)[:count]
        grad_w, grad_b = torch.randn(count, d, generator=gen), torch.randn(count, generator=gen)
        store.push(ids, grad_w, grad_b)
        weight.grad, bias.grad = torch.zeros(n, d), torch.zeros(n)
        weight.grad[ids], bias.grad[ids] = grad_w, grad_b
        dense.step()
    store.settle()
    return store, weight.detach(), bias.detach(), dense.state[weight].get("momentum_buffer")


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), steps=st.integers(1, 25), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.05]), seed=st.integers(0, 1000))
def test_catch_up_equals_dense_sgd_with_zero_gradients(n, steps, momentum, weight_decay, seed):
    params = OptimParams(lr=0.1, momentum=momentum, weight_decay=weight_decay)
    store, weight, bias, velocity = _run(n, 4, steps, params, seed)
    torch.testing.assert_close(store.weight, weight, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(store.bias, bias, atol=2e-5, rtol=1e-4)
    if momentum:
        torch.testing.assert_close(store.momentum, velocity, atol=2e-5, rtol=1e-4)


def test_frozen_rows_differ_from_dense_sgd():
    """Without catch-up (the older lazy rule) skipped rows keep their velocity: not dense SGD."""
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-4)
    store, weight, _, _ = _run(30, 4, 20, params, seed=3, catch_up=False)
    assert (store.weight - weight).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["local", "sharded"])
def test_catch_up_follows_a_changing_lr(kind):
    """Under a warm-up then cosine LR (a new LR every step) each skipped step is caught up at its own LR:
    the store still equals dense SGD. (Catching every gap up at the present LR moved a row pushed once early
    in the warm-up 6x too far.)"""
    import math

    steps = 60
    lrs = [0.1 * (t + 1) / 20 if t < 20 else 0.05 * (1 + math.cos(math.pi * (t - 20) / 40)) for t in range(steps)]
    params = OptimParams(lr=lrs[0], momentum=0.9, weight_decay=5e-4)
    store, weight, bias, velocity = _run(30, 4, steps, params, seed=5, lrs=lrs, kind=kind)
    torch.testing.assert_close(store.weight, weight, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(store.bias, bias, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(store.momentum, velocity, atol=2e-5, rtol=1e-4)


def test_clock_coefficients_are_the_products_of_each_steps_matrix(monkeypatch):
    """A row's catch-up over steps a .. b − 1 is A_{b−1} ··· A_a with each step's own settings, through any
    gap, also after the clock has dropped the products no waiting row needs."""
    monkeypatch.setattr(RowClock, "PRUNE_EVERY", 7)
    settings_at = [OptimParams(lr=0.01 * (1 + t % 5), momentum=0.9, weight_decay=5e-4 * (t % 2)) for t in range(40)]
    clock = RowClock(4)
    last = [0, 0, 0, 0]
    for t, params in enumerate(settings_at):
        ids = torch.tensor([0] + ([1] if t % 4 == 0 else []) + ([2] if t in (25, 39) else []))
        coef = clock.mark(ids, t)
        clock.record(t, params)
        for i, row in enumerate(ids.tolist()):
            expected = torch.eye(2, dtype=torch.float64)
            for s in range(last[row], t):
                expected = step_matrix(settings_at[s]) @ expected
            got = torch.eye(2, dtype=torch.float64) if coef is None else coef[i].view(2, 2)
            torch.testing.assert_close(got, expected)
            last[row] = t + 1
    ids, coef = clock.behind(torch.tensor([3, 3, 1, 0]), len(settings_at))  # 3 never pushed: all 40 steps
    assert ids.tolist() == [1, 3]  # row 0 was pushed at the last step: not behind
    for i, start in enumerate([37, 0]):
        expected = torch.eye(2, dtype=torch.float64)
        for params in settings_at[start:]:
            expected = step_matrix(params) @ expected
        torch.testing.assert_close(coef[i].view(2, 2), expected)


def test_clock_refuses_steps_out_of_order():
    clock = RowClock(3)
    clock.mark(torch.tensor([0]), 0)
    clock.mark(torch.tensor([2]), 0)  # a step may mark several sets of rows (the paramserver's shared rows)
    clock.record(0, OptimParams())
    with pytest.raises(RuntimeError, match="record every step once, in order"):
        clock.record(0, OptimParams())
    with pytest.raises(RuntimeError, match="record every step once, in order"):
        clock.mark(torch.tensor([1]), 5)


def test_state_dict_round_trip_keeps_the_step_count():
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-4)
    store = LocalStore(10, 3, params=params)
    store.push(torch.tensor([1, 2]), torch.ones(2, 3))
    store.push(torch.tensor([2]), torch.ones(1, 3))
    state = store.state_dict()
    again = LocalStore(10, 3, params=params)
    again.load_state_dict(state)
    assert again.steps == 2
    store.push(torch.tensor([1, 5]), torch.ones(2, 3))
    again.push(torch.tensor([1, 5]), torch.ones(2, 3))
    torch.testing.assert_close(store.weight, again.weight)


@pytest.mark.parametrize("kind", ["local", "sharded"])
def test_rows_are_read_as_dense_sgd_holds_them(kind):
    """A row read by `current_rows` between pushes has caught up the steps it sat out: a training step
    computes with the rows dense SGD would hold, not with rows frozen at their last selection (the read rows'
    clock moves with them)."""
    n, d = 40, 4
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(7)
    store = (LocalStore(n, d, params=params, seed=1, catch_up=True) if kind == "local" else
             ShardedStore(n, d, rank=0, world=1, params=params, seed=1, catch_up=True))
    weight = torch.nn.Parameter(store.weight.clone())
    dense = torch.optim.SGD([weight], lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    for _ in range(30):
        read = torch.randint(0, n, (12,), generator=gen)  # repeats included
        torch.testing.assert_close(store.current_rows(read)[0], weight.detach()[read], atol=1e-5, rtol=1e-4)
        ids = torch.randperm(n, generator=gen)[:5]
        grad = torch.randn(5, d, generator=gen)
        store.push(ids, grad)
        weight.grad = torch.zeros(n, d)
        weight.grad[ids] = grad
        dense.step()
    store.settle()
    torch.testing.assert_close(store.weight, weight.detach(), atol=1e-5, rtol=1e-4)


def test_a_whole_table_catch_up_off_the_cpu_keeps_bounded_scratch():
    # (a GPU's table, simulated on the meta device: shapes only) settle() catches every row up at once; the
    # scratch buffers stay at GPU_BLOCK_BYTES each instead of four copies of a 2 GB table
    from dcs_cli.selection import row_update

    weight = torch.empty(1_000_000, 512, device="meta")
    ids = torch.arange(1_000_000, device="meta")
    row_update.catch_up_rows_(weight, torch.empty_like(weight), ids, torch.empty(1_000_000, 4, device="meta"),
                              OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-4))
    sizes = [buf.numel() * buf.element_size() for key, bufs in row_update._SCRATCH.buffers.items()
             if key[0].type == "meta" for buf in bufs]
    assert len(sizes) == 4 and max(sizes) <= row_update.GPU_BLOCK_BYTES
