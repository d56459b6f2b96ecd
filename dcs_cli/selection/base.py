"""The selector seam: which classes a mini-batch trains, and the one rule on `selection.sample_num`.

A `Selector` turns a batch into a `Selection`: `selector.select(features, labels)` returns the active ids
(the batch's distinct labels first), the labels remapped into them, and stats. The caller then trains
only those rows, `store.current_rows(sel.ids)`, and once the store is updated calls `selector.refresh(store,
step)`, where an index selector may start rebuilding its index (it never waits for one).

`check_sample_num` is the only place the size of the active set is checked against the classes and
against a batch's distinct labels; the config checks, the data checks and every selector call it:

    >>> check_sample_num(1000, num_classes=500)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dcs_cli.errors.ConfigError: selection.sample_num = 1000 exceeds the 500 classes; lower it or use ...
    >>> check_sample_num(64, num_classes=500, distinct_labels=70)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dcs_cli.errors.ConfigError: selection.sample_num = 64 is smaller than the 70 distinct labels of this batch; ...
    >>> check_sample_num(1000, num_classes=500, mode="full")   # full softmax ignores sample_num
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from dcs_cli.errors import ConfigError
from dcs_cli.selection.store import ClassStore


def check_sample_num(sample_num: int, num_classes: int, distinct_labels: int = 0, *, mode: str = "") -> None:
    """ConfigError unless `sample_num` active classes fit: at most `num_classes`, at least a batch's
    `distinct_labels` (its positives are always active). `mode="full"` passes: full softmax trains every
    class and never reads sample_num."""
    if mode == "full":
        return
    if sample_num > num_classes:
        raise ConfigError(f"selection.sample_num = {sample_num} exceeds the {num_classes} classes; lower it or "
                          "use selection.mode=full (--mode full)")
    if distinct_labels > sample_num:
        raise ConfigError(f"selection.sample_num = {sample_num} is smaller than the {distinct_labels} distinct "
                          "labels of this batch; raise sample_num or lower data.batch_size")


@dataclass
class Selection:
    """Active class ids for one batch: the batch's distinct labels first, then the selected negatives."""

    ids: torch.Tensor  # int64 (S,), unique
    local_labels: torch.Tensor  # int64 (B,), labels remapped into 0..S-1
    stats: dict = field(default_factory=dict)  # e.g. positives, retrieved, random_fill, index_age
    # int64, unique, none of them in `ids`: the samples' next-nearest classes past the active ones, when the
    # selector was asked for `near` of them per sample (the tail estimate takes them exactly, tail.py)
    near: torch.Tensor | None = None
    # bool (S,), set when the selector left a random share of the slots to the fill: True at the retrieved
    # ids (the hard negatives), which the backbone's loss leaves out (`for_backbone`); None = it takes all
    retrieved: torch.Tensor | None = None

    def for_backbone(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The B×S active logits and the targets' columns (-1 = none here) the backbone's loss runs over:
        all of them, or with a random share the positives and the fill only."""
        if self.retrieved is None:
            return logits, targets
        keep = ~self.retrieved.to(logits.device)
        column = torch.cumsum(keep, 0) - 1  # each kept column's place among the kept ones
        return logits[:, keep], torch.where(targets >= 0, column[targets.clamp(min=0)], targets)


class Selector(ABC):
    """Chooses exactly `sample_num` class ids per batch, positives always included."""

    name: str = "base"
    # Neighbours per sample past the active ones to return as `Selection.near` (set by the tail estimate;
    # selectors that search neighbours honour it, the others return none)
    near: int = 0
    # Share of the slots past the positives left to the uniform fill (`selection.random_share`, set by the
    # sampled softmax); selectors that retrieve candidates honour it and mark what they retrieved
    random_share: float = 0.0

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

    def reseed(self, seed: int) -> None:
        """Restart the random fill from `seed` (the training loop does at each epoch, so a resumed run draws
        what an uninterrupted one would); selectors without a fill have nothing to restart."""
        generator = getattr(self, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work (index builds)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - optional hook
        pass
