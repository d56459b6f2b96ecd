"""Distributed chores: start N workers through torch's elastic launcher, join the process group, reduce.

`launch(worker_fn, (arg,), LaunchSpec(nproc=2))` returns {local_rank: worker_fn's return value}; inside
the worker, `init_distributed("auto")` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `launch` or torchrun)
and returns its `DistContext`. `all_reduce_sum` and `barrier` are identities in one process.

The launcher is `torch.distributed.launcher.api.elastic_launch`, the engine behind `torchrun`, with the
static rendezvous of `torchrun --nnodes/--node-rank/--master-addr/--master-port`. A worker that raises a
`DcsError` makes the whole launch raise the same error class with its one-line message in the parent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import logging
import os
import pickle
import socket
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from dcs_cli import errors
from dcs_cli.console import info, is_verbose
from dcs_cli.errors import DcsError, DistError, UsageError


@dataclass
class LaunchSpec:
    """Process layout of a launch: `LaunchSpec(nproc=2)` or multi-node with addr/port/node_rank."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0 = a free port (single node only)
    rdzv_timeout: int = 300

    def check(self) -> None:
        """A UsageError or DistError now for a layout that cannot start (callers check before writing): node 0
        must be able to listen on master_addr:master_port (any free port for 0)."""
        if self.master_port == 0 and self.nnodes > 1:
            raise UsageError("--master-port 0 (a free port) works on one node only; pass the same port to every node")
        if self.node_rank == 0:
            _try_bind(self.master_addr, self.master_port)


@dataclass
class DistContext:
    """Where this process sits: rank, world size, local rank and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# --------------------------------------------------------------------------------------------- workers


_USE = "--set dist.backend={0} for dcs train, --backend {0} for dcs check-dist"


def resolve_backend(backend: str) -> str:
    """`auto` → nccl when CUDA is present, gloo otherwise; an unavailable backend is a DistError with a hint."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistError(f"backend nccl needs CUDA GPUs and none is visible; use gloo on CPU "
                            f"({_USE.format('gloo')})")
        if not dist.is_nccl_available():
            raise DistError(f"this torch build has no NCCL; install a CUDA build of torch or use gloo "
                            f"({_USE.format('gloo')})")
    elif backend == "gloo" and not dist.is_gloo_available():
        raise DistError(f"this torch build has no gloo backend; use nccl on GPUs ({_USE.format('nccl')})")
    elif backend not in ("gloo", "nccl"):
        raise UsageError(f"unknown backend {backend!r}; choose auto, gloo or nccl")
    return backend


def check_gpu_per_worker(backend: str, local_workers: int) -> None:
    """DistError unless each of this node's `local_workers` gets a GPU of its own under NCCL (`backend` as
    resolved), which refuses two ranks on one GPU at start-up; gloo shares GPUs (or the CPU) as it must."""
    if backend != "nccl" or local_workers <= 1:
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_workers > gpus:
        raise DistError(f"{local_workers} workers on this node but {gpus} GPU(s) visible, and NCCL needs a GPU per "
                        f"worker; pass --nproc {gpus} or fewer (dist.nproc), or use gloo ({_USE.format('gloo')})")


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(backend: str = "auto") -> DistContext:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK; a no-op context for one process.
    Local rank r trains on visible GPU r mod the visible count (a launcher that shows each rank its own GPU
    gives every rank cuda:0); `--nproc` layouts with more workers than GPUs are refused before the launch
    (`check_gpu_per_worker`)."""
    rank, world = int(os.environ.get("RANK", "0")), env_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world <= 1:
        return DistContext(device=device)
    name = resolve_backend(backend)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if name == "nccl" else {}
        dist.init_process_group(backend=name, init_method="env://", **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device, backend=name)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place) when distributed; returns the tensor."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def dist_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------- launching


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now; a DistError naming the cause when `host` cannot be listened on."""
    return _try_bind(host, 0)


def _try_bind(host: str, port: int) -> int:
    """The port bound on `host` (`port`, or a free one for 0), released again; a one-line DistError saying why
    when the bind fails: the port in use, an address not of this machine, a name that does not resolve."""
    host = "127.0.0.1" if host == "localhost" else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise _bind_error(host, port, exc) from None
        return s.getsockname()[1]


def _bind_error(host: str, port: int, exc: OSError) -> DistError:
    if isinstance(exc, socket.gaierror):
        return DistError(f"master_addr {host} does not resolve to an IPv4 address; pass node 0's own address "
                         "(--master-addr, dist.master_addr; 127.0.0.1 on one node)")
    if exc.errno == errno.EADDRINUSE:
        return DistError(f"port {port} on {host} is in use (another run?); pass --master-port 0 to pick a free one")
    if exc.errno == errno.EADDRNOTAVAIL:
        return DistError(f"master_addr {host} is not an address of this machine: node 0, which runs rank 0, listens "
                         "on it; pass one of this machine's own addresses (--master-addr, dist.master_addr; "
                         "127.0.0.1 on one node), and the same address to the other nodes")
    if exc.errno == errno.EACCES:
        return DistError(f"port {port} on {host} needs privileges to listen on; pass --master-port 0 or a port "
                         "above 1023")
    return DistError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --master-addr and --master-port")


