import dataclasses

import pytest
import torch

from dcs_cli.config import SelectionConfig
from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection import build_selector
from dcs_cli.selection.exact import exact_topk
from dcs_cli.selection.local_store import LocalStore

N, D, B = 600, 16, 8


def clustered_store(seed=0):
    store = LocalStore(N, D, seed=seed, init_std=1.0)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(N // 10, D, generator=gen)
    store.weight = centres.repeat_interleave(10, 0) + 0.1 * torch.randn(N, D, generator=gen)
    return store


def make(mode, store, **kw):
    kw = {"background": False, **kw}
    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=64, build_jobs=1, **kw)
    sel = build_selector(cfg, N, B)
    sel.attach(store)
    return sel


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=gen), torch.randint(0, N, (B,), generator=gen)


@pytest.mark.parametrize("mode", ["random", "exact", "hf", "hnsw", "ivf"])
def test_selection_invariants_and_determinism(mode):
    store = clustered_store()
    feats, labels = batch()
    labels[1] = labels[0]
    a = make(mode, store).select(feats, labels)
    b = make(mode, store).select(feats, labels)
    assert a.ids.numel() == 64 and torch.unique(a.ids).numel() == 64
    positives = torch.unique(labels)
    assert torch.equal(a.ids[: positives.numel()], positives)
    assert torch.equal(a.ids[a.local_labels], labels)
    assert torch.equal(a.ids, b.ids)
    assert int(a.ids.max()) < N and int(a.ids.min()) >= 0


@pytest.mark.parametrize("mode", ["exact", "hf", "hnsw", "ivf"])
def test_retrieves_top_neighbours(mode):
    store = clustered_store()
    feats, labels = batch(1)
    feats = store.weight[torch.arange(B) * 70] + 0.01  # samples next to known clusters
    sel = make(mode, store, ntrees=20)
    found = sel.neighbours(feats, 5)
    truth = exact_topk(feats, store.weight, 5)[1]
    recall = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=False)) / truth.numel()
    assert recall >= (1.0 if mode == "exact" else 0.8)
    # rank-major composition: every sample's best neighbour is in the active set
    s = sel.select(feats, labels)
    assert set(truth[:, 0].tolist()) <= set(s.ids.tolist())


def test_full_selector():
    store = clustered_store()
    sel = make("full", store)
    feats, labels = batch()
    s = sel.select(feats, labels)
    assert torch.equal(s.ids, torch.arange(N)) and torch.equal(s.local_labels, labels)


