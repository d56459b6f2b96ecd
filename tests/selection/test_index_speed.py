"""The speed options of the index selectors: reduced-dimension index + exact re-rank, hnsw fresh rebuilds,
threaded Annoy queries, and the background refresh that reads the live weights."""

import dataclasses

import numpy as np
import pytest
import torch

from dcs_cli.config import SelectionConfig
from dcs_cli.errors import ConfigError
from dcs_cli.selection import build_selector
from dcs_cli.selection.exact import exact_topk
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.projection import Projection

N, D, B = 2000, 48, 16


def low_rank_store(seed=0, rank=6, bias=False):
    """Clustered rows in a `rank`-dim subspace plus a little noise: what a small index_dim can capture."""
    gen = torch.Generator().manual_seed(seed)
    store = LocalStore(N, D, seed=seed, bias=bias)
    basis = torch.linalg.qr(torch.randn(D, rank, generator=gen)).Q
    centres = torch.randn(N // 20, rank, generator=gen) * 3
    coords = centres.repeat_interleave(20, 0) + 0.3 * torch.randn(N, rank, generator=gen)
    store.weight = (coords @ basis.T + 0.02 * torch.randn(N, D, generator=gen)).contiguous()
    return store


def queries(store, seed=1):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N, (B,), generator=gen)
    return store.weight[labels] + 0.05 * torch.randn(B, D, generator=gen), labels


def make(mode, store, **kw):
    kw = {"background": False, "build_jobs": 1, **kw}
    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=128, **kw)
    sel = build_selector(cfg, N, B)
    sel.attach(store)
    return sel


def recall(found, truth):
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.numel()


def test_projection_basis_and_identity():
    store = low_rank_store()
    proj = Projection.fit(store.weight, 8, "dot", seed=0)
    assert proj.dim == 8 and proj.energy(store.weight) > 0.99  # the 6-dim structure is kept
    basis = proj.basis
    assert torch.allclose(basis.T @ basis, torch.eye(8), atol=1e-4)
    reduced = proj.apply(store.weight)
    assert reduced.shape == (N, 8) and reduced.dtype == np.float32 and reduced.flags["C_CONTIGUOUS"]
    # inner products survive the projection on low-rank rows
    x = store.weight[:5]
    assert np.allclose(proj.apply(x) @ reduced[:50].T, (x @ store.weight[:50].T).numpy(), atol=0.05)
    ident = Projection.fit(store.weight, 0, "dot")
    assert ident.identity and np.array_equal(ident.apply(store.weight), store.weight.numpy())
    assert Projection.fit(store.weight, D, "dot").identity  # dim >= d: nothing to reduce
    # angular: rows are normalised before projecting
    ang = Projection.fit(store.weight, 8, "angular")
    assert np.allclose(np.linalg.norm(ang.apply(store.weight[:10] * 7), axis=1), 1.0, atol=0.02)


def test_projection_more_dims_than_rows():
    w = torch.randn(5, 16)
    proj = Projection.fit(w, 8, "dot")
    assert proj.basis.shape == (16, 8)
    assert torch.allclose(proj.basis.T @ proj.basis, torch.eye(8), atol=1e-4)


@pytest.mark.parametrize("mode", ["hf", "hnsw"])
def test_reduced_index_with_rerank_finds_true_neighbours(mode):
    store = low_rank_store()
    feats, _ = queries(store)
    truth = exact_topk(feats, store.weight, 8)[1]
    sel = make(mode, store, index_dim=8, rerank=4, ntrees=10)
    found = sel.neighbours(feats, 8)
    assert sel.proj.dim == 8 and sel._snap.shape == (N, 8)
    assert recall(found, truth) >= 0.85
    # the re-rank orders each sample's neighbours by the exact score, best first
    scores = torch.einsum("bd,bkd->bk", feats, store.weight[found.clamp(min=0)])
    assert bool((scores[:, :-1] >= scores[:, 1:] - 1e-5).all())


