"""Partial-FC style selection: the batch's positives plus uniformly drawn negatives.

    sel = RandomSelector(num_classes, sample_num, seed=0).select(features, labels)
"""

from __future__ import annotations

import torch

from dcs_cli.errors import ConfigError
from dcs_cli.selection.base import Selection, Selector
from dcs_cli.selection.compose import check_batch, compose


class RandomSelector(Selector):
    """`RandomSelector(N, S, seed)`: positives first, then uniform random classes up to exactly S."""

    name = "random"

    def __init__(self, num_classes: int, sample_num: int, seed: int = 0):
        if sample_num > num_classes:
            raise ConfigError(f"selection.sample_num={sample_num} exceeds the {num_classes} classes; "
                              "lower it or use selection.mode=full")
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
