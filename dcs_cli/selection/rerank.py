"""Exact re-rank: the k best of each sample's retrieved candidates by their score against the live rows.

An index may rank from stale rows, or from a reduced projection of them (`selection.index_dim`, see
projection.py), so an index selector retrieves `selection.rerank` × k candidates per sample and keeps the
k whose exact score is highest: x·w + b for the dot metric (as the softmax logits rank), the cosine for
angular. Padding (-1) stays last, and a sample with fewer than k valid candidates gets -1 in their place.

    >>> import torch
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = LocalStore(num_classes=4, dim=2)
    >>> store.weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.5, 0.5]])
    >>> features = torch.tensor([[0.6, 0.8]])
    >>> candidates = torch.tensor([[1, 2, 3, -1]])      # in the index's order; -1 = padding
    >>> exact_rerank(features, candidates, 2, store, "dot").tolist()        # scores 0.8, 1.8, 0.7
    [[2, 1]]
    >>> exact_rerank(features, candidates, 2, store, "angular").tolist()    # cosines 0.8, 0.6, 0.99
    [[3, 1]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcs_cli.selection.store import ClassStore


def exact_rerank(feats: torch.Tensor, cand: torch.Tensor, k: int, store: ClassStore, metric: str) -> torch.Tensor:
    """B×k ids: the k best of `cand` (B×m, -1 = none) for float32 `feats` (B×d) by the exact score against
    the store's current rows under `metric` ("dot" or "angular"); -1 where fewer than k are valid."""
    valid = cand >= 0
    w, b = store.rows(cand.clamp(min=0).reshape(-1))
    w = w.to("cpu", torch.float32).view(*cand.shape, -1)
    if metric == "angular":
        scores = torch.einsum("bd,bkd->bk", F.normalize(feats, dim=1), F.normalize(w, dim=2))
    else:
        scores = torch.einsum("bd,bkd->bk", feats, w)
        if b is not None:  # rank as the softmax logits do
            scores += b.to("cpu", torch.float32).view(cand.shape)
    scores = scores.masked_fill(~valid, float("-inf"))
    top = scores.topk(min(k, cand.shape[1]), dim=1)
    out = cand.gather(1, top.indices)
    return out.masked_fill(top.values == float("-inf"), -1)
