"""The fast `sgd_rows_` (scratch buffers, numpy scatter, huge-page tables) keeps the reference semantics."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.selection.hugepages import HUGE_PAGE, empty_rows
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.row_update import sgd_rows_
from dcs_cli.selection.store import OptimParams
from dcs_cli.torchfile import load_torch_file, save_torch_file


def reference_sgd_rows_(weight, momentum_buf, ids, grad, params):
    """The straightforward rule (the previous implementation): fresh temporaries, index_copy_."""
    w = weight.index_select(0, ids)
    g = grad.to(w.dtype)
    if params.weight_decay:
        g = g.add(w, alpha=params.weight_decay)
    if params.momentum:
        v = momentum_buf.index_select(0, ids).mul_(params.momentum).add_(g)
        momentum_buf.index_copy_(0, ids, v)
        g = v
    weight.index_copy_(0, ids, w.sub_(g, alpha=params.lr))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40), d=st.integers(0, 5), steps=st.integers(1, 6),
    lr=st.floats(1e-3, 0.5), momentum=st.sampled_from([0.0, 0.5, 0.9]), wd=st.sampled_from([0.0, 1e-4, 1e-2]),
    seed=st.integers(0, 1000),
)
def test_bitwise_equal_to_reference_rule(n, d, steps, lr, momentum, wd, seed):
    """Any row count per call (scratch grows and is reused), 1-D (d=0: bias) and 2-D tables."""
    params = OptimParams(lr=lr, momentum=momentum, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if d == 0 else (n, d)
    w_fast = torch.randn(shape, generator=gen)
    m_fast = torch.zeros(shape)
    w_ref, m_ref = w_fast.clone(), m_fast.clone()
    for _ in range(steps):
        k = int(torch.randint(0, n + 1, (1,), generator=gen))
        ids = torch.randperm(n, generator=gen)[:k]
        grad = torch.randn((k, *shape[1:]), generator=gen)
        grad_before = grad.clone()
        sgd_rows_(w_fast, m_fast, ids, grad, params)
        reference_sgd_rows_(w_ref, m_ref, ids, grad, params)
        assert torch.equal(grad, grad_before)  # the caller's gradient is never written
    assert torch.equal(w_fast, w_ref) and torch.equal(m_fast, m_ref)


@pytest.mark.parametrize("block_bytes", [4, 3 * 4 * 7, 1 << 40])
def test_blocked_update_equals_reference_for_any_block_size(monkeypatch, block_bytes):
    """Rows go through in cache-sized blocks: 1-row blocks, a block size that does not divide the row
    count, and one block hold the same bits as the whole-batch reference rule."""
    from dcs_cli.selection import row_update as store_module

    monkeypatch.setattr(store_module, "BLOCK_BYTES", block_bytes)
    gen = torch.Generator().manual_seed(11)
    params = OptimParams(lr=0.03, momentum=0.9, weight_decay=1e-3)
    w_fast = torch.randn(300, 7, generator=gen)
    w_ref, m_fast, m_ref = w_fast.clone(), torch.zeros(300, 7), torch.zeros(300, 7)
    for _ in range(3):
        ids = torch.randperm(300, generator=gen)[:97]
        grad = torch.randn(97, 7, generator=gen)
        sgd_rows_(w_fast, m_fast, ids, grad, params)
        reference_sgd_rows_(w_ref, m_ref, ids, grad, params)
    assert torch.equal(w_fast, w_ref) and torch.equal(m_fast, m_ref)


def test_huge_page_tables_match_torch_sgd_on_touched_rows():
    """Tables above the huge-page threshold (the mmap path): several steps on overlapping row sets match
    torch.optim.SGD run on exactly the touched rows (lazy rows elsewhere)."""
    n, d = 8192, 256  # 8 MiB per table
    params = OptimParams(lr=0.05, momentum=0.9, weight_decay=1e-3)
    store = LocalStore(n, d, params=params, init_std=0.5, seed=3)
    assert store.weight.data_ptr() % HUGE_PAGE == 0
    start = store.weight.clone()
    gen = torch.Generator().manual_seed(0)
    rows = torch.randperm(n, generator=gen)[:600]
    p = torch.nn.Parameter(start[rows].clone())
    opt = torch.optim.SGD([p], lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    for _ in range(4):  # every step pushes all of `rows`, in a new order
        g = torch.randn(len(rows), d, generator=gen)
        perm = torch.randperm(len(rows), generator=gen)
        store.push(rows[perm], g[perm])
        p.grad = g
        opt.step()
    torch.testing.assert_close(store.weight[rows], p.detach(), atol=1e-6, rtol=1e-6)
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(store.weight[untouched], start[untouched])
    assert torch.count_nonzero(store.momentum[untouched]) == 0


def test_two_stores_sharing_scratch_do_not_interfere():
    a1, b1 = LocalStore(50, 7, seed=1), LocalStore(50, 7, seed=2)
    a2, b2 = LocalStore(50, 7, seed=1), LocalStore(50, 7, seed=2)
    gen = torch.Generator().manual_seed(5)
    steps = [(torch.randperm(50, generator=gen)[:k], torch.randn(k, 7, generator=gen)) for k in (30, 12, 45)]
    for ids, g in steps:  # interleaved a, b
        a1.push(ids, g)
        b1.push(ids.flip(0), g)
    for ids, g in steps:  # a then b
        a2.push(ids, g)
    for ids, g in steps:
        b2.push(ids.flip(0), g)
    assert torch.equal(a1.weight, a2.weight) and torch.equal(b1.weight, b2.weight)


def test_non_contiguous_table_takes_the_generic_path():
    base = torch.randn(6, 10)
    table, ref = base.t(), base.t().clone()  # 10 rows of 6, strided
    mom, mom_ref = torch.zeros(10, 6), torch.zeros(10, 6)
    ids, g = torch.tensor([7, 2, 4]), torch.randn(3, 6)
    sgd_rows_(table, mom, ids, g, OptimParams(0.1, 0.9, 0.01))
    reference_sgd_rows_(ref, mom_ref, ids, g, OptimParams(0.1, 0.9, 0.01))
    assert torch.equal(table, ref) and torch.equal(mom, mom_ref)


@pytest.mark.parametrize("shape", [(3, 4), (5000, 256), (2_000_000,)])
def test_empty_rows(shape):
    t = empty_rows(*shape)
    assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.0)  # writable
    assert float(t.sum()) == 2.0 * np.prod(shape)
    z = empty_rows(*shape, zero=True)
    assert z.shape == shape and torch.count_nonzero(z) == 0
    if np.prod(shape) * 4 >= 2 * HUGE_PAGE:
        assert t.data_ptr() % HUGE_PAGE == 0


def test_huge_page_store_state_roundtrip(tmp_path):
    a = LocalStore(5000, 256, seed=1)
    a.push(torch.tensor([3, 4999]), torch.ones(2, 256))
    path = tmp_path / "store.pt"
    save_torch_file(a.state_dict(), path)
    b = LocalStore(5000, 256, seed=2)
    b.load_state_dict(load_torch_file(path, "store"))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.momentum, b.momentum)
    assert b.weight.data_ptr() % HUGE_PAGE == 0  # loaded tables keep the fast layout
    b.push(torch.tensor([3]), torch.ones(1, 256))
    assert not torch.equal(a.weight[3], b.weight[3])


@pytest.mark.parametrize("block_bytes", [3 * 4 * 5, 1 << 40])
def test_grad_rows_picks_gradient_rows_like_a_copy(monkeypatch, block_bytes):
    """`grad_rows` reads row grad[grad_rows[i]] for ids[i]: the same bits as copying those rows out first."""
    from dcs_cli.selection import row_update as store_module

    monkeypatch.setattr(store_module, "BLOCK_BYTES", block_bytes)
    gen = torch.Generator().manual_seed(3)
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-2)
    table = torch.randn(80, 5, generator=gen)
    ref, mom, mom_ref = table.clone(), torch.zeros(80, 5), torch.zeros(80, 5)
    grad = torch.randn(50, 5, generator=gen)
    pick = torch.randperm(50, generator=gen)[:23]
    ids = torch.randperm(80, generator=gen)[:23]
    sgd_rows_(table, mom, ids, grad, params, grad_rows=pick)
    reference_sgd_rows_(ref, mom_ref, ids, grad[pick], params)
    assert torch.equal(table, ref) and torch.equal(mom, mom_ref)
