"""The quality oracle (`selection.mode=exact`): each sample's true top-k classes by a chunked matmul over
all current weights, ranked as the softmax logits rank them (x·w + b for dot, the bias included where the
store has one; the cosine for angular).

    >>> import torch
    >>> weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.6, 0.8], [0.8, 0.6]])
    >>> features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> scores, ids = exact_topk(features, weights, k=2)            # B×k, best first
    >>> ids.tolist()
    [[0, 5], [1, 4]]
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = LocalStore(num_classes=6, dim=2)
    >>> store.weight = weights
    >>> selector = ExactSelector(num_classes=6, sample_num=4, batch_size=2)
    >>> selector.attach(store)
    >>> selector.select(features, torch.tensor([2, 3])).ids.tolist()  # positives, then every sample's best
    [2, 3, 0, 1]

Costs a full forward (B×N×d) per step, so it is a reference for the approximate selectors, not a speed-up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcs_cli.errors import DcsError
from dcs_cli.selection.base import Selection, Selector, check_sample_num
from dcs_cli.selection.compose import check_batch, compose
from dcs_cli.selection.store import ClassStore, all_biases

CHUNK_ROWS = 65536


def exact_topk(
    features: torch.Tensor, weights: torch.Tensor, k: int, metric: str = "dot", chunk: int = CHUNK_ROWS,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and ids (B×k, best first) of the k highest-scoring rows; memory B×chunk, never B×N. The dot
    metric adds `bias` (N, or None) to the scores; angular heads have none."""
    feats = features.detach().to("cpu", torch.float32)
    if metric == "angular":
        feats = F.normalize(feats, dim=1)
    k = min(k, weights.shape[0])
    best_s = torch.full((feats.shape[0], 0), float("-inf"))
    best_i = torch.empty((feats.shape[0], 0), dtype=torch.long)
    for start in range(0, weights.shape[0], chunk):
        rows = weights[start:start + chunk].detach().to("cpu", torch.float32)
        if metric == "angular":
            rows = F.normalize(rows, dim=1)
        scores = feats @ rows.T
        if bias is not None and metric != "angular":  # rank as the softmax logits do
            scores += bias[start:start + chunk].detach().to("cpu", torch.float32)
        s, i = scores.topk(min(k, rows.shape[0]), dim=1)
        best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
    return best_s, best_i


def store_topk(features: torch.Tensor, store: ClassStore, k: int, metric: str) -> torch.Tensor:
    """B×k ids of each sample's k best classes over all of `store`'s rows, by the score the head's logits
    rank by (`metric` "auto" = "dot": x·w + b)."""
    metric = "dot" if metric == "auto" else metric
    return exact_topk(features, store.weights(), k, metric, bias=all_biases(store) if metric == "dot" else None)[1]


class ExactSelector(Selector):
    """`ExactSelector(N, S, B)`: positives plus each sample's exact top-(S//B+1) classes, rank-major."""

    name = "exact"

    def __init__(self, num_classes: int, sample_num: int, batch_size: int, seed: int = 0, metric: str = "auto"):
        check_sample_num(sample_num, num_classes)
        self.num_classes, self.sample_num = num_classes, sample_num
        self.k = sample_num // batch_size + 1  # per-sample neighbours, as in the original code
        self.metric = metric  # "auto" until the head decides (set_metric); an explicit metric stays
        self.generator = torch.Generator().manual_seed(seed)
        self.store: ClassStore | None = None

    def attach(self, store: ClassStore) -> None:
        self.store = store

    def set_metric(self, metric: str) -> None:
        if self.metric == "auto":
            self.metric = metric

    def refresh(self, store: ClassStore, step: int) -> None:
        self.store = store

    def neighbours(self, features: torch.Tensor, k: int) -> torch.Tensor:
        if self.store is None:
            raise DcsError("exact selection needs the class store: call attach(store) before select")
        return store_topk(features, self.store, k, self.metric)

    def select(self, features: torch.Tensor, labels: torch.Tensor) -> Selection:
        check_batch(features, labels, self.num_classes)
        cand = self.neighbours(features, min(self.k + self.near, self.num_classes))
        near = cand[:, self.k:] if self.near else None
        return compose(labels, cand[:, : self.k].T.reshape(-1), self.sample_num, self.num_classes, self.generator,
                       near, self.random_share)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
