import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.store import OptimParams


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12), d=st.integers(1, 6), steps=st.integers(1, 5),
    lr=st.floats(1e-3, 0.5), momentum=st.sampled_from([0.0, 0.5, 0.9]), wd=st.sampled_from([0.0, 1e-4, 1e-2]),
    bias=st.booleans(), seed=st.integers(0, 1000),
)
def test_all_rows_every_step_matches_torch_sgd(n, d, steps, lr, momentum, wd, bias, seed):
    params = OptimParams(lr=lr, momentum=momentum, weight_decay=wd)
    store = LocalStore(n, d, bias=bias, seed=seed, params=params, init_std=0.5)
    w = torch.nn.Parameter(store.weight.clone())
    b = torch.nn.Parameter(store.bias.clone()) if bias else None
    opt = torch.optim.SGD([p for p in (w, b) if p is not None], lr=lr, momentum=momentum, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        gw, gb = torch.randn(n, d, generator=gen), torch.randn(n, generator=gen)
        perm = torch.randperm(n, generator=gen)  # push order must not matter
        store.push(perm, gw[perm], gb[perm] if bias else None)
        w.grad = gw.clone()
        if bias:
            b.grad = gb.clone()
        opt.step()
    torch.testing.assert_close(store.weight, w.detach(), atol=1e-6, rtol=1e-6)
    if bias:
        torch.testing.assert_close(store.bias, b.detach(), atol=1e-6, rtol=1e-6)


def test_lazy_rows_keep_weight_and_momentum():
    store = LocalStore(6, 3, params=OptimParams(lr=0.1, momentum=0.9, weight_decay=0.1))
    before = store.weight.clone()
    store.push(torch.tensor([1, 4]), torch.ones(2, 3))
    untouched = torch.tensor([0, 2, 3, 5])
    assert torch.equal(store.weight[untouched], before[untouched])
    assert torch.count_nonzero(store.momentum[untouched]) == 0
    assert not torch.equal(store.weight[1], before[1])


def test_init_seeded_and_kinds():
    a = LocalStore(50, 8, init="uniform", init_std=0.1, seed=3)
    b = LocalStore(50, 8, init="uniform", init_std=0.1, seed=3)
    assert torch.equal(a.weight, b.weight)
    assert a.weight.abs().max() <= 0.1 * 3**0.5 + 1e-6
    c = LocalStore(50, 8, init="normal", seed=4)
    assert not torch.equal(a.weight, c.weight)
    with pytest.raises(ConfigError, match="init"):
        LocalStore(5, 2, init="zeros")


def test_state_dict_roundtrip_and_mismatch():
    a = LocalStore(10, 4, bias=True, seed=1)
    a.push(torch.tensor([2, 3]), torch.ones(2, 4), torch.ones(2))
    b = LocalStore(10, 4, bias=True, seed=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weight, b.weight) and torch.equal(a.momentum, b.momentum)
    assert torch.equal(a.bias, b.bias) and torch.equal(a.bias_momentum, b.bias_momentum)
    with pytest.raises(DataError, match="weights"):
        LocalStore(11, 4, bias=True).load_state_dict(a.state_dict())
    with pytest.raises(DataError, match="gradient shape"):
        a.push(torch.tensor([1]), torch.ones(2, 4))


def test_rows_are_copies_and_weights_view():
    store = LocalStore(8, 2)
    w, b = store.rows(torch.tensor([0, 5]))
    assert b is None
    w.add_(1.0)
    assert not torch.equal(store.weight[[0, 5]], w)
    assert store.weights().shape == (8, 2)
