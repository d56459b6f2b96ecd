"""The model-parallel class store: rank r of W owns the contiguous class slice [lo_r, hi_r) on its device.

    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = ShardedStore(num_classes=1000, dim=8, rank=1, world=2, params=OptimParams(lr=0.1))
    >>> store.lo, store.hi                                   # this rank's slice of the classes
    (500, 1000)
    >>> ids = torch.tensor([500, 999])                       # global ids, all inside this shard
    >>> w, b = store.rows(ids)
    >>> bool((w == LocalStore(1000, 8).rows(ids)[0]).all())  # the same start as a one-process run
    True
    >>> store.push(ids, torch.ones(2, 8))                    # one SGD step on this shard's rows only
    >>> store.rows(torch.tensor([3]))
    Traceback (most recent call last):
    ...
    dcs_cli.errors.DataError: sharded store rank 1: class ids 3..3 are outside its shard 500..999; ask the owning rank

Ids at the interface are global class ids; rows outside the shard are a DataError (the caller must ask the
owning rank). Selectors run over the shard with local ids through `store.local_view()`. Rows start equal
to `LocalStore(N, d, seed=seed)`'s rows lo..hi-1, generated without materialising N×d (`row_init.init_rows`),
so a one-process run and a sharded run begin from the same classifier. Updates go through `sgd_rows_`,
the single definition of the rule. `momentum_dtype=torch.bfloat16` halves the momentum's memory (the
10M-class option): the update is still computed in float32 on the pushed rows and stored rounded.
Nothing here talks to the network; `weights()` is this shard's rows (hi-lo)×d, `gather_weights()` is
the collective that assembles all N×d. Without `rank`/`world` the store takes the process group's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection.hugepages import empty_rows
from dcs_cli.selection.row_init import init_rows
from dcs_cli.selection.row_update import RowClock, catch_up_rows_, sgd_rows_
from dcs_cli.selection.store import ClassStore, OptimParams, on_cpu

MOMENTUM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The catch-up of rows that sat out steps (RowClock), when this checkout's store has it:
# the sharded store follows whatever rule LocalStore follows, so both start and step alike.


def shard_range(num_classes: int, world: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of rank `rank`: contiguous, sizes differ by at most one."""
    return num_classes * rank // world, num_classes * (rank + 1) // world


