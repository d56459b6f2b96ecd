"""Full softmax as a selector (`selection.mode=full`): every class is active, labels stay as they are.

    >>> import torch
    >>> sel = FullSelector(num_classes=5).select(torch.zeros(2, 16), torch.tensor([4, 1]))
    >>> sel.ids.tolist(), sel.local_labels.tolist()
    ([0, 1, 2, 3, 4], [4, 1])
"""

from __future__ import annotations

import torch

from dcs_cli.selection.base import Selection, Selector
from dcs_cli.selection.compose import check_batch
from dcs_cli.selection.exact import store_topk
from dcs_cli.selection.store import ClassStore


class FullSelector(Selector):
    """`FullSelector(N)`: all N classes every step (the baseline every sampled mode is measured against)."""

    name = "full"

    def __init__(self, num_classes: int, metric: str = "auto"):
        self.num_classes = num_classes
        self.metric = metric  # "auto" until the head decides (set_metric); an explicit metric stays
        self.store: ClassStore | None = None

    def attach(self, store: ClassStore) -> None:
        self.store = store

    def set_metric(self, metric: str) -> None:
        if self.metric == "auto":
            self.metric = metric

    def select(self, features: torch.Tensor, labels: torch.Tensor) -> Selection:
        check_batch(features, labels, self.num_classes)
        ids = torch.arange(self.num_classes)
        return Selection(ids=ids, local_labels=labels.to("cpu", torch.long),
                         stats={"positives": int(torch.unique(labels).numel()), "retrieved": 0, "random_fill": 0})

    def neighbours(self, features: torch.Tensor, k: int) -> torch.Tensor:
        if self.store is None:
            raise TypeError("FullSelector.neighbours needs attach(store) first")
        return store_topk(features, self.store, k, self.metric)
