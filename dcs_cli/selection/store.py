"""The class store: owner of the N×d classifier weights (optional bias) and their momentum.

    >>> import torch
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = LocalStore(1000, 64, params=OptimParams(lr=0.01, momentum=0.9, weight_decay=1e-4))
    >>> ids = torch.tensor([3, 17])
    >>> w, b = store.rows(ids)                  # the active rows (S×d; bias S or None)
    >>> store.push(ids, torch.ones(2, 64))      # one SGD step on exactly those rows
    >>> tuple(w.shape), b is None
    ((2, 64), True)

The training code only sees this interface, so an in-process store (`local_store.py`), a shard
(`sharded_store.py`) and a parameter-server client are interchangeable. Their update rule, one definition
in `row_update.py`, is PyTorch SGD (dampening 0, no nesterov) applied to the pushed rows only:
    g = grad + weight_decay * w ;  v = momentum * v + g  (v = g on a row's first update) ;  w -= lr * v
Rows that are not pushed keep their weight and momentum unchanged until they are next pushed; a store with
catch-up (`RowClock`) then first applies the zero-gradient steps they sat out, each with its own LR, so its
rows follow dense SGD exactly, and `settle()` brings every row up to date (before evaluation, checkpoints
and index refreshes); without catch-up they stay frozen ("lazy" momentum and weight decay).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class OptimParams:
    """Hyper-parameters of the store's SGD; the trainer changes `lr` as its schedule moves."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4


class ClassStore(ABC):
    """N×d classifier rows with their optimiser state, addressed by class id."""

    num_classes: int
    dim: int
    has_bias: bool

    @abstractmethod
    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights (S×d float32) and bias (S, or None) of `ids` (int64, S), as fresh tensors."""

    def current_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rows(ids)` as of the present step, what a training step computes with: a store that catches
        skipped steps up (optim.catch_up) applies them to these rows first. By default (a remote store,
        which catches up on push) the rows as stored. Selectors score candidates with `rows`."""
        return self.rows(ids)

    @abstractmethod
    def push(self, ids: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor | None = None) -> None:
        """Apply one SGD step to rows `ids` (unique) with their gradients (S×d, S)."""

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """All N×d weights on the CPU (a snapshot or read-only view) for index building and evaluation."""

    @abstractmethod
    def get_optim(self) -> OptimParams: ...

    @abstractmethod
    def set_optim(self, params: OptimParams) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def settle(self) -> None:  # noqa: B027 - optional hook
        """Bring rows that sat out steps up to the present step (stores that catch rows up lazily)."""

    def set_lr(self, lr: float) -> None:
        params = self.get_optim()
        params.lr = lr
        self.set_optim(params)


def on_cpu(table: torch.Tensor | None) -> torch.Tensor | None:
    """A store's table as callers read it: itself on a CPU store (no copy: clone to keep it), else a CPU copy."""
    if table is None or table.device.type == "cpu":
        return table
    return table.cpu()


def all_biases(store: ClassStore, chunk: int = 8192) -> torch.Tensor | None:
    """All N biases on the CPU, None without one (`head.bias`): the store's own `biases()` where it has one
    (local and sharded stores), else read through `rows` in chunks."""
    if not store.has_bias:
        return None
    biases = getattr(store, "biases", None)
    if biases is not None:
        return biases()
    return torch.cat([store.rows(torch.arange(start, min(start + chunk, store.num_classes)))[1].to("cpu")
                      for start in range(0, store.num_classes, chunk)])