def _worker(fn: Callable, args: tuple, error_dir: str):
    """Runs in each worker: call `fn`, and on failure leave the error for the parent before exiting non-zero."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        return fn(*args)
    except BaseException as exc:
        if isinstance(exc, DcsError):
            record = (type(exc).__name__, str(exc))
        else:
            record = ("DistError", f"worker rank {os.environ.get('RANK', '?')} failed: {type(exc).__name__}: {exc}")
        path = Path(error_dir) / f"rank{os.environ.get('RANK', '0')}.err"
        with contextlib.suppress(OSError):
            path.write_bytes(pickle.dumps(record))
        raise
    finally:
        # Free what the run left in reference cycles (a DDP model holds the process group and its pending
        # work) while the interpreter is whole: gloo threads still holding them at interpreter exit can
        # abort the process (SIGABRT) after the run itself succeeded.
        gc.collect()
        destroy_distributed()


def _raise_worker_error(error_dir: Path, cause: BaseException) -> None:
    files = sorted(error_dir.glob("rank*.err"), key=lambda p: int(p.stem[4:]))
    records = []
    for path in files:
        with contextlib.suppress(Exception):
            records.append(pickle.loads(path.read_bytes()))
    # Prefer a user error (DcsError subclass) over the collateral failures it caused in other ranks.
    for name, message in records:
        if name != "DistError":
            raise getattr(errors, name, DistError)(message) from None
    if records:
        raise DistError(records[0][1]) from None
    raise DistError(f"a worker died without a message ({cause}); rerun with --verbose or fewer workers") from None


@contextlib.contextmanager
def _env_default(name: str, value: str):
    had = name in os.environ
    os.environ.setdefault(name, value)
    try:
        yield
    finally:
        if not had:
            os.environ.pop(name, None)


def _agent_log_options(launch_config_cls, folder: Path) -> dict:
    """LaunchConfig options that put the elastic agent's log folder under `folder` (removed with it)
    instead of a fresh torchelastic_* folder in the system temp that nobody deletes."""
    fields = {f.name for f in dataclasses.fields(launch_config_cls)}
    if "logs_specs" in fields:  # torch >= 2.3; its default would mkdtemp as soon as a config is made
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

        return {"logs_specs": DefaultLogsSpecs(log_dir=str(folder))}
    return {"log_dir": str(folder)} if "log_dir" in fields else {}


def launch(fn: Callable, args: tuple, spec: LaunchSpec) -> dict[int, object]:
    """Start `spec.nproc` workers on this node running `fn(*args)`; return {local_rank: fn's return value}.

    `fn` must be a module-level function (workers are spawned). Raises the workers' DcsError, or a
    DistError with a hint when the rendezvous cannot start (port in use, unreachable master).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    spec.check()
    port = spec.master_port or free_port(spec.master_addr)
    if spec.nnodes > 1:
        info(f"node {spec.node_rank}: waiting up to {spec.rdzv_timeout}s for {spec.nnodes} nodes at "
             f"{spec.master_addr}:{port}")
    # The agent logs a failed worker's traceback; the worker's own error reaches the user as one line below
    # (`--verbose` keeps the agent's log).
    for name in ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.ERROR if is_verbose() else logging.CRITICAL)
    # Workers inherit the environment; one OpenMP thread each keeps N workers from oversubscribing the cores.
    with _env_default("OMP_NUM_THREADS", "1"), tempfile.TemporaryDirectory(prefix="dcs-launch-") as error_dir:
        config = LaunchConfig(
            min_nodes=spec.nnodes,
            max_nodes=spec.nnodes,
            nproc_per_node=spec.nproc,
            run_id=f"dcs-{uuid.uuid4().hex[:8]}" if spec.nnodes == 1 else "dcs",
            rdzv_backend="static",
            rdzv_endpoint=f"{spec.master_addr}:{port}",
            rdzv_configs={"rank": spec.node_rank, "timeout": spec.rdzv_timeout},
            max_restarts=0,
            monitor_interval=0.1,
            start_method="spawn",
            **_agent_log_options(LaunchConfig, Path(error_dir) / "agent"),
        )
        try:
            results = elastic_launch(config, _worker)(fn, args, error_dir)
        except ChildFailedError as exc:
            _raise_worker_error(Path(error_dir), exc)
        except DcsError:
            raise
        except Exception as exc:  # rendezvous / agent start-up failures
            text = str(exc)
            hint = ""
            if "address already in use" in text.lower() or "EADDRINUSE" in text:
                hint = "; the port is in use: pass --master-port 0 or another port"
            elif "timed out" in text.lower() or "timeout" in text.lower():
                hint = f"; is {spec.master_addr}:{port} reachable and are all {spec.nnodes} nodes started?"
            raise DistError(f"could not start {spec.nproc} workers: {type(exc).__name__}: {text[:300]}{hint}") from None
    return dict(results or {})
