"""The two-level ivf selector: spherical k-means lists, exact scores of the live rows of the probed lists."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dcs_cli.config import SelectionConfig
from dcs_cli.errors import ConfigError
from dcs_cli.selection import build_selector
from dcs_cli.selection.exact import exact_topk
from dcs_cli.selection.ivf import build_lists
from dcs_cli.selection.local_store import LocalStore

N, D, B, GROUP = 3000, 32, 16, 15


def grouped_store(seed=0, bias=False):
    """Rows in tight groups of GROUP look-alike classes around random centres (the hard negatives)."""
    gen = torch.Generator().manual_seed(seed)
    store = LocalStore(N, D, seed=seed, bias=bias)
    centres = torch.randn(N // GROUP, D, generator=gen)
    store.weight = (centres.repeat_interleave(GROUP, 0) + 0.3 * torch.randn(N, D, generator=gen)).contiguous()
    if bias:
        store.bias = 0.1 * torch.randn(N, generator=gen)
    return store


def queries(store, seed=1):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N, (B,), generator=gen)
    rows = store.weight[labels]
    return 4 * F.normalize(rows, dim=1) + 0.1 * torch.randn(B, D, generator=gen), labels


def make(store, **kw):
    kw = {"background": False, "ivf_lists": 64, "ivf_nprobe": 4, **kw}
    cfg = dataclasses.replace(SelectionConfig(), mode="ivf", sample_num=160, **kw)
    sel = build_selector(cfg, N, B)
    sel.attach(store)
    return sel


def recall(found, truth):
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.numel()


def test_lists_partition_the_rows():
    rows = grouped_store().weight
    lists = build_lists(rows, 50, iters=3, seed=0)
    assert lists.centroids.shape == (50, D)
    assert torch.allclose(lists.centroids.norm(dim=1), torch.ones(50), atol=1e-5)
    assert int(lists.sizes.sum()) == N and torch.equal(lists.order.sort().values, torch.arange(N))
    # every row sits in the list of its most aligned centroid
    owner = torch.empty(N, dtype=torch.long)
    for c in range(50):
        owner[lists.order[lists.offsets[c]:lists.offsets[c + 1]]] = c
    assert torch.equal(owner, (rows @ lists.centroids.T).argmax(1))


def test_two_level_build_for_many_lists(monkeypatch):
    import dcs_cli.selection.ivf as ivf

    monkeypatch.setattr(ivf, "FLAT_LISTS", 16)  # 100 lists: coarse groups, fine lists, beam assignment
    store = grouped_store()
    lists = ivf.build_lists(store.weight, 100, iters=3, seed=0)
    assert lists.centroids.shape == (100, D) and int(lists.sizes.sum()) == N
    assert torch.equal(lists.order.sort().values, torch.arange(N))
    assert lists.near.shape == (100, ivf.NEARBY) and torch.equal(lists.near[:, 0], torch.arange(100))
    sel = make(store, ivf_lists=100)
    assert sel.index.centroids.shape[0] == 100
    feats, _ = queries(store)
    assert recall(sel.neighbours(feats, sel.k), exact_topk(feats, store.weight, sel.k)[1]) >= 0.9


@pytest.mark.parametrize(("metric", "bias"), [("dot", False), ("dot", True), ("angular", False)])
def test_recall_against_exact_topk(metric, bias):
    store = grouped_store(bias=bias)
    feats, _ = queries(store)
    sel = make(store, metric=metric)
    k = sel.k
    found = sel.neighbours(feats, k)
    assert found.shape == (B, k)
    if bias:  # the oracle with the bias the softmax logits add
        scores = feats @ store.weight.T + store.bias
        truth = scores.topk(k, dim=1).indices
    else:
        truth = exact_topk(feats, store.weight, k, metric)[1]
    assert recall(found, truth) >= 0.9
    # probing every list scores every row: the exact top-k, in order
    every = make(store, metric=metric, ivf_nprobe=64).neighbours(feats, k)
    assert recall(every, truth) == 1.0


def test_selection_has_positives_and_exactly_sample_num_ids():
    store = grouped_store()
    feats, labels = queries(store)
    labels[1] = labels[0]
    s = make(store).select(feats, labels)
    assert s.ids.numel() == 160 and torch.unique(s.ids).numel() == 160
    positives = torch.unique(labels)
    assert torch.equal(s.ids[: positives.numel()], positives) and torch.equal(s.ids[s.local_labels], labels)
    assert s.stats["ivf_lists"] == 64


def _step(sel, store, steps):
    for step in steps:
        sel.refresh(store, step)
    sel.wait()


def test_scores_are_live_between_refreshes():
    store = grouped_store()
    sel = make(store)
    feats, _ = queries(store)
    # a row of a probed list that moves is re-scored at once, before any refresh
    weakest = int(sel.neighbours(feats[:1], sel.k)[0, -1])
    store.weight[weakest] = 10 * feats[0]
    assert int(sel.neighbours(feats[:1], sel.k)[0, 0]) == weakest


def test_incremental_refresh_moves_changed_rows_to_a_nearby_list():
    store = grouped_store()
    sel = make(store, interval=2)
    feats, _ = queries(store)
    index = sel.index
    probed = set((feats[:1] @ index.centroids.T).topk(4).indices[0].tolist())
    best = int((feats[0] @ index.centroids.T).argmax())
    near = (index.centroids @ index.centroids.T).topk(32, dim=1).indices
    # a row of an unprobed list that has the query's best list among its nearby lists
    row = next(r for r in range(N) if int(index.owner[r]) not in probed and best in near[index.owner[r]].tolist())
    store.weight[row] = 10 * feats[0]
    assert row not in sel.neighbours(feats[:1], sel.k)[0].tolist()  # its list is stale and not probed
    sel._dirty[row] = True  # as a select that picked it would have marked it
    first = sel.index
    _step(sel, store, (1, 2))
    assert sel.refreshes == 1 and sel.rebuilds == 0 and sel.index is not first  # an update, not a build
    assert int(sel.index.owner[row]) in set((feats[:1] @ sel.index.centroids.T).topk(4).indices[0].tolist())
    assert int(sel.neighbours(feats[:1], 1)[0, 0]) == row
    assert int(sel.index.sizes.sum()) == N and torch.equal(sel.index.order.sort().values, torch.arange(N))


def test_periodic_rebuild_finds_rows_that_moved_far():
    store = grouped_store()
    sel = make(store, interval=1, ivf_rebuild_every=2)
    feats, _ = queries(store)
    far = int(exact_topk(-feats[:1], store.weight, 1)[1][0, 0])  # the row pointing most the other way
    store.weight[far] = 10 * feats[0]
    sel._dirty[far] = True
    _step(sel, store, (1,))
    assert sel.rebuilds == 0  # first refresh: an update (the far row may stay out of reach)
    _step(sel, store, (2,))
    assert sel.refreshes == 2 and sel.rebuilds == 1 and len(sel.rebuild_seconds) == 2  # attach + rebuild
    assert int(sel.neighbours(feats[:1], 1)[0, 0]) == far


def test_small_store_gets_fewer_lists_and_bad_settings_fail():
    cfg = dataclasses.replace(SelectionConfig(), mode="ivf", sample_num=40, ivf_lists=4096)
    sel = build_selector(cfg, 640, 8)
    assert sel.lists == 20  # at least MIN_LIST rows per list
    for key in ("ivf_nprobe", "ivf_rebuild_every"):
        with pytest.raises(ConfigError, match=key):
            build_selector(dataclasses.replace(SelectionConfig(), mode="ivf", **{key: 0}), N, B)
    with pytest.raises(ConfigError, match="ivf_iters"):
        build_selector(dataclasses.replace(SelectionConfig(), mode="ivf", ivf_iters=-1), N, B)


def test_a_cold_two_level_rebuild_runs_every_kmeans_round(monkeypatch):
    """Above FLAT_LISTS lists a rebuild cannot warm-start from the previous centroids, so it runs all
    `ivf_iters` rounds: it builds what a first build from the same rows and seed builds."""
    import dcs_cli.selection.ivf as ivf

    monkeypatch.setattr(ivf, "FLAT_LISTS", 16)
    store = grouped_store()
    sel = make(store, ivf_lists=100, ivf_iters=3)
    rebuilt = sel._build(store.weight.numpy(), seed=7)
    cold = ivf.build_lists(store.weight, 100, iters=3, seed=7)
    assert torch.equal(rebuilt.centroids, cold.centroids)
    # the flat path does warm-start: one round from the previous centroids
    flat = make(store, ivf_lists=16, ivf_iters=3)
    warm = flat._build(store.weight.numpy(), seed=7)
    one = ivf.build_lists(store.weight, 16, iters=1, seed=7, init=flat.index.centroids)
    assert torch.equal(warm.centroids, one.centroids)
