"""The server's fast per-step checks and gradient sum refuse and accept exactly what the plain ones did."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.paramserver.matrix import MatrixSpec, PendingPush, ServedMatrix
from dcs_cli.paramserver.validate import all_finite
from dcs_cli.selection.store import OptimParams, sgd_rows_


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=40
    )
)
def test_all_finite_agrees_with_isfinite(values):
    arr = np.array(values, dtype=np.float32)
    assert all_finite(arr) == bool(np.isfinite(arr).all())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_edge_cases(bad):
    big = np.full((100, 8), 3e38, dtype=np.float32)  # finite, but its squares overflow
    assert all_finite(big)
    big[57, 3] = bad
    assert not all_finite(big)
    assert all_finite(np.zeros((0, 8), np.float32))


def test_two_clients_sum_in_client_order_without_concatenation():
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-2)
    m = ServedMatrix(0, MatrixSpec("m", 200, 16, bias=True, seed=4), params)
    w, mom, b, bmom = m.weight.clone(), m.momentum.clone(), m.bias.clone(), m.bias_momentum.clone()
    m.members.update({5, 9})
    gen = torch.Generator().manual_seed(0)
    ids = {c: torch.randperm(200, generator=gen)[:120] for c in (5, 9)}  # overlap ~ 70 rows
    grads = {c: torch.randn(120, 16, generator=gen) for c in (5, 9)}
    bgrads = {c: torch.randn(120, generator=gen) for c in (5, 9)}
    for c in (9, 5):  # arrival order must not matter
        m.add_push(c, PendingPush(ids[c], grads[c], bgrads[c]))
    assert m.apply() == len(torch.unique(torch.cat([ids[5], ids[9]])))
    # reference: the concatenated index_add_ of the previous implementation (client 5 first)
    touched, inverse = torch.unique(torch.cat([ids[5], ids[9]]), return_inverse=True)
    gw = torch.zeros(len(touched), 16).index_add_(0, inverse, torch.cat([grads[5], grads[9]]))
    gb = torch.zeros(len(touched)).index_add_(0, inverse, torch.cat([bgrads[5], bgrads[9]]))
    sgd_rows_(w, mom, touched, gw, params)
    sgd_rows_(b, bmom, touched, gb, params)
    assert torch.equal(m.weight, w) and torch.equal(m.momentum, mom)
    assert torch.equal(m.bias, b) and torch.equal(m.bias_momentum, bmom)


def test_three_clients_rows_shared_by_some_are_summed_once():
    """Rows pushed by one, two or all three clients: each summed in client order and updated once."""
    params = OptimParams(lr=0.05, momentum=0.9, weight_decay=1e-3)
    m = ServedMatrix(0, MatrixSpec("m", 60, 4, seed=2), params)
    w, mom = m.weight.clone(), m.momentum.clone()
    m.members.update({1, 2, 3})
    ids = {1: torch.tensor([0, 5, 9, 30]), 2: torch.tensor([9, 5, 41]), 3: torch.tensor([59, 9, 0, 7])}
    gen = torch.Generator().manual_seed(1)
    grads = {c: torch.randn(len(i), 4, generator=gen) for c, i in ids.items()}
    for c in (3, 1, 2):
        m.add_push(c, PendingPush(ids[c], grads[c], None))
    assert m.apply() == 7
    touched = torch.tensor([0, 5, 7, 9, 30, 41, 59])
    dense = torch.zeros(60, 4)
    for c in (1, 2, 3):
        dense.index_add_(0, ids[c], grads[c])
    sgd_rows_(w, mom, touched, dense[touched], params)
    assert torch.equal(m.weight, w) and torch.equal(m.momentum, mom)
    untouched = torch.ones(60, dtype=torch.bool)
    untouched[touched] = False
    assert torch.count_nonzero(m.momentum[untouched]) == 0
