"""The adaptive share of neighbours (`selection.adaptive`): hard samples get more of `sample_num`.

Each sample's candidates (`hard_factor` × the even share k of neighbours) are re-scored against the
store's current rows (x·w + b for dot, as the softmax logits rank; the cosine for angular); a sample's
hardness is its best negative score minus its positive's score. The
shares are softmax(hardness / std(hardness)) × B × k, rounded and clamped to [k / 2, hard_factor × k]
(and to the N classes where N is smaller: the selector then retrieves all of them), so the whole batch
still asks for about B × k neighbours. Each sample keeps its best `share` candidates (by that score), the
rest become padding (-1).

    >>> import torch
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = LocalStore(num_classes=6, dim=2)
    >>> store.weight = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    >>> features, labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 3])   # sample 1 is hard
    >>> k, kmax = 2, max_share(2, hard_factor=2.0)
    >>> candidates = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 5]])
    >>> kept, share = share_by_hardness(candidates, features, labels, store, "dot", k, kmax)
    >>> share.tolist(), kept.tolist()
    ([1, 3], [[1, -1, -1, -1], [0, 1, 2, -1]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcs_cli.selection.store import ClassStore


def max_share(k: int, hard_factor: float) -> int:
    """Neighbours the hardest sample may get: `hard_factor` × the even share `k`, at least k."""
    return max(k, int(round(hard_factor * k)))


def share_by_hardness(cand: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, store: ClassStore,
                      metric: str, k: int, kmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's candidates (B×kmax, -1 = none) re-ordered best first and cut to its share, and the
    shares (B int64): harder samples (best negative close to or above the positive) get more. `cand` may
    hold fewer than `kmax` columns (fewer classes than that): no share then exceeds its width."""
    kmax = min(kmax, cand.shape[1])
    valid = cand >= 0
    w, b = store.rows(cand.clamp(min=0).reshape(-1))
    wpos, bpos = store.rows(labels)
    feats = features.detach().to("cpu", torch.float32)
    w, wpos = w.to("cpu").view(*cand.shape, -1), wpos.to("cpu")
    if metric == "angular":
        feats, w, wpos = F.normalize(feats, dim=1), F.normalize(w, dim=2), F.normalize(wpos, dim=1)
    scores = torch.einsum("bd,bkd->bk", feats, w)
    pos = (feats * wpos).sum(1)
    if b is not None and metric != "angular":  # rank as the softmax logits do
        scores += b.to("cpu", torch.float32).view(cand.shape)
        pos += bpos.to("cpu", torch.float32)
    scores[~valid | (cand == labels.view(-1, 1).to(cand.device))] = float("-inf")
    hardness = scores.max(1).values - pos
    hardness = torch.nan_to_num(hardness, neginf=float(hardness[torch.isfinite(hardness)].min())
                                if torch.isfinite(hardness).any() else 0.0)
    temp = hardness.std().clamp(min=1e-6) if hardness.numel() > 1 else torch.tensor(1.0)
    weights = torch.softmax(hardness / temp, 0)
    share = (weights * k * len(labels)).round().long().clamp(max(1, k // 2), kmax)
    order = scores.argsort(1, descending=True)
    cand = cand.gather(1, order)
    ranks = torch.arange(kmax).view(1, -1)
    cand = torch.where((ranks < share.view(-1, 1)) & valid.gather(1, order), cand, torch.full_like(cand, -1))
    return cand, share
