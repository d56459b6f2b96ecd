"""Sampled softmax: selector → store rows → head → loss, and one batched push of the row gradients.

    >>> from dcs_cli.models.heads import SoftmaxHead
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> from dcs_cli.selection.random_sel import RandomSelector
    >>> store = LocalStore(1000, 16)
    >>> sampled = SampledSoftmax(RandomSelector(1000, sample_num=64, seed=0), store, SoftmaxHead())
    >>> features = torch.randn(8, 16, requires_grad=True)             # the backbone's output
    >>> loss, stats = sampled(features, torch.randint(0, 1000, (8,)))
    >>> loss.backward()          # gradients reach the backbone through `features`
    >>> sampled.push()           # one SGD step on the active rows, then the selector's refresh hook
    >>> stats["active"], store.steps, tuple(features.grad.shape)
    (64, 1, (8, 16))

With a FullSelector this is the same head over all rows (full softmax); nothing else changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcs_cli.errors import DcsError
from dcs_cli.selection.base import Selector
from dcs_cli.selection.full import FullSelector
from dcs_cli.selection.store import ClassStore
from dcs_cli.selection.tail import (
    TailSampler,
    resolve_tail_near,
    resolve_tail_samples,
    rows_past_active,
    tail_log_mass,
)


class SampledSoftmax(nn.Module):
    """`loss, stats = SampledSoftmax(selector, store, head)(features, labels)`; then backward and push().

    `tail_samples` (-1 = by the head, `resolve_tail_samples`): uniform draws among the inactive classes
    that estimate their share of the softmax denominator for the rows' gradient (`tail.py`). `random_share`
    (`selection.random_share`, 0 = off) of the active slots past the positives go to a uniform fill; the
    backbone's loss then runs over the positives and the fill, the retrieved hard negatives training the
    rows only (`Selection.for_backbone`). Without either the backbone and the rows share the
    plain sampled softmax's loss."""

    def __init__(self, selector: Selector, store: ClassStore, head: nn.Module, tail_samples: int = 0,
                 seed: int = 0, tail_near: int = 0, random_share: float = 0.0):
        super().__init__()
        self.selector, self.store, self.head = selector, store, head
        metric = getattr(head, "metric", "dot")
        selector.set_metric(metric)
        selector.attach(store)
        k = resolve_tail_samples(tail_samples, metric, selects_all=isinstance(selector, FullSelector))
        self.tail = TailSampler(store.num_classes, k, seed) if k > 0 else None
        selector.near = resolve_tail_near(tail_near, k)
        selector.random_share = random_share
        self.step = 0
        self._pending: tuple | None = None

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        sel = self.selector.select(features.detach(), labels)
        active = sel.ids.numel()
        near, drawn, log_weight = rows_past_active(self.tail, sel)
        # one store call; the rows as of this step (catch-up first), as dense SGD would hold them
        w, b = self.store.current_rows(torch.cat([sel.ids, near, drawn]))
        w = w.to(features.device)
        b = b.to(features.device) if b is not None else None
        w, w_rest = w[:active].detach().requires_grad_(True), w[active:]
        b, b_rest = (b[:active].detach().requires_grad_(True), b[active:]) if b is not None else (None, None)
        local = sel.local_labels.to(features.device)
        stats = dict(sel.stats)
        stats["active"] = int(active)
        if self.tail is None and sel.retrieved is None:
            loss = F.cross_entropy(self.head(features, w, b, local), local)
        else:  # the backbone's loss and the rows' apart
            logits = self.head(features, w.detach(), b.detach() if b is not None else None, local)
            loss = F.cross_entropy(*sel.for_backbone(logits, local))
            # the rows': every active class (with the tail, the inactive classes' estimated mass in the denominator)
            row_logits = self.head(features.detach(), w, b, local)
            if self.tail is not None:
                with torch.no_grad():  # the near rows whole, the drawn ones scaled up (tail.py)
                    log_tail = tail_log_mass(self.head(features, w_rest, b_rest, None), near.numel(), log_weight)
                row_logits = torch.cat([row_logits, log_tail.unsqueeze(1)], 1)
                stats["tail"] = int(near.numel() + drawn.numel())
            row_loss = F.cross_entropy(row_logits, local)
            loss = loss + (row_loss - row_loss.detach())  # the value stays the backbone's loss
        self._pending = (sel.ids, w, b)
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
