import pytest
import torch

from dcs_cli.paramserver.matrix import MatrixSpec, PendingPush, ServedMatrix, optim_from_dict
from dcs_cli.paramserver.protocol import ProtocolError
from dcs_cli.selection.row_update import sgd_rows_
from dcs_cli.selection.store import OptimParams

PARAMS = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-2)


def test_init_matches_local_store():
    from dcs_cli.selection.local_store import LocalStore

    for init in ("normal", "uniform"):
        spec = MatrixSpec("m", 50, 8, init=init, init_std=0.2, seed=5)
        local = LocalStore(50, 8, init=init, init_std=0.2, seed=5)
        assert torch.equal(ServedMatrix(0, spec, PARAMS).weight, local.weight)


def test_overlapping_pushes_are_summed_then_applied_once():
    m = ServedMatrix(0, MatrixSpec("m", 20, 4, bias=True, seed=1), PARAMS)
    w, mom, b, bmom = m.weight.clone(), m.momentum.clone(), m.bias.clone(), m.bias_momentum.clone()
    m.members.update({1, 2})
    ids1, ids2 = torch.tensor([0, 3, 7]), torch.tensor([7, 3, 19])
    g1, g2 = torch.randn(3, 4), torch.randn(3, 4)
    b1, b2 = torch.randn(3), torch.randn(3)
    m.add_push(1, PendingPush(ids1, g1, b1))
    assert not m.barrier_ready()
    with pytest.raises(ProtocolError, match="already pushed"):
        m.add_push(1, PendingPush(ids1, g1, b1))
    m.add_push(2, PendingPush(ids2, g2, b2))
    assert m.barrier_ready()
    m.apply()
    dense_w, dense_b = torch.zeros(20, 4), torch.zeros(20)
    for ids, g, gb in ((ids1, g1, b1), (ids2, g2, b2)):
        dense_w[ids] += g
        dense_b[ids] += gb
    touched = torch.tensor([0, 3, 7, 19])
    sgd_rows_(w, mom, touched, dense_w[touched], PARAMS)
    sgd_rows_(b, bmom, touched, dense_b[touched], PARAMS)
    assert torch.allclose(m.weight, w, atol=1e-7) and torch.allclose(m.momentum, mom, atol=1e-7)
    assert torch.allclose(m.bias, b, atol=1e-7) and torch.allclose(m.bias_momentum, bmom, atol=1e-7)
    assert m.step == 1 and not m.pending


def test_a_member_leaving_releases_the_barrier():
    m = ServedMatrix(0, MatrixSpec("m", 5, 2), PARAMS)
    m.members.update({1, 2})
    m.add_push(1, PendingPush(torch.tensor([1]), torch.ones(1, 2), None))
    assert not m.barrier_ready()
    m.members.discard(2)
    assert m.barrier_ready()


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"name": "m", "num_classes": 0, "dim": 4}, "shape"),
        ({"name": "m", "num_classes": 10, "dim": 4, "init": "zeros"}, "init"),
        ({"name": "m", "num_classes": "10", "dim": 4}, "wrong type"),
        ({"name": "m", "num_classes": 10, "dim": 4, "evil": 1}, "unknown"),
        ({"num_classes": 10, "dim": 4}, "missing"),
        ({"name": "m", "num_classes": 10, "dim": 4, "init_std": float("nan")}, "init_std"),
    ],
)
def test_bad_specs_are_refused(bad, match):
    with pytest.raises(ProtocolError, match=match):
        MatrixSpec.from_dict(bad)


def test_optim_params_validated():
    assert optim_from_dict({"lr": 1, "momentum": 0.5, "weight_decay": 0}) == OptimParams(1.0, 0.5, 0.0)
    for bad in (
        {"lr": float("inf"), "momentum": 0, "weight_decay": 0},
        {"lr": 1, "momentum": 1.0, "weight_decay": 0},
        {"lr": 1, "momentum": 0},
        {"lr": True, "momentum": 0, "weight_decay": 0},
    ):
        with pytest.raises(ProtocolError):
            optim_from_dict(bad)
