"""The server's fast per-step checks and gradient sum refuse and accept exactly what the plain ones did."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.paramserver.matrix import MatrixSpec, PendingPush, ServedMatrix
from dcs_cli.paramserver.validate import all_finite
from dcs_cli.paramserver.workers import RowWorkers
from dcs_cli.selection.row_update import sgd_rows_
from dcs_cli.selection.store import OptimParams


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


def test_row_workers_cover_every_row_once_and_raise_a_parts_error():
    workers = RowWorkers(3)
    try:
        seen = []
        workers.run(5000, lambda lo, hi: seen.append((lo, hi)))
        assert len(seen) == 3 and sorted(r for lo, hi in seen for r in range(lo, hi)) == list(range(5000))
        seen.clear()
        workers.run(1500, lambda lo, hi: seen.append((lo, hi)))  # too few rows to be worth splitting
        assert seen == [(0, 1500)]

        def fail_late(lo, hi):
            if lo > 0:
                raise ValueError("part failed")

        with pytest.raises(ValueError, match="part failed"):
            workers.run(5000, fail_late)
    finally:
        workers.close()


def test_threaded_gathers_and_updates_equal_the_serial_ones_bit_for_bit():
    spec = MatrixSpec("m", 20_000, 8, bias=True, seed=2)
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(3)
    workers = RowWorkers(2)
    try:
        serial, threaded = ServedMatrix(0, spec, params), ServedMatrix(0, spec, params, workers=workers)
        ids_sets = [torch.randperm(20_000, generator=gen)[:6000] for _ in range(2)]
        grads = [torch.randn(6000, 8, generator=gen) for _ in range(2)]
        biases = [torch.randn(6000, generator=gen) for _ in range(2)]
        for m in (serial, threaded):
            m.members.update({1, 2})
            m.remember_sent(1, ids_sets[0].numpy(), m.gather(ids_sets[0].numpy(), False)[0])
            for client, (ids, g, b) in enumerate(zip(ids_sets, grads, biases, strict=True), start=1):
                m.add_push(client, PendingPush(ids, g, b))  # two clients, overlapping rows
            m.apply()
            m.members.discard(2)
            m.add_push(1, PendingPush(ids_sets[1], grads[0], biases[0]))  # one client
            m.apply()
        for key in ("weight", "momentum", "bias", "bias_momentum"):
            assert torch.equal(getattr(serial, key), getattr(threaded, key)), key
        ids = ids_sets[0].numpy()
        for a, b in zip(serial.gather(ids, True), threaded.gather(ids, True), strict=True):
            assert np.array_equal(a, b)
    finally:
        workers.close()