def test_rerank_beats_reduced_order():
    store = low_rank_store(rank=24)  # a 4-dim index loses most of the ranking...
    feats, _ = queries(store)
    truth = exact_topk(feats, store.weight, 8)[1]
    plain = recall(make("hf", store, index_dim=4, rerank=1, ntrees=10).neighbours(feats, 8), truth)
    reranked = recall(make("hf", store, index_dim=4, rerank=8, ntrees=10).neighbours(feats, 8), truth)
    assert reranked > plain + 0.1  # ...which re-scoring more candidates in full d recovers


def test_rerank_adds_the_bias_for_dot():
    store = low_rank_store(bias=True)
    feats, _ = queries(store)
    store.bias[:] = 0.0
    sel = make("hf", store, index_dim=0, rerank=4, ntrees=10)
    last = int(sel.neighbours(feats, 12)[0, -1])  # retrieved for sample 0, ranked 12th without bias
    store.bias[last] = 1e6  # now it wins sample 0's logits
    assert int(sel.neighbours(feats, 3)[0, 0]) == last


def test_threaded_queries_equal_serial():
    store = low_rank_store()
    feats, _ = queries(store)
    one = make("hf", store, index_dim=8, query_jobs=1).neighbours(feats, 6)
    sel = make("hf", store, index_dim=8, query_jobs=3)
    three = sel.neighbours(feats, 6)
    sel.close()
    assert torch.equal(one, three)


def test_hnsw_rebuilds_when_many_rows_changed():
    store = low_rank_store()
    feats, labels = queries(store)
    sel = make("hnsw", store, index_dim=8, interval=1, hnsw_rebuild_fraction=0.0)
    old_index = sel.index
    sel.select(feats, labels)
    store.weight[:] = -store.weight  # everything moved: the old graph is useless
    sel.refresh(store, 1)
    assert sel.refreshes == 1 and sel.rebuilds == 1 and sel.index is not old_index
    truth = exact_topk(feats, store.weight, 8)[1]
    assert recall(sel.neighbours(feats, 8), truth) >= 0.85


def test_hnsw_updates_in_place_when_few_rows_changed():
    store = low_rank_store()
    feats, labels = queries(store)
    sel = make("hnsw", store, index_dim=0, interval=1, hnsw_rebuild_fraction=1.0)
    old_index = sel.index
    s = sel.select(feats, labels)
    store.weight[s.ids] += 0.5
    sel.refresh(store, 1)
    assert sel.refreshes == 1 and sel.rebuilds == 0 and sel.index is old_index
    assert np.allclose(sel._snap[s.ids.numpy()], store.weight[s.ids].numpy())


@pytest.mark.parametrize("mode", ["hf", "hnsw"])
def test_background_refresh_projects_live_weights(mode):
    store = low_rank_store()
    feats, labels = queries(store)
    sel = make(mode, store, index_dim=8, interval=2, background=True, hnsw_rebuild_fraction=0.0)
    sel.select(feats, labels)
    sel.refresh(store, 1)
    assert sel.refreshes == 0  # not due yet
    store.weight.mul_(-1.0)  # the trainer moved every row since the first build
    truth = exact_topk(feats, store.weight, 8)[1]
    stale = recall(sel.neighbours(feats, 8), truth)
    sel.refresh(store, 2)
    sel.wait()
    assert sel.refreshes == 1 and sel.stats()["refresh_stall_seconds"] < sel.stats()["refresh_seconds"]
    sel.close()
    fresh = recall(sel.neighbours(feats, 8), truth)
    assert stale < 0.2 and fresh >= 0.7  # the new index sees the moved rows


def test_adaptive_drift_in_reduced_space():
    store = low_rank_store()
    feats, labels = queries(store)
    sel = make("hf", store, index_dim=8, adaptive=True, drift_check=1, drift_threshold=1e-6)
    s = sel.select(feats, labels)
    store.weight[s.ids] *= 1.5
    sel.refresh(store, 1)
    assert sel.last_drift > 0.01 and sel.refreshes == 1


@pytest.mark.parametrize("field,value", [("index_dim", -1), ("rerank", 0), ("hnsw_rebuild_fraction", 1.5),
                                         ("query_jobs", 0)])
def test_bad_speed_options(field, value):
    cfg = dataclasses.replace(SelectionConfig(), mode="hf", sample_num=64, **{field: value})
    with pytest.raises(ConfigError, match=field):
        build_selector(cfg, N, B)
