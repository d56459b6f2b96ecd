"""One served matrix: weights, momentum, optimiser params and the synchronous-SGD barrier of a step.

>>> m = ServedMatrix(0, MatrixSpec("classifier", num_classes=10, dim=4), OptimParams(lr=0.1, momentum=0.0))
>>> m.members.update({1, 2})                                             # two clients REGISTERed
>>> m.add_push(1, PendingPush(torch.tensor([3]), torch.ones(1, 4), None))   # client 1 PUSHes for step 0
>>> m.barrier_ready()                                                    # client 2 has not pushed yet
False
>>> m.add_push(2, PendingPush(torch.tensor([3, 5]), torch.ones(2, 4), None))
>>> m.barrier_ready(), m.apply(), m.step        # summed over clients, one update of 2 rows, step += 1
(True, 2, 1)

The update is `dcs_cli.selection.row_update.sgd_rows_`, the same function `LocalStore` uses, so a server with a
single client follows the in-process trajectory bit for bit on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from dcs_cli.paramserver.protocol import ProtocolError
from dcs_cli.paramserver.workers import SERIAL, RowWorkers
from dcs_cli.selection.hugepages import empty_rows
from dcs_cli.selection.row_init import init_rows
from dcs_cli.selection.row_update import RowClock, catch_up_rows_, sgd_rows_
from dcs_cli.selection.store import OptimParams

INITS = ("normal", "uniform")  # as LocalStore
MAX_ELEMENTS = 1 << 34  # 64 GiB of float32 weights: anything larger is a typo, not a model
MAX_NAME = 200
MAX_STEP = 1 << 62  # far beyond any run, and step + 1 always fits the header's signed 64-bit field


def check_name(name: str) -> None:
    """A matrix name is 1..200 printable characters (no control characters, line breaks or lone
    surrogates): it is printed in the server's log and written into snapshots."""
    if not 1 <= len(name) <= MAX_NAME:
        raise ProtocolError(f"CREATE: name must be 1..{MAX_NAME} characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("CREATE: name holds a lone surrogate; use printable characters") from None
    if not name.isprintable():
        raise ProtocolError("CREATE: name holds control or line-break characters; use printable characters")


def check_step(step: int, op: str) -> None:
    if not 0 <= step < MAX_STEP:
        raise ProtocolError(f"{op}: step {step} out of range [0, 2**62)")


@dataclass(frozen=True)
class MatrixSpec:
    """What CREATE asks for; two CREATEs of one name must agree on all of it."""

    name: str
    num_classes: int
    dim: int
    bias: bool = False
    init: str = "normal"
    init_std: float = 0.01
    seed: int = 0
    catch_up: bool = False  # rows that sat out steps catch them up when next updated (see sgd_rows_)

    @classmethod
    def from_dict(cls, obj: dict) -> MatrixSpec:
        types = {
            "name": str,
            "num_classes": int,
            "dim": int,
            "bias": bool,
            "init": str,
            "init_std": (int, float),
            "seed": int,
            "catch_up": bool,
        }
        unknown = set(obj) - set(types)
        if unknown:
            raise ProtocolError(f"CREATE: unknown keys {sorted(unknown)}; valid: {sorted(types)}")
        for key, tp in types.items():
            if key in ("name", "num_classes", "dim") and key not in obj:
                raise ProtocolError(f"CREATE: missing '{key}'")
            if key in obj and (not isinstance(obj[key], tp) or (tp is int and isinstance(obj[key], bool))):
                raise ProtocolError(f"CREATE: '{key}' has the wrong type")
        spec = cls(**{**obj, "init_std": float(obj.get("init_std", 0.01))})
        check_name(spec.name)
        if spec.num_classes <= 0 or spec.dim <= 0 or spec.num_classes * spec.dim > MAX_ELEMENTS:
            raise ProtocolError(f"CREATE: impossible shape {spec.num_classes}x{spec.dim}")
        if spec.init not in INITS:
            raise ProtocolError(f"CREATE: init '{spec.init}' unknown; choose one of {', '.join(INITS)}")
        if not math.isfinite(spec.init_std) or spec.init_std < 0:
            raise ProtocolError("CREATE: init_std must be a finite number >= 0")
        if not 0 <= spec.seed < 2**63:
            raise ProtocolError("CREATE: seed must be in [0, 2**63)")
        return spec

    def to_dict(self) -> dict:
        return asdict(self)


MAX_LR = 1e6  # far beyond any useful rate; a larger one can only be a mistake


def optim_from_dict(obj: dict) -> OptimParams:
    """Validated optimiser params from a SET_OPTIM JSON object (all three keys required)."""
    values = {}
    for key in ("lr", "momentum", "weight_decay"):
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProtocolError(f"SET_OPTIM: '{key}' must be a finite number")
        values[key] = float(value)
    if not 0 <= values["lr"] <= MAX_LR or not 0 <= values["momentum"] < 1 or values["weight_decay"] < 0:
        raise ProtocolError(f"SET_OPTIM: need 0 <= lr <= {MAX_LR:g}, 0 <= momentum < 1, weight_decay >= 0")
    return OptimParams(**values)


def init_weight(spec: MatrixSpec) -> torch.Tensor:
    """Seeded initial weights: the same rows as `LocalStore` (`row_init.init_rows`)."""
    return init_rows(spec.num_classes, spec.dim, 0, spec.num_classes, spec.init, spec.init_std, spec.seed)


@dataclass
class PendingPush:
    ids: torch.Tensor
    grad_w: torch.Tensor
    grad_b: torch.Tensor | None
    keepalive: tuple = ()  # the zmq frames the tensors view; they must outlive the tensors


@dataclass
class SentRows:
    """The weight rows of a client's last GET_ROWS as they were sent (the reply's own buffer, read-only).

    A trainer pushes gradients for exactly the rows it fetched; while the weights are unchanged since
    (same `version`), the update reads these instead of gathering the same random rows from the table
    again: one of its four passes over scattered rows saved.
    """

    version: int
    ids: np.ndarray
    weight: np.ndarray

    def rows_for(self, version: int, ids: torch.Tensor) -> torch.Tensor | None:
        if version != self.version or not np.array_equal(self.ids, ids.numpy()):
            return None
        return torch.from_numpy(self.weight)


@dataclass
class ServedMatrix:
    """Weights + momentum of one named matrix and the pushes collected for its current step."""

    matrix_id: int
    spec: MatrixSpec
    params: OptimParams
    weight: torch.Tensor = None  # type: ignore[assignment]
    momentum: torch.Tensor = None  # type: ignore[assignment]
    bias: torch.Tensor | None = None
    bias_momentum: torch.Tensor | None = None
    step: int = 0
    members: set[int] = field(default_factory=set)
    pending: dict[int, PendingPush] = field(default_factory=dict)
    waiters: list[tuple] = field(default_factory=list)  # (routing identity, request header)
    version: int = 0  # bumped by every change of the weights
    sent: dict[int, SentRows] = field(default_factory=dict)  # per client: the weight rows its last GET got
    workers: RowWorkers = SERIAL  # threads that share gathers and updates (the server sets its own)
    clock: RowClock | None = None  # catch_up: when each row was last updated

    def __post_init__(self) -> None:
        if self.weight is None:
            self.weight = init_weight(self.spec)
        if self.momentum is None:
            self.momentum = empty_rows(*self.weight.shape, zero=True)
        if self.spec.bias and self.bias is None:
            self.bias = torch.zeros(self.spec.num_classes)
        if self.spec.bias and self.bias_momentum is None:
            self.bias_momentum = torch.zeros(self.spec.num_classes)
        if self.spec.catch_up and self.clock is None:
            self.clock = RowClock(self.spec.num_classes, step=self.step)

    def settle(self) -> None:
        """Catch every row up to the present step (before snapshots and step changes)."""
        if self.clock is not None and self.clock.settle(self.step, self._catch_up_rows):
            self.changed()

    def catch_up(self, ids: torch.Tensor) -> None:
        """Rows `ids` take the steps they sat out (GET_ROWS with FLAG_CURRENT: a training step's rows)."""
        if self.clock is None:
            return
        ids, coef = self.clock.behind(ids, self.step)
        if ids.numel() == 0:
            return
        self._catch_up_rows(ids, coef)
        self.changed()

    def _catch_up_rows(self, ids: torch.Tensor, coef: torch.Tensor) -> None:
        """Rows `ids` (unique) take the steps they sat out (`coef` from the clock); the caller moves their clock."""
        catch_up_rows_(self.weight, self.momentum, ids, coef, self.params, self.bias, self.bias_momentum)

    def _tables(self, with_momentum: bool) -> list[torch.Tensor]:
        tables = [self.weight] + [self.momentum] * with_momentum
        if self.spec.bias:
            tables += [self.bias] + [self.bias_momentum] * with_momentum
        return tables

    def gather(self, ids: np.ndarray, with_momentum: bool, out: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """The arrays of a GET_ROWS reply, in wire order: weight rows, then (momentum), (bias), (bias
        momentum); into `out` (e.g. a shared-memory reply region) when given. `ids` are in range."""
        tables = [t.numpy() for t in self._tables(with_momentum)]  # np.take: ~3x faster than index_select
        if out is None:
            out = [np.empty((len(ids), *t.shape[1:]), dtype=t.dtype) for t in tables]

        def part(lo: int, hi: int) -> None:  # "clip" writes `dest` directly; the default mode gathers
            for table, dest in zip(tables, out, strict=True):  # into a temporary first
                np.take(table, ids[lo:hi], axis=0, out=dest[lo:hi], mode="clip")

        self.workers.run(len(ids), part)
        return out

    def _update(self, ids: torch.Tensor, grad: torch.Tensor, grad_rows=None, current=None, grad_b=None) -> None:
        """`sgd_rows_` on the weights (and bias), split over `workers` by row (the rows are distinct)."""
        coef = self.clock.mark(ids, self.step) if self.clock is not None else None

        def part(lo: int, hi: int) -> None:
            skip = None if coef is None else coef[lo:hi]
            if grad_rows is None:
                cur = None if current is None else current[lo:hi]
                sgd_rows_(self.weight, self.momentum, ids[lo:hi], grad[lo:hi], self.params, current=cur,
                          catch_up=skip)
            else:
                sgd_rows_(self.weight, self.momentum, ids[lo:hi], grad, self.params, grad_rows=grad_rows[lo:hi],
                          current=current, catch_up=skip)

        self.workers.run(len(ids), part)
        if self.spec.bias and grad_b is not None:
            sgd_rows_(self.bias, self.bias_momentum, ids, grad_b, self.params, grad_rows=grad_rows, catch_up=coef)

    def remember_sent(self, client: int, ids: np.ndarray, weight_rows: np.ndarray) -> None:
        """Keep the rows just sent to a registered `client` for its coming PUSH (see `SentRows`)."""
        if client in self.members:
            self.sent[client] = SentRows(self.version, ids.copy(), weight_rows)

    def changed(self) -> None:
        """The weights changed (an update, SET_ROWS): rows sent before no longer show them."""
        self.version += 1
        self.sent.clear()

    def forget(self, client: int) -> None:
        self.sent.pop(client, None)

    def add_push(self, client: int, push: PendingPush) -> None:
        if client in self.pending:
            raise ProtocolError(f"PUSH: client {client} already pushed for step {self.step}")
        self.pending[client] = push

    def barrier_ready(self) -> bool:
        """Every registered client has pushed for this step (clients that left no longer count)."""
        return bool(self.pending) and self.members.issubset(self.pending)

    def apply(self) -> int:
        """Sum the pending gradients per row, apply one SGD step, advance the step; returns rows updated."""
        clients = sorted(self.pending)  # fixed order → reproducible sums
        pushes = [self.pending[c] for c in clients]
        current = [self._sent_rows(c, p.ids) for c, p in zip(clients, pushes, strict=True)]
        if len(pushes) == 1:
            p = pushes[0]
            self._update(p.ids, p.grad_w, current=current[0], grad_b=p.grad_b)
            rows = len(p.ids)
        else:
            rows = self._apply_summed(pushes, current)
        self.pending.clear()
        self.changed()
        if self.clock is not None:
            self.clock.record(self.step, self.params)  # once, after every mark of this step
        self.step += 1
        return rows

    def _sent_rows(self, client: int, ids: torch.Tensor) -> torch.Tensor | None:
        sent = self.sent.get(client)
        return None if sent is None else sent.rows_for(self.version, ids)

    def _apply_summed(self, pushes: list[PendingPush], current: list[torch.Tensor | None]) -> int:
        """Several clients: a row pushed by one client only takes that client's gradient as it arrived
        (no copy); rows pushed by several get 0 + g1 + g2 + … in client order, as one index_add_ over
        all pushes would sum them. Rows are independent, so the update order does not matter."""
        sizes = [len(p.ids) for p in pushes]
        uniq, inverse, counts = torch.unique(torch.cat([p.ids for p in pushes]), return_inverse=True,
                                             return_counts=True)
        shared = counts > 1
        slot = torch.cumsum(shared, 0) - 1  # index of a shared row among the shared rows
        shared_ids = uniq[shared]
        sum_w = torch.zeros(len(shared_ids), self.spec.dim)
        sum_b = torch.zeros(len(shared_ids)) if self.spec.bias else None
        for p, inv, cur in zip(pushes, inverse.split(sizes), current, strict=True):
            is_shared = shared[inv]
            own = torch.nonzero(~is_shared).squeeze(1)
            self._update(p.ids[own], p.grad_w, grad_rows=own, current=cur, grad_b=p.grad_b)
            mine = torch.nonzero(is_shared).squeeze(1)
            if len(mine):
                sum_w.index_add_(0, slot[inv[mine]], p.grad_w[mine])
                if sum_b is not None:
                    sum_b.index_add_(0, slot[inv[mine]], p.grad_b[mine])
        self._update(shared_ids, sum_w, grad_b=sum_b)
        return len(uniq)
