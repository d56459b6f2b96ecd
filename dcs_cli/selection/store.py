"""The class store: owner of the N×d classifier weights (optional bias) and their momentum.

    store = LocalStore(num_classes=1_000_000, dim=256, lr=0.01, momentum=0.9, weight_decay=1e-4)
    w, b = store.rows(ids)          # gather the active rows (S×d, S or None)
    store.push(ids, grad_w, grad_b) # one SGD step on exactly those rows

The training code only sees this interface, so an in-process store and a parameter-server client are
interchangeable. Update rule (PyTorch SGD, dampening 0, no nesterov), applied to the pushed rows only:
    g = grad + weight_decay * w ;  v = momentum * v + g  (v = g on a row's first update) ;  w -= lr * v
Rows that are not pushed keep their weight and momentum unchanged ("lazy" momentum and weight decay).
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

    def set_lr(self, lr: float) -> None:
        params = self.get_optim()
        params.lr = lr
        self.set_optim(params)


def sgd_rows_(
    weight: torch.Tensor,
    momentum_buf: torch.Tensor,
    ids: torch.Tensor,
    grad: torch.Tensor,
    params: OptimParams,
) -> None:
    """In place: one PyTorch-SGD step (dampening 0, no nesterov) on rows `ids` of `weight`.

    The single definition of the update rule, shared by `LocalStore` and the parameter server so the
    two cannot drift apart. A zero momentum buffer makes the first update `v = g`, exactly as
    `torch.optim.SGD` initialises its buffer. Works for 2-D weights (rows) and 1-D biases.
    """
    w = weight.index_select(0, ids)
    g = grad.to(w.dtype)
    if params.weight_decay:
        g = g.add(w, alpha=params.weight_decay)
    if params.momentum:
        v = momentum_buf.index_select(0, ids).mul_(params.momentum).add_(g)
        momentum_buf.index_copy_(0, ids, v)
        g = v
    weight.index_copy_(0, ids, w.sub_(g, alpha=params.lr))


# Re-exported here so `from dcs_cli.selection.store import LocalStore` works (agreed API); defined in its
# own module to keep this one the interface.
from dcs_cli.selection.local_store import LocalStore  # noqa: E402, F401