def test_errors():
    with pytest.raises(ConfigError, match="exceeds"):
        build_selector(dataclasses.replace(SelectionConfig(), mode="hf", sample_num=N + 1), N, B)
    with pytest.raises(ConfigError, match="ntrees"):
        build_selector(dataclasses.replace(SelectionConfig(), mode="hf", ntrees=0), N, B)
    sel = make("hf", clustered_store())
    feats, labels = batch()
    feats[0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN or Inf"):
        sel.select(feats, labels)
    with pytest.raises(ConfigError, match="distinct labels"):
        make("random", clustered_store(), ).select(torch.zeros(70, D), torch.arange(70))


@pytest.mark.parametrize("mode", ["hf", "hnsw", "ivf"])
@pytest.mark.parametrize("background", [False, True])
def test_interval_refresh_swaps_index(mode, background):
    store = clustered_store()
    sel = make(mode, store, interval=3, background=background)
    first = sel.index
    feats, labels = batch()
    for step in range(1, 4):
        s = sel.select(feats, labels)
        store.push(s.ids, torch.randn(s.ids.numel(), D))
        sel.refresh(store, step)
    sel.wait()
    assert sel.refreshes == 1 and sel.index_step == 3 and len(sel.refresh_seconds) == 1
    assert (sel.index is not first) == (mode != "hnsw")  # hnsw updates its index in place
    # the refreshed index sees a moved row: move row 5 onto a query and find it
    q = torch.randn(1, D) * 10
    store.weight[5] = q[0]
    sel._dirty[5] = True
    for step in range(4, 7):
        sel.refresh(store, step)
    sel.wait()
    assert 5 in sel.neighbours(q, 3)[0].tolist()
    sel.close()


def test_hnsw_refresh_updates_only_changed_rows(monkeypatch):
    store = clustered_store()
    sel = make("hnsw", store, interval=1)
    seen = {}
    orig = sel._update

    def spy(index, ids, rows):
        seen["ids"] = ids
        return orig(index, ids, rows)

    monkeypatch.setattr(sel, "_update", spy)
    feats, labels = batch()
    s = sel.select(feats, labels)
    store.push(s.ids, torch.randn(64, D))
    sel.refresh(store, 1)
    assert sorted(seen["ids"].tolist()) == sorted(s.ids.tolist())


def test_adaptive_drift_triggers_refresh_only_when_moved():
    store = clustered_store()
    sel = make("hf", store, adaptive=True, drift_check=1, drift_threshold=0.05, interval=1000)
    feats, labels = batch()
    s = sel.select(feats, labels)
    store.push(s.ids, torch.zeros(64, D))  # with weight decay 1e-4 the rows barely move
    sel.refresh(store, 1)
    assert sel.refreshes == 0 and 0 < sel.last_drift < 0.05
    s = sel.select(feats, labels)
    store.push(s.ids, 50 * torch.randn(64, D))
    sel.refresh(store, 2)
    assert sel.refreshes == 1 and sel.last_drift >= 0.05


def test_adaptive_gives_hard_samples_more_neighbours():
    store = clustered_store()
    sel = make("hf", store, adaptive=True, ntrees=20)
    labels = torch.arange(B) * 70
    feats = store.weight[labels].clone()
    # sample 0 sits on its positive (easy); sample 1 sits on another cluster (hard)
    feats[1] = store.weight[300] * 3
    s = sel.select(feats, labels)
    assert s.stats["share_max"] > sel.k > s.stats["share_min"]
    assert s.ids.numel() == 64


@pytest.mark.parametrize("adaptive", [False, True])
def test_index_selector_returns_the_next_nearest_classes_as_near(adaptive):
    """With `near` asked for (the tail estimate's tail_near), each sample's nearest classes that did not
    become active come back in `Selection.near`, adaptive shares included (their cut candidates are near)."""
    store = clustered_store()
    sel = make("hf", store, adaptive=adaptive, ntrees=20)
    sel.near = 12
    labels = torch.arange(B) * 70
    feats = store.weight[labels] + 0.5 * torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    s = sel.select(feats, labels)
    assert s.near is not None and s.near.numel() > 0 and not torch.isin(s.near, s.ids).any()
    _, nearest = exact_topk(feats, store.weight, sel.k + 12)
    missed = nearest[~torch.isin(nearest, s.ids)]
    assert torch.isin(missed, s.near).float().mean() >= 0.9


def bias_store():
    """Six classes whose bias outranks the dot product: for x = (1, 0), x·w alone ranks 0, 1, 2 first,
    the softmax logits x·w + b rank 3, 4, 5 first; the cosine ranks 0, 1, 2 first."""
    store = LocalStore(6, 2, bias=True)
    store.weight = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    store.bias = torch.tensor([0.0, 0.0, 0.0, 5.0, 4.0, 3.0])
    return store


@pytest.mark.parametrize("mode", ["exact", "full"])
@pytest.mark.parametrize(("metric", "best"), [("dot", [3, 4]), ("angular", [0, 1])])
def test_exact_neighbours_rank_as_the_logits_with_the_bias(mode, metric, best):
    """The oracle's top-k is the logits' (x·w + b) under the dot metric, the cosine's under angular."""
    sel = build_selector(dataclasses.replace(SelectionConfig(), mode=mode, sample_num=4), 6, 2)
    sel.set_metric(metric)
    sel.attach(bias_store())
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert sel.neighbours(feats, 2).tolist() == [best, best]


def test_adaptive_share_scores_hardness_with_the_bias():
    """Hardness is scored by the logits: sample 1's positive (class 3) wins by its bias, so it is easy and
    sample 0 (whose negatives 3 and 4 outscore its positive by theirs) is the hard one."""
    from dcs_cli.selection.adaptive_share import share_by_hardness

    feats, labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 3])
    cand = torch.tensor([[1, 2, 3, 4], [0, 1, 2, 4]])
    kept, share = share_by_hardness(cand, feats, labels, bias_store(), "dot", 2, 4)
    assert share[0] > share[1]
    assert kept[0, :2].tolist() == [3, 4] and kept[1, 0] == 4


@pytest.mark.parametrize("mode", ["exact", "full", "hf"])
def test_an_explicit_metric_outlives_the_heads_and_auto_follows_it(mode):
    from dcs_cli.models.config import HeadConfig
    from dcs_cli.models.heads import build_head
    from dcs_cli.selection.sampled import SampledSoftmax

    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=64, background=False, build_jobs=1)
    explicit = build_selector(dataclasses.replace(cfg, metric="angular"), N, B)
    SampledSoftmax(explicit, clustered_store(), build_head(HeadConfig(type="softmax")))
    assert explicit.metric == "angular"
    auto = build_selector(dataclasses.replace(cfg, metric="auto"), N, B)
    SampledSoftmax(auto, clustered_store(), build_head(HeadConfig(type="cosface")))
    assert auto.metric == "angular"


@pytest.mark.parametrize("mode", ["full", "random", "exact"])
def test_adaptive_with_a_mode_that_ignores_it_is_refused(mode):
    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=64, adaptive=True)
    with pytest.raises(ConfigError, match=f"selection.adaptive works with modes hf, hnsw, ivf, not {mode}; "
                                          "set selection.adaptive=false"):
        build_selector(cfg, N, B)
