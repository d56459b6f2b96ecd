"""Partial-FC style selection (`selection.mode=random`): the batch's positives plus uniform negatives.

    >>> import torch
    >>> selector = RandomSelector(num_classes=100, sample_num=8, seed=0)
    >>> sel = selector.select(torch.zeros(4, 16), torch.tensor([3, 3, 50, 7]))
    >>> sel.ids[:3].tolist(), sel.ids.numel(), sel.local_labels.tolist()
    ([3, 7, 50], 8, [0, 0, 2, 1])
"""

from __future__ import annotations

import torch

from dcs_cli.selection.base import Selection, Selector, check_sample_num
from dcs_cli.selection.compose import check_batch, compose


class RandomSelector(Selector):
    """`RandomSelector(N, S, seed)`: positives first, then uniform random classes up to exactly S."""

    name = "random"

    def __init__(self, num_classes: int, sample_num: int, seed: int = 0):
        check_sample_num(sample_num, num_classes)
        self.num_classes, self.sample_num = num_classes, sample_num
        self.generator = torch.Generator().manual_seed(seed)

    def select(self, features: torch.Tensor, labels: torch.Tensor) -> Selection:
        check_batch(features, labels, self.num_classes)
        return compose(labels, None, self.sample_num, self.num_classes, self.generator)

    def neighbours(self, features: torch.Tensor, k: int) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (features.shape[0], k), generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
