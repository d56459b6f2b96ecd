"""The in-process class store: weights, optional bias and momentum as torch tensors on one device.

    >>> store = LocalStore(num_classes=1000, dim=8, params=OptimParams(lr=0.1, weight_decay=0.0))
    >>> ids = torch.tensor([3, 17])
    >>> w, b = store.rows(ids)                     # S×d rows; b is None without bias=True
    >>> store.push(ids, torch.ones(2, 8))          # one SGD step on rows 3 and 17 only
    >>> round(float(store.rows(ids)[0][0, 0] - w[0, 0]), 6), store.steps    # -lr × grad (v = g at first)
    (-0.1, 1)

`device="cuda"` keeps the rows on a GPU (they are drawn on the CPU first, so every device starts from the
same rows). Updates go through `sgd_rows_` (the single definition of the rule), so a step touches only the
pushed rows and allocates only S-sized temporaries. With `catch_up=True` (what `dcs train` uses,
`optim.catch_up`) a row pushed or read by `current_rows` (what a training step computes with) first
catches up the steps it sat out, so a step uses the rows dense SGD would hold, and `settle()` catches every
row up; without it, rows that are not pushed keep their weight and momentum ("lazy"). `rows` reads them as
stored (what selectors score candidates with: no write, no catch-up cost).
"""

from __future__ import annotations

import torch

from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection.hugepages import empty_rows
from dcs_cli.selection.row_init import init_rows
from dcs_cli.selection.row_update import RowClock, catch_up_rows_, sgd_rows_
from dcs_cli.selection.store import ClassStore, OptimParams, on_cpu


class LocalStore(ClassStore):
    """`store = LocalStore(N, d, bias=False, init="normal", init_std=0.01, seed=0, catch_up=False)`: rows live in
    this process."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        bias: bool = False,
        init: str = "normal",
        init_std: float = 0.01,
        seed: int = 0,
        params: OptimParams | None = None,
        device: str | torch.device = "cpu",
        catch_up: bool = False,
    ):
        if num_classes <= 0 or dim <= 0:
            raise ConfigError(f"class store needs num_classes > 0 and dim > 0, got {num_classes} and {dim}")
        self.num_classes, self.dim, self.has_bias = int(num_classes), int(dim), bool(bias)
        self.device = torch.device(device)
        self.params = OptimParams(**vars(params)) if params is not None else OptimParams()
        # drawn on the CPU (huge pages) so every device gets the same start
        self.weight = init_rows(self.num_classes, self.dim, 0, self.num_classes, init, init_std, seed).to(self.device)
        self.momentum = (empty_rows(self.num_classes, self.dim, zero=True) if self.device.type == "cpu"
                         else torch.zeros_like(self.weight))
        self.bias = torch.zeros(self.num_classes, device=self.device) if bias else None
        self.bias_momentum = torch.zeros(self.num_classes, device=self.device) if bias else None
        # Steps pushed so far and, with catch-up, when each row was last updated (see RowClock).
        self.steps = 0
        self.clock = RowClock(self.num_classes, self.device) if catch_up else None

    # ------------------------------------------------------------------------------------------ rows
    def _ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.to(device=self.device, dtype=torch.long)

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = self._ids(ids)
        w = self.weight.index_select(0, ids)
        b = self.bias.index_select(0, ids) if self.bias is not None else None
        return w, b

    def current_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.clock is not None:  # the rows that sat out steps catch up first
            self._catch_up(*self.clock.behind(self._ids(ids), self.steps))
        return self.rows(ids)

    def push(self, ids: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor | None = None) -> None:
        ids = self._ids(ids)
        if grad_w.shape != (ids.numel(), self.dim):
            raise DataError(f"class store push: gradient shape {tuple(grad_w.shape)} does not match "
                            f"{ids.numel()} rows of dim {self.dim}")
        coef = self.clock.mark(ids, self.steps) if self.clock is not None else None
        if self.clock is not None:
            self.clock.record(self.steps, self.params)
        self.steps += 1
        sgd_rows_(self.weight, self.momentum, ids, grad_w.to(self.device), self.params, catch_up=coef)
        if self.bias is not None and grad_b is not None:
            sgd_rows_(self.bias, self.bias_momentum, ids, grad_b.to(self.device), self.params, catch_up=coef)

    def settle(self) -> None:
        """Catch every row up to the present step (before evaluation or a checkpoint); a no-op without
        catch-up. Afterwards the weights are what full SGD would hold had the rows' gradients been zero
        whenever they were not selected."""
        if self.clock is not None:
            self.clock.settle(self.steps, self._catch_up)

    def _catch_up(self, ids: torch.Tensor, coef: torch.Tensor) -> None:
        """Rows `ids` (unique) take the steps they sat out (`coef` from the clock); the caller resets their clock."""
        catch_up_rows_(self.weight, self.momentum, ids, coef, self.params, self.bias, self.bias_momentum)

    def weights(self) -> torch.Tensor:
        """The live N×d weights on the CPU (no copy on a CPU store): callers that keep them must clone."""
        return on_cpu(self.weight)

    def biases(self) -> torch.Tensor | None:
        return on_cpu(self.bias)

    # ----------------------------------------------------------------------------------------- optim
    def get_optim(self) -> OptimParams:
        return OptimParams(**vars(self.params))

    def set_optim(self, params: OptimParams) -> None:
        self.params = OptimParams(**vars(params))

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        self.settle()  # the saved rows are up to date, so a load needs only the step count
        state = {
            "steps": self.steps,
            "num_classes": self.num_classes, "dim": self.dim, "optim": vars(self.params).copy(),
            "weight": self.weight.cpu(), "momentum": self.momentum.cpu(),
        }
        if self.bias is not None:
            state["bias"], state["bias_momentum"] = self.bias.cpu(), self.bias_momentum.cpu()
        return state

    def _table(self, source: torch.Tensor) -> torch.Tensor:
        """A private float32 copy of an N×d table on this store's device (huge pages on the CPU)."""
        if self.device.type != "cpu":
            return source.to(self.device, torch.float32).clone()
        return empty_rows(*source.shape).copy_(source)

    def load_state_dict(self, state: dict) -> None:
        shape = tuple(state["weight"].shape)
        if shape != (self.num_classes, self.dim):
            raise DataError(f"class store state has weights {shape}, this store is "
                            f"({self.num_classes}, {self.dim}); use the config it was saved with")
        if ("bias" in state) != self.has_bias:
            raise DataError("class store state and this store disagree on the bias (head.bias)")
        self.weight = self._table(state["weight"])
        self.momentum = self._table(state["momentum"])
        if self.has_bias:
            self.bias = state["bias"].to(self.device, torch.float32).clone()
            self.bias_momentum = state["bias_momentum"].to(self.device, torch.float32).clone()
        if "optim" in state:
            self.params = OptimParams(**state["optim"])
        self.steps = int(state.get("steps", 0))
        if self.clock is not None:
            self.clock.reset(self.steps)
