"""All-reduce health check over N workers, reported like nccl-tests.

`check_dist(LaunchSpec(nproc=2), backend="gloo", sizes=parse_sizes("1K,1M"), iters=20)` launches the
workers and returns rank 0's table rows (size, time, algbw, busbw, ok).

>>> parse_sizes("1K,1M,25M"), human_bytes(1 << 20)
([1024, 1048576, 26214400], '1M')

Each rank fills its buffer with `(rank + 1) * (i % 7 + 1)`, so after a SUM the exact answer is
`world * (world + 1) / 2 * (i % 7 + 1)` — small integers, exact in float32 — and every element is checked.
Bandwidths follow nccl-tests: algbw = bytes / time, busbw = algbw * 2 (n - 1) / n.
"""

from __future__ import annotations

import re
import time

import torch
import torch.distributed as dist

from dcs_cli.errors import UsageError
from dcs_cli.memory import mem_available
from dcs_cli.train.dist import LaunchSpec, check_gpu_per_worker, init_distributed, launch, resolve_backend

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_sizes(text: str) -> list[int]:
    """`1K,1M,25M` → byte counts (rounded up to whole float32 elements)."""
    sizes = []
    for part in text.split(","):
        part = part.strip().upper()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?B?)", part)
        if not m or float(m.group(1)) <= 0:
            raise UsageError(f"--sizes: {part!r} is not a size; use e.g. 1K,1M,25M")
        nbytes = int(float(m.group(1)) * _UNITS[m.group(2)])
        sizes.append(max(4, (nbytes + 3) // 4 * 4))
    return sizes


def human_bytes(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n}B"


def _pattern(numel: int, rank: int, device) -> torch.Tensor:
    return (torch.arange(numel, device=device) % 7 + 1).float() * (rank + 1)


def _worker(sizes: list[int], iters: int, backend: str, corrupt_rank: int | None) -> list[dict] | None:
    ctx = init_distributed(backend)
    world, device = ctx.world_size, ctx.device if ctx.backend == "nccl" else torch.device("cpu")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for nbytes in sizes:
        numel = nbytes // 4
        buf = _pattern(numel, ctx.rank, device)
        if corrupt_rank == ctx.rank:
            buf[numel // 2] += 1.0  # test hook: one rank contributes a wrong element
        if world > 1:
            dist.all_reduce(buf)
        expected = _pattern(numel, 0, device) * (world * (world + 1) / 2)
        ok = torch.tensor([1.0 if torch.equal(buf, expected) else 0.0], device=device)
        # Timing buffer: values do not matter for the collective's speed; zeros cannot overflow.
        timing = torch.zeros(numel, device=device)
        if world > 1:
            dist.all_reduce(timing)  # warm-up (connection set-up, allocator)
            dist.barrier()
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            if world > 1:
                dist.all_reduce(timing)
        sync()
        elapsed = torch.tensor([(time.perf_counter() - start) / iters], device=device, dtype=torch.float64)
        if world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        seconds = float(elapsed.item())
        algbw = nbytes / seconds / 1e9 if seconds > 0 else 0.0
        rows.append({
            "size": human_bytes(nbytes),
            "bytes": nbytes,
            "time_us": seconds * 1e6,
            "algbw_GBps": algbw,
            "busbw_GBps": algbw * 2 * (world - 1) / world,
            "ok": bool(ok.item() == 1.0),
        })
    return rows if ctx.rank == 0 else None


def check_dist(spec: LaunchSpec, backend: str = "auto", sizes: list[int] | None = None, iters: int = 20,
               corrupt_rank: int | None = None) -> list[dict]:
    """Launch the workers and return rank 0's table rows (node 0); `corrupt_rank` is a test hook."""
    if iters <= 0:
        raise UsageError("--iters must be > 0")
    backend = resolve_backend(backend)  # fail here, before any worker starts
    check_gpu_per_worker(backend, spec.nproc)
    sizes = sizes or parse_sizes("1K,1M,25M")
    # on the CPU each worker holds the message about five times over (int64 pattern, buffers, expected)
    need, avail = 5 * max(sizes) * spec.nproc, mem_available()
    if backend == "gloo" and avail and need > 0.9 * avail:
        raise UsageError(f"--sizes: a {max(sizes) / 2**30:,.1f} GiB message needs about {need / 2**30:,.1f} GiB "
                         f"over {spec.nproc} worker(s), {avail / 2**30:,.1f} GiB is free; lower --sizes")
    results = launch(_worker, (sizes, iters, backend, corrupt_rank), spec)
    rows = results.get(0)
    return list(rows) if rows else []
