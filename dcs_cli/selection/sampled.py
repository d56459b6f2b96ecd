"""Sampled softmax: selector → store rows → head → loss, and one batched push of the row gradients.

    sampled = SampledSoftmax(selector, store, head)
    loss, stats = sampled(features, labels)
    loss.backward()          # gradients reach the backbone through `features`
    sampled.push()           # one SGD step on the active rows, then the selector's refresh hook

With a FullSelector this is the same head over all rows (full softmax); nothing else changes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcs_cli.errors import DcsError
from dcs_cli.selection.base import Selector
from dcs_cli.selection.store import ClassStore


class SampledSoftmax(nn.Module):
    """`loss, stats = SampledSoftmax(selector, store, head)(features, labels)`; then backward and push()."""

    def __init__(self, selector: Selector, store: ClassStore, head: nn.Module, fill_correction: bool = False):
        super().__init__()
        self.selector, self.store, self.head = selector, store, head
        self.fill_correction = fill_correction
        selector.set_metric(getattr(head, "metric", "dot"))
        selector.attach(store)
        self.step = 0
        self._pending: tuple | None = None

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        sel = self.selector.select(features.detach(), labels)
        w, b = self.store.rows(sel.ids)
        w = w.to(features.device).requires_grad_(True)
        if b is not None:
            b = b.to(features.device).requires_grad_(True)
        local = sel.local_labels.to(features.device)
        logits = self.head(features, w, b, local)
        if self.fill_correction:
            logits = logits + fill_log_weights(sel, self.store.num_classes, logits.device)
        loss = F.cross_entropy(logits, local)
        self._pending = (sel.ids, w, b)
        stats = dict(sel.stats)
        stats["active"] = int(sel.ids.numel())
        return loss, stats

    def push(self) -> None:
        """Send this step's row gradients to the store (one call) and let the selector refresh."""
        if self._pending is None:
            raise DcsError("SampledSoftmax.push() called without a forward pass since the last push")
        ids, w, b = self._pending
        self._pending = None
        if w.grad is None:
            raise DcsError("SampledSoftmax.push() needs loss.backward() first: the rows have no gradient")
        self.store.push(ids, w.grad, b.grad if b is not None else None)
        self.step += 1
        self.selector.refresh(self.store, self.step)


def fill_log_weights(sel, num_classes: int, device) -> torch.Tensor:
    """(S,) logit offsets: 0 for the positives and retrieved ids, log((N - P - R) / F) for the F random-fill ids.

    The fill stands for every class that was neither a positive nor retrieved, each drawn with probability
    F / (N - P - R); weighting its exp-logits by the inverse makes the sampled partition function an
    unbiased estimate of the full one, so a selected negative gets the gradient it would get in full softmax
    instead of one inflated by the missing classes' share."""
    st = sel.stats
    fill = st["random_fill"]
    offsets = torch.zeros(sel.ids.numel(), device=device)
    rest = num_classes - st["positives"] - st["retrieved"]
    if fill > 0 and rest > fill:
        offsets[-fill:] = math.log(rest / fill)
    return offsets
