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

import math
import mmap
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
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
    grad_rows: torch.Tensor | None = None,
    current: torch.Tensor | None = None,
) -> None:
    """In place: one PyTorch-SGD step (dampening 0, no nesterov) on rows `ids` (unique) of `weight`.

    Row `ids[i]` takes gradient `grad[i]`, or `grad[grad_rows[i]]` when `grad_rows` is given (a subset
    of a larger gradient, picked block by block instead of copied out first). `current`, aligned with
    `grad` the same way, may hold the rows' present weights when the caller already has them (the
    parameter server keeps the rows a GET just sent): read instead of gathered again, never written.

    The single definition of the update rule, shared by `LocalStore` and the parameter server so the
    two cannot drift apart. A zero momentum buffer makes the first update `v = g`, exactly as
    `torch.optim.SGD` initialises its buffer. Works for 2-D weights (rows) and 1-D biases.

    Same arithmetic, in the same order, as `torch.optim.SGD`: g' = g + wd·w ; v = m·v + g' ; w -= lr·v.
    Speed (a step is bound by random row access into a table far larger than the caches): on the CPU the
    rows go through in blocks of about `BLOCK_BYTES` per buffer, so the gathered rows stay in the core's
    caches across the elementwise passes and only the gathers and scatters touch main memory
    (measured 1.5x faster than whole-batch passes for 10,000 rows of 256 floats from a 1M-row table,
    bit for bit the same: every element sees the same operations). Scratch buffers are reused across
    calls (fresh temporaries cost a page fault per 4 KiB each time), and contiguous CPU float32 tables
    are written back with numpy's row scatter (measured 1.2-1.4x faster than `index_copy_`). On a GPU,
    one block is the whole batch.
    """
    n = ids.numel()
    if n == 0:
        return
    grad = grad.to(weight.dtype)
    block = n
    if weight.device.type == "cpu":
        row_bytes = weight.element_size() * max(1, math.prod(weight.shape[1:]))
        block = max(1, min(n, BLOCK_BYTES // row_bytes))
    w_buf, v_buf, g_buf = _scratch(weight, block)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        g_blk = g_buf[:hi - lo]
        w_blk = w_buf[:hi - lo]
        if grad_rows is None:
            g = grad[lo:hi]
            if current is not None:
                w_blk.copy_(current[lo:hi])
        else:
            g = torch.index_select(grad, 0, grad_rows[lo:hi], out=g_blk)
            if current is not None:
                torch.index_select(current, 0, grad_rows[lo:hi], out=w_blk)
        if current is None:
            torch.index_select(weight, 0, ids[lo:hi], out=w_blk)
        _sgd_block_(weight, momentum_buf, ids[lo:hi], g, params, w_blk, v_buf[:hi - lo], g_blk)


BLOCK_BYTES = 512 << 10  # per scratch buffer; 128 KiB-1 MiB all measured within 15% of each other


def _sgd_block_(weight, momentum_buf, ids, g, params: OptimParams, w, v, gw) -> None:
    """The update of one block whose present weights are already in `w`."""
    if params.weight_decay:
        g = torch.add(g, w, alpha=params.weight_decay, out=gw)
    if params.momentum:
        torch.index_select(momentum_buf, 0, ids, out=v)
        v.mul_(params.momentum).add_(g)
        _scatter_rows_(momentum_buf, ids, v)
        g = v
    w.sub_(g, alpha=params.lr)
    _scatter_rows_(weight, ids, w)


_SCRATCH = threading.local()


def _scratch(table: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three (n, *row) buffers like `table`'s rows, kept per thread and grown on demand (never shared
    with callers, so they cannot alias an argument)."""
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (table.device, table.dtype, tuple(table.shape[1:]))
    bufs = cache.get(key)
    if bufs is None or bufs[0].shape[0] < n:
        rows = max(n, bufs[0].shape[0] * 2 if bufs is not None else 0)
        if len(cache) >= 8 and key not in cache:  # unusual shapes come and go: do not hoard memory
            cache.clear()
        bufs = cache[key] = tuple(
            torch.empty((rows, *table.shape[1:]), dtype=table.dtype, device=table.device) for _ in range(3)
        )
    return bufs[0][:n], bufs[1][:n], bufs[2][:n]


def _scatter_rows_(table: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> None:
    """table[ids] = rows (ids unique)."""
    if table.device.type == "cpu" and table.is_contiguous() and ids.device.type == "cpu" and not (
        table.requires_grad or rows.requires_grad
    ):
        table.numpy()[ids.numpy()] = rows.numpy()
    else:
        table.index_copy_(0, ids, rows)


HUGE_PAGE = 2 << 20


def empty_rows(*shape: int, zero: bool = False) -> torch.Tensor:
    """`empty_rows(N, d)`: an uninitialised float32 CPU table backed by transparent huge pages.

    Random row access into a GB-sized table is bound by TLB misses with 4 KiB pages (two-level page walks
    under virtualisation); 2 MiB pages cut a 10,000-row get+update by ~20% (measured). Falls back to
    `torch.empty` for small tables or where the kernel lacks MADV_HUGEPAGE. `zero=True` returns zeros,
    written now: faulting 1 GB of huge pages in costs seconds, which belongs to start-up, not to the
    first training step's latency.
    """
    count = math.prod(shape)
    nbytes = count * 4
    if nbytes < 2 * HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape) if zero else torch.empty(shape)
    # private (not the default shared) anonymous memory: shmem does not get transparent huge pages
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)  # + slack to align to 2 MiB
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP disabled: still a valid (4 KiB-paged) table
        pass
    raw = np.frombuffer(buf, dtype=np.uint8)
    offset = -raw.ctypes.data % HUGE_PAGE
    table = torch.from_numpy(raw[offset : offset + nbytes].view(np.float32).reshape(shape))
    return table.zero_() if zero else table


# Re-exported here so `from dcs_cli.selection.store import LocalStore` works (agreed API); defined in its
# own module to keep this one the interface.
from dcs_cli.selection.local_store import LocalStore  # noqa: E402, F401