def _process_group() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedStore(ClassStore):
    """`ShardedStore(N, d, rank=r, world=W)`: the rows [lo, hi) of N classes; rank/world default to the group's."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        rank: int | None = None,
        world: int | None = None,
        bias: bool = False,
        init: str = "normal",
        init_std: float = 0.01,
        seed: int = 0,
        params: OptimParams | None = None,
        device: str | torch.device = "cpu",
        momentum_dtype: str | torch.dtype = "float32",
        catch_up: bool = False,
    ):
        group_rank, group_world = _process_group()
        rank = group_rank if rank is None else int(rank)
        world = group_world if world is None else int(world)
        if num_classes <= 0 or dim <= 0:
            raise ConfigError(f"class store needs num_classes > 0 and dim > 0, got {num_classes} and {dim}")
        if world <= 0 or not 0 <= rank < world:
            raise ConfigError(f"sharded store: rank {rank} is not in a world of {world} processes")
        if num_classes < world:
            raise ConfigError(f"sharded store: {num_classes} classes cannot be split over {world} processes; "
                              "use fewer processes")
        if isinstance(momentum_dtype, str):
            if momentum_dtype not in MOMENTUM_DTYPES:
                raise ConfigError(f"sharded store: momentum dtype must be one of {', '.join(MOMENTUM_DTYPES)}, "
                                  f"got {momentum_dtype!r}")
            momentum_dtype = MOMENTUM_DTYPES[momentum_dtype]
        self.num_classes, self.dim, self.has_bias = int(num_classes), int(dim), bool(bias)
        self.rank, self.world = rank, world
        self.lo, self.hi = shard_range(self.num_classes, world, rank)
        self.device = torch.device(device)
        self.momentum_dtype = momentum_dtype
        self.params = OptimParams(**vars(params)) if params is not None else OptimParams()
        rows = init_rows(self.num_classes, self.dim, self.lo, self.hi, init, init_std, seed)
        self.weight = rows if self.device.type == "cpu" else rows.to(self.device)
        self.momentum = self._zeros_like_momentum()
        n = self.shard_size
        self.bias = torch.zeros(n, device=self.device) if bias else None
        self.bias_momentum = torch.zeros(n, device=self.device) if bias else None
        # as LocalStore: steps pushed so far and, with catch-up, when each row was last updated
        self.steps = 0
        self.clock = RowClock(n, self.device) if catch_up else None

    def _zeros_like_momentum(self) -> torch.Tensor:
        if self.device.type == "cpu" and self.momentum_dtype == torch.float32:
            return empty_rows(self.shard_size, self.dim, zero=True)
        return torch.zeros(self.shard_size, self.dim, dtype=self.momentum_dtype, device=self.device)

    @property
    def shard_size(self) -> int:
        return self.hi - self.lo

    # ------------------------------------------------------------------------------------------ ids
    def owns(self, ids: torch.Tensor) -> torch.Tensor:
        """Bool mask: which global `ids` this shard owns."""
        return (ids >= self.lo) & (ids < self.hi)

    def to_local(self, ids: torch.Tensor) -> torch.Tensor:
        """Global ids of this shard → local row numbers (int64 on the store's device); DataError otherwise."""
        ids = ids.to(device=self.device, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < self.lo or int(ids.max()) >= self.hi):
            raise DataError(f"sharded store rank {self.rank}: class ids {int(ids.min())}..{int(ids.max())} "
                            f"are outside its shard {self.lo}..{self.hi - 1}; ask the owning rank")
        return ids - self.lo

    # ------------------------------------------------------------------------------------------ rows
    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.local_rows(self.to_local(ids))

    def push(self, ids: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor | None = None) -> None:
        self.local_push(self.to_local(ids), grad_w, grad_b)

    def current_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.current_local_rows(self.to_local(ids))

    def current_local_rows(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As LocalStore.current_rows, in local ids: the rows that sat out steps catch up first."""
        local = local.to(device=self.device, dtype=torch.long)
        if self.clock is not None:
            self._catch_up(*self.clock.behind(local, self.steps))
        return self.local_rows(local)

    def local_rows(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        local = local.to(device=self.device, dtype=torch.long)
        w = self.weight.index_select(0, local)
        b = self.bias.index_select(0, local) if self.bias is not None else None
        return w, b

    def local_push(self, local: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor | None = None) -> None:
        local = local.to(device=self.device, dtype=torch.long)
        if grad_w.shape != (local.numel(), self.dim):
            raise DataError(f"class store push: gradient shape {tuple(grad_w.shape)} does not match "
                            f"{local.numel()} rows of dim {self.dim}")
        grad_w = grad_w.to(self.device)
        extra = {}
        if self.clock is not None:
            extra["catch_up"] = self.clock.mark(local, self.steps)
            self.clock.record(self.steps, self.params)
        self.steps += 1
        sgd_rows_(self.weight, self.momentum, local, grad_w, self.params, **extra)
        if self.bias is not None and grad_b is not None:
            sgd_rows_(self.bias, self.bias_momentum, local, grad_b.to(self.device), self.params, **extra)

    def settle(self) -> None:
        """Catch every row up to the present step (before evaluation or a checkpoint), as LocalStore.settle."""
        if self.clock is not None:
            self.clock.settle(self.steps, self._catch_up)

    def _catch_up(self, local: torch.Tensor, coef: torch.Tensor) -> None:
        """Rows `local` (unique) take the steps they sat out (`coef` from the clock); the caller resets their clock."""
        catch_up_rows_(self.weight, self.momentum, local, coef, self.params, self.bias, self.bias_momentum)

    def weights(self) -> torch.Tensor:
        """This shard's live (hi-lo)×d weights on the CPU (not all N: see `gather_weights`)."""
        return on_cpu(self.weight)

    def biases(self) -> torch.Tensor | None:
        return on_cpu(self.bias)

    def gather_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Collective (every rank calls it): all N×d weights and N biases, on every rank's CPU.

        Costs N×d per rank: for validation and export of moderate N, not for every step."""
        if self.world == 1:
            return self.weights(), self.biases()
        table = torch.cat([self.weight, self.bias.view(-1, 1)], 1) if self.bias is not None else self.weight
        longest = -(-self.num_classes // self.world)
        padded = torch.zeros(longest, table.shape[1], device=self.device)
        padded[: self.shard_size] = table
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        ranges = [shard_range(self.num_classes, self.world, r) for r in range(self.world)]
        full = torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, ranges, strict=True)]).cpu()
        if self.bias is not None:
            return full[:, :-1].contiguous(), full[:, -1].contiguous()
        return full, None

    def local_view(self) -> ShardView:
        """This shard as a ClassStore over local ids 0..hi-lo-1: what a per-shard selector attaches to."""
        return ShardView(self)

    # ----------------------------------------------------------------------------------------- optim
    def get_optim(self) -> OptimParams:
        return OptimParams(**vars(self.params))

    def set_optim(self, params: OptimParams) -> None:
        self.params = OptimParams(**vars(params))

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """This shard's state: global N, its range and world, weights and momentum (momentum in its dtype),
        every row caught up to the present step."""
        self.settle()
        state = {"steps": self.steps, "num_classes": self.num_classes, "dim": self.dim,
                 "optim": vars(self.params).copy(), "lo": self.lo, "hi": self.hi, "rank": self.rank,
                 "world": self.world,
                 "weight": self.weight.cpu(), "momentum": self.momentum.cpu()}
        if self.bias is not None:
            state["bias"], state["bias_momentum"] = self.bias.cpu(), self.bias_momentum.cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load this shard's own state, or slice a whole-table (LocalStore, N rows) state: 1 → W resume.

        Shards of another world size load through `shard_checkpoint.load_store`."""
        rows = int(state["weight"].shape[0])
        if int(state.get("num_classes", rows)) != self.num_classes or int(state["weight"].shape[1]) != self.dim:
            raise DataError(f"class store state is for {state.get('num_classes', rows)} classes of dim "
                            f"{state['weight'].shape[1]}, this store is ({self.num_classes}, {self.dim}); "
                            "use the config it was saved with")
        if ("bias" in state) != self.has_bias:
            raise DataError("class store state and this store disagree on the bias (head.bias)")
        if "lo" in state:
            if (int(state["lo"]), int(state["hi"])) != (self.lo, self.hi):
                raise DataError(f"class store shard {state['lo']}..{state['hi']} is not this rank's shard "
                                f"{self.lo}..{self.hi}; load a sharded checkpoint with shard_checkpoint.load_store")
            a, b = 0, rows
        elif rows == self.num_classes:
            a, b = self.lo, self.hi
        else:
            raise DataError(f"class store state has {rows} rows, neither the whole table nor this shard")
        self.weight = self._table(state["weight"][a:b], torch.float32)
        self.momentum = self._table(state["momentum"][a:b], self.momentum_dtype)
        if self.has_bias:
            self.bias = state["bias"][a:b].to(self.device, torch.float32).clone()
            self.bias_momentum = state["bias_momentum"][a:b].to(self.device, torch.float32).clone()
        if "optim" in state:
            self.params = OptimParams(**state["optim"])
        self.steps = int(state.get("steps", 0))
        if self.clock is not None:
            self.clock.reset(self.steps)

    def _table(self, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.device.type == "cpu" and dtype == torch.float32:
            return empty_rows(*source.shape).copy_(source)
        return source.to(self.device, dtype).clone()


class ShardView(ClassStore):
    """A ShardedStore seen through local ids (0..hi-lo-1): `selector.attach(store.local_view())`."""

    def __init__(self, store: ShardedStore):
        self.store = store
        self.num_classes, self.dim, self.has_bias = store.shard_size, store.dim, store.has_bias

    def rows(self, ids):
        return self.store.local_rows(ids)

    def current_rows(self, ids):
        return self.store.current_local_rows(ids)

    def push(self, ids, grad_w, grad_b=None):
        self.store.local_push(ids, grad_w, grad_b)

    def settle(self) -> None:  # this shard's rows only: an index refresh sees them as of the step
        self.store.settle()

    def weights(self):
        return self.store.weights()

    def biases(self):
        return self.store.biases()

    def get_optim(self) -> OptimParams:
        return self.store.get_optim()

    def set_optim(self, params: OptimParams) -> None:
        self.store.set_optim(params)

    def state_dict(self) -> dict:
        return self.store.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state)
