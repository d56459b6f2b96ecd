"""Sampled softmax: selector → store rows → head → loss, and one batched push of the row gradients.

    sampled = SampledSoftmax(selector, store, head)
    loss, stats = sampled(features, labels)
    loss.backward()          # gradients reach the backbone through `features`
    sampled.push()           # one SGD step on the active rows, then the selector's refresh hook

With a FullSelector this is the same head over all rows (full softmax); nothing else changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcs_cli.errors import DcsError
from dcs_cli.selection.base import Selector
from dcs_cli.selection.store import ClassStore


class SampledSoftmax(nn.Module):
    """`loss, stats = SampledSoftmax(selector, store, head)(features, labels)`; then backward and push()."""

    def __init__(self, selector: Selector, store: ClassStore, head: nn.Module):
        super().__init__()
        self.selector, self.store, self.head = selector, store, head
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
