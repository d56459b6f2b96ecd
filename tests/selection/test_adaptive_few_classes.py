"""Adaptive selection (`selection.adaptive`) when the hardest sample's share exceeds the classes there are."""

import pytest
import torch

from dcs_cli.selection.adaptive_share import share_by_hardness
from dcs_cli.selection.annoy_hf import AnnoySelector
from dcs_cli.selection.hnsw import HnswSelector
from dcs_cli.selection.ivf import IvfSelector
from dcs_cli.selection.local_store import LocalStore


@pytest.mark.parametrize("cls", [HnswSelector, AnnoySelector, IvfSelector])
def test_adaptive_share_past_the_classes_selects_them_all(cls):
    # N = 40, sample_num 40, batch 2: the even share k = 21, the hardest sample's 2k = 42 > N
    store = LocalStore(40, 8, init_std=1.0)
    selector = cls(40, 40, 2, adaptive=True, background=False, jobs=1)
    selector.attach(store)
    sel = selector.select(torch.randn(2, 8), torch.tensor([0, 1]))
    assert sorted(sel.ids.tolist()) == list(range(40))
    assert sel.stats["share_max"] <= 40


def test_shares_stop_at_the_candidates_width():
    store = LocalStore(3, 2)
    cand = torch.tensor([[0, 1, 2], [0, 1, 2]])  # every class; kmax 6 asked
    kept, share = share_by_hardness(cand, torch.randn(2, 2), torch.tensor([0, 1]), store, "dot", 3, 6)
    assert kept.shape == (2, 3) and int(share.max()) <= 3
