"""The selector seam: which classes a mini-batch trains.

    sel = selector.select(features, labels)   # Selection(ids, local_labels, stats)
    logits = head(features, store.rows(sel.ids)[0], sel.local_labels)
    selector.refresh(store, step)             # maybe rebuild / update the index (never stalls)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from dcs_cli.selection.store import ClassStore


@dataclass
class Selection:
    """Active class ids for one batch: the batch's distinct labels first, then the selected negatives."""

    ids: torch.Tensor  # int64 (S,), unique
    local_labels: torch.Tensor  # int64 (B,), labels remapped into 0..S-1
    stats: dict = field(default_factory=dict)  # e.g. positives, retrieved, random_fill, index_age


class Selector(ABC):
    """Chooses exactly `sample_num` class ids per batch, positives always included."""

    name: str = "base"

    @abstractmethod
    def select(self, features: torch.Tensor, labels: torch.Tensor) -> Selection: ...

    def attach(self, store: ClassStore) -> None:  # noqa: B027 - optional hook
        """Give the selector the store it selects over; index selectors build their first index here."""

    def set_metric(self, metric: str) -> None:  # noqa: B027 - optional hook
        """Resolve `selection.metric=auto` from the head: "dot" (softmax) or "angular" (cosface, arcface)."""

    def neighbours(self, features: torch.Tensor, k: int) -> torch.Tensor:
        """The `k` classes this selector would retrieve for each sample (B×k int64, -1 = none): quality probes."""
        raise TypeError(f"selector {self.name!r} has no neighbour query")

    def refresh(self, store: ClassStore, step: int) -> None:  # noqa: B027 - optional hook
        """Called once per step after the store update; index-based selectors rebuild or update here."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work (index builds)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - optional hook
        pass
