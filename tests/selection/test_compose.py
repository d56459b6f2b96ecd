import pytest
import torch

from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection.compose import check_batch, compose, unique_in_order


def test_unique_in_order():
    assert unique_in_order(torch.tensor([5, 3, 5, 1, 3])).tolist() == [5, 3, 1]


@pytest.mark.parametrize("n,s", [(1000, 50), (100, 90), (40, 40)])
def test_compose_exact_size_positives_first_no_duplicates(n, s):
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([7, 3, 7, 20])
    cand = torch.tensor([3, 9, -1, 11, 9, 30])
    sel = compose(labels, cand, s, n, gen)
    ids = sel.ids
    assert ids.numel() == s and torch.unique(ids).numel() == s
    assert ids[:3].tolist() == [3, 7, 20]
    assert ids[3:6].tolist() == [9, 11, 30]
    assert torch.equal(ids[sel.local_labels], labels)
    assert sel.stats == {"positives": 3, "retrieved": 3, "random_fill": s - 6}


def test_compose_deterministic_and_cut():
    labels = torch.tensor([1, 2])
    a = compose(labels, None, 10, 10_000, torch.Generator().manual_seed(5)).ids
    b = compose(labels, None, 10, 10_000, torch.Generator().manual_seed(5)).ids
    assert torch.equal(a, b)
    cut = compose(labels, torch.arange(100, 200), 10, 10_000, torch.Generator().manual_seed(0))
    assert cut.ids[2:].tolist() == list(range(100, 108))


def test_errors():
    gen = torch.Generator()
    with pytest.raises(ConfigError, match="distinct labels"):
        compose(torch.tensor([1, 2, 3]), None, 2, 10, gen)
    with pytest.raises(DataError, match="NaN"):
        check_batch(torch.tensor([[float("nan")]]), torch.tensor([0]), 5)
    with pytest.raises(DataError, match="labels"):
        check_batch(torch.zeros(1, 1), torch.tensor([5]), 5)
