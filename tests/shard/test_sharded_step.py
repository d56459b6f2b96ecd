"""Two gloo processes with a sharded class store against one process over the same global batch.

(a) full softmax: loss, backbone and feature gradients, updated rows and momentum, over two steps;
(b) exact selection: the shards' active sets cover every sample's exact global top-k, and the sharded
    step equals the single-process step over the same active set (same loss, gradients and rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from shard_workers import make_backbone, make_data, make_head, run_ranks, sharded_steps, store_kwargs  # noqa: E402

from dcs_cli.selection.base import Selection, Selector  # noqa: E402
from dcs_cli.selection.exact import exact_topk  # noqa: E402
from dcs_cli.selection.full import FullSelector  # noqa: E402
from dcs_cli.selection.local_store import LocalStore  # noqa: E402
from dcs_cli.selection.sampled import SampledSoftmax  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)


class ReplaySelector(Selector):
    """Returns the given active sets in turn, with their retrieved ids marked when given (the single-process
    side of a sampled comparison)."""

    def __init__(self, sets: list[torch.Tensor], retrieved: list[torch.Tensor] | None = None):
        self.sets = list(sets)
        self.retrieved = list(retrieved) if retrieved is not None else [None] * len(sets)

    def select(self, features, labels):
        ids = self.sets.pop(0)
        pos = {int(c): i for i, c in enumerate(ids)}
        return Selection(ids=ids, local_labels=torch.tensor([pos[int(y)] for y in labels]),
                         stats={"positives": int(torch.unique(labels).numel()), "retrieved": 0, "random_fill": 0},
                         retrieved=self.retrieved.pop(0))


def single_process(spec: dict, selector) -> dict:
    """The reference: one LocalStore, the whole global batch, no DDP."""
    store = LocalStore(spec["classes"], spec["dim"], **store_kwargs(spec))
    tail = spec.get("ref_tail_samples", spec.get("tail_samples", 0))
    sampled = SampledSoftmax(selector, store, make_head(spec["head"]), tail_samples=tail)
    backbone = make_backbone(spec)
    out = {"loss": [], "feature_grad": [], "backbone_grad": [], "topk": [], "labels": []}
    # every shard keeps its positives (at most B) and then its samples' neighbours rank by rank, so each
    # sample's first (S/2 - B) // B neighbours inside every shard always make the cut
    b = sum(spec["sizes"])
    k = max(1, (spec.get("sample_num", 2 * b) // 2 - b) // b)
    for step in range(spec["steps"]):
        x, y = make_data(spec, step)
        backbone.zero_grad()
        features = backbone(x)
        features.retain_grad()
        out["topk"].append(exact_topk(features.detach(), store.weight, k, make_head(spec["head"]).metric)[1])
        out["labels"].append(y)
        loss, _ = sampled(features, y)
        loss.backward()
        sampled.push()
        out["loss"].append(float(loss.detach()))
        out["feature_grad"].append(features.grad.clone())
        out["backbone_grad"].append([p.grad.clone() for p in backbone.parameters()])
    out["weight"], out["momentum"], out["bias"] = store.weight, store.momentum, store.bias
    return out


def compare(ranks: list[dict], ref: dict, spec: dict) -> None:
    world = len(ranks)
    bounds = [0]
    for n in spec["sizes"]:
        bounds.append(bounds[-1] + n)
    for step in range(spec["steps"]):
        for r, res in enumerate(ranks):
            assert res["loss"][step] == pytest.approx(ref["loss"][step], rel=1e-5, abs=1e-6), (step, r)
            # the gathered gradient comes back times W: DDP's mean over ranks then gives the exact gradient
            torch.testing.assert_close(res["feature_grad"][step] / world,
                                       ref["feature_grad"][step][bounds[r]:bounds[r + 1]], **TOL)
            for got, want in zip(res["backbone_grad"][step], ref["backbone_grad"][step], strict=True):
                torch.testing.assert_close(got, want, **TOL)
    for res in ranks:
        lo, hi = res["lo"], res["hi"]
        torch.testing.assert_close(res["weight"], ref["weight"][lo:hi], **TOL)
        torch.testing.assert_close(res["momentum"], ref["momentum"][lo:hi], **TOL)
        if ref["bias"] is not None:
            torch.testing.assert_close(res["bias"], ref["bias"][lo:hi], **TOL)
        torch.testing.assert_close(res["gathered"], ref["weight"], **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "softmax_bias", "cosface", "arcface"])
def test_sharded_full_step_equals_one_process(tmp_path, head):
    # 41 classes split 20 + 21, local batches 5 and 3: uneven on both axes
    spec = {"classes": 41, "dim": 8, "d_in": 6, "sizes": [5, 3], "steps": 2, "mode": "full", "head": head}
    ranks = run_ranks(sharded_steps, 2, tmp_path, spec)
    ref = single_process(spec, FullSelector(spec["classes"]))
    compare(ranks, ref, spec)
    assert [r["active_total"] for r in ranks] == [41, 41]
    assert ranks[0]["loss"][0] > ranks[0]["loss"][1]  # the step did train: a failable sanity check


@pytest.mark.slow
@pytest.mark.parametrize("head,tail,near,share", [("softmax", 0, 0, 0.0), ("cosface", 200, 0, 0.0),
                                                  ("cosface", 1, 200, 0.0), ("arcface", 200, 0, 0.5)])
def test_sharded_exact_step_equals_one_process(tmp_path, head, tail, near, share):
    # tail 200 >= the inactive classes: every shard (and the one process) takes all of its inactive rows,
    # so the rows' denominators are exact and must agree across the shards' reductions; with near 200 each
    # shard takes them all as its samples' near classes instead (no draw), against the same exact reference;
    # with a random share each shard's backbone loss leaves its retrieved rows out: the one process replays them
    spec = {"classes": 200, "dim": 8, "d_in": 6, "sizes": [4, 4], "steps": 2, "mode": "exact", "head": head,
            "sample_num": 80, "tail_samples": tail, "tail_near": near, "random_share": share,
            "ref_tail_samples": 200 if tail else 0}  # the one process takes every inactive row exactly
    ranks = run_ranks(sharded_steps, 2, tmp_path, spec)
    sets = [torch.cat([r["active"][step] for r in ranks]) for step in range(spec["steps"])]
    hard = [torch.cat([r["retrieved"][step] for r in ranks]) for step in range(spec["steps"])]
    for active in sets:
        assert active.numel() == 80 and torch.unique(active).numel() == 80
    if share:  # each shard keeps at most half of its 40 slots for what it retrieved
        assert all(0 < int(h.sum()) <= 2 * 20 for h in hard)
    ref = single_process(spec, ReplaySelector(sets, hard if share else None))
    compare(ranks, ref, spec)
    for step, active in enumerate(sets):
        chosen = set(active.tolist())
        # positives, and every sample's exact top-k over ALL classes (k = each shard's own k): the union
        # of per-shard top-k lists must contain the global one
        assert set(ref["labels"][step].tolist()) <= chosen
        if not share:
            assert set(ref["topk"][step].reshape(-1).tolist()) <= chosen, step
        for r in ranks:  # each shard chose only its own rows
            own = r["active"][step]
            assert bool(((own >= r["lo"]) & (own < r["hi"])).all())
