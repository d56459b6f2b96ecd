"""`dcs bench paramserver`: row get+push through the parameter server vs the in-process store, one run.

    dcs bench paramserver --classes 1000000 --dim 256 --rows 10000 --steps 50 --json ps.json

Each step fetches `--rows` random rows (unique ids) and pushes a gradient for them, as a sampled-softmax
trainer does. Contenders: `LocalStore` in this process; a real `dcs paramserver` process on a loopback port
with 1 client (this process) and with 2 client processes (synchronous SGD: each push waits for the other),
each with the rows in ZeroMQ frames over TCP ("tcp") and through the shared-memory segment a client on the
server's host attaches ("shared memory", the default there; the control messages still go over TCP).
rows/s counts rows that went out and came back (one row = one get + one push); payload MB/s is the float32
row bytes moved both ways (ids not counted). The "get only" rows time `rows()` alone (no SGD update), which
isolates gather + transport from the update arithmetic both stores share. Latency is per client step
(get + push, barrier included). The server runs twice: where the OS schedules it ("any"), and, on a
machine with 2 or more cores, on a core of its own (`dcs paramserver --cpus`) with the clients on the
others, as `taskset` would place them.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import time

import numpy as np
import torch

from dcs_cli.bench.common import WorkerDied, collect, peak_rss_mb, report
from dcs_cli.console import info, progress_bar, warn
from dcs_cli.cpus import available_cpus, format_cpu_list, pin_to_cpus
from dcs_cli.errors import UsageError
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.store import ClassStore, OptimParams

PARAMS = OptimParams(lr=0.01, momentum=0.9, weight_decay=1e-4)
MATRIX = "bench"


def _id_sets(num_classes: int, rows: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(num_classes, generator=gen)[:rows] for _ in range(count)]


def _run_steps(
    store: ClassStore, id_sets: list[torch.Tensor], grad: torch.Tensor | None, warmup: int, advance=None
) -> tuple[list[float], float]:
    """Per-step seconds of `rows` + `push` (no push if `grad` is None) after `warmup` untimed steps,
    and the timed wall seconds."""
    latencies = []
    start = None
    for i, ids in enumerate(id_sets):
        if i == warmup:
            start = time.perf_counter()
        t0 = time.perf_counter()
        store.rows(ids)
        if grad is not None:
            store.push(ids, grad)
        if i >= warmup:
            latencies.append(time.perf_counter() - t0)
            if advance:
                advance(1)
    return latencies, time.perf_counter() - start


def _client_process(
    address, num_classes, dim, rows, steps, warmup, seed, threads, cores, shared, start_barrier, out_queue
) -> None:
    """One of the 2 benchmark clients (a separate process, like one training rank)."""
    from dcs_cli.paramserver.client import RemoteStore

    if cores:
        pin_to_cpus(cores, key="client cores")
    torch.set_num_threads(threads)
    try:
        id_sets = _id_sets(num_classes, rows, steps + warmup, seed)
        grad = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)).mul_(1e-3)
        with RemoteStore(address, MATRIX, num_classes, dim, timeout=600, shared_memory=shared) as store:
            start_barrier.wait(timeout=600)  # both registered before the first push, or it would go alone
            out_queue.put(_run_steps(store, id_sets, grad, warmup))
    except Exception as exc:  # report instead of hanging the parent
        out_queue.put(f"{exc.__class__.__name__}: {exc}")


def _row(
    name: str, clients: int, rows: int, dim: int, latencies: list[float], wall: float, ways: int = 2,
    placement: str = "any", transport: str = "in process",
) -> dict:
    total_rows = rows * len(latencies)
    rate = total_rows / wall
    return {
        "name": name,
        "transport": transport,
        "clients": clients,
        "placement": placement,
        "rows_per_s": rate,
        "payload_MB_per_s": rate * dim * 4 * ways / 1e6,
        "p50_step_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_step_ms": float(np.percentile(latencies, 99) * 1e3),
    }


@contextlib.contextmanager
def _affinity(cores: set[int] | None):
    """This process on `cores` inside the block (None: leave it where it is)."""
    if cores is None:
        yield
        return
    before = available_cpus()
    pin_to_cpus(cores, key="client cores")
    try:
        yield
    finally:  # widening back is not pinning: the current (narrower) set must not vet it
        os.sched_setaffinity(0, before)


def _placements() -> list[tuple[str, int | None, set[int] | None]]:
    """(label, server core, client cores): the OS's choice, and the server on a core of its own."""
    cores = sorted(available_cpus())
    out: list[tuple[str, int | None, set[int] | None]] = [("any", None, None)]
    if len(cores) >= 2 and hasattr(os, "sched_setaffinity"):
        server, clients = cores[0], set(cores[1:])
        out.append((f"server {server}, clients {format_cpu_list(clients)}", server, clients))
    return out


def _two_clients(address, classes, dim, rows, steps, warmup, threads, cores, shared) -> tuple[list[float], float]:
    ctx = mp.get_context("spawn")
    queue, start_barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_client_process,
            args=(address, classes, dim, rows, steps, warmup, 10 + k, threads, cores, shared, start_barrier, queue),
        )
        for k in range(2)
    ]
    for p in procs:
        p.start()
    try:
        outs = collect(queue, procs, len(procs), 600 + 10 * steps, failed=lambda o: isinstance(o, str))
    except WorkerDied as exc:
        outs = [str(exc)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    failed = [o for o in outs if isinstance(o, str)]
    if failed:
        raise UsageError(f"a benchmark client failed: {failed[0]}")
    return [x for o in outs for x in o[0]], max(o[1] for o in outs)


def run_paramserver_bench(
    classes: int, dim: int, rows: int, steps: int, warmup: int, threads: int = 1, json_path=None
) -> dict:
    from dcs_cli.paramserver.client import RemoteStore
    from dcs_cli.paramserver.launcher import start_background

    if min(classes, dim, rows, steps) <= 0 or rows > classes:
        raise UsageError("need --classes, --dim, --rows, --steps > 0 and --rows <= --classes")
    if warmup < 0 or threads < 1:
        raise UsageError(f"need --warmup >= 0 and --threads >= 1, got --warmup {warmup} --threads {threads}")
    # every contender (this process, client processes, the server's torch_threads default) gets the same
    # intra-op thread count: on a busy host, spinning OpenMP threads otherwise dominate the figures
    torch.set_num_threads(threads)
    grad = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0)).mul_(1e-3)
    id_sets = _id_sets(classes, rows, steps + warmup, seed=1)
    results = []

    info(f"in-process LocalStore {classes:,}x{dim}")
    store = LocalStore(classes, dim, params=PARAMS)
    with progress_bar("in-process", total=steps, unit="steps") as advance:
        lat, wall = _run_steps(store, id_sets, grad, warmup, advance)
    results.append(_row("in-process LocalStore", 1, rows, dim, lat, wall))
    lat, wall = _run_steps(store, id_sets, None, warmup)
    results.append(_row("in-process LocalStore, get only", 1, rows, dim, lat, wall, ways=1))
    del store
    gc.collect()

    for placement, server_core, client_cores in _placements():
        where = "" if server_core is None else f" on core {server_core}"
        info(f"starting a paramserver process{where} on a loopback port")
        cpus = None if server_core is None else [server_core]
        with start_background("tcp://127.0.0.1:*", torch_threads=threads, cpus=cpus) as server:
            for transport, shared in (("tcp", False), ("shared memory", True)):
                with _affinity(client_cores), RemoteStore(
                    server.address, MATRIX, classes, dim, params=PARAMS, timeout=600, shared_memory=shared
                ) as remote:
                    if shared and not remote.shared_memory_for(rows):
                        warn("shared memory is not available on this host; its rows are left out")
                        break
                    label = f"paramserver{where}, {transport}"
                    with progress_bar(f"{label}, 1 client", total=steps, unit="steps") as advance:
                        lat, wall = _run_steps(remote, id_sets, grad, warmup, advance)
                    lat_get, wall_get = _run_steps(remote, id_sets, None, warmup)
                results.append(_row("paramserver", 1, rows, dim, lat, wall, 2, placement, transport))
                results.append(_row("paramserver, get only", 1, rows, dim, lat_get, wall_get, 1, placement,
                                    transport))
                info(f"{label}, 2 client processes")
                lat, wall = _two_clients(server.address, classes, dim, rows, steps, warmup, threads, client_cores,
                                         shared)
                results.append(_row("paramserver", 2, rows, dim, lat, wall, 2, placement, transport))
    base = {False: results[0]["rows_per_s"], True: results[1]["rows_per_s"]}
    for r in results:
        r["vs_in_process"] = r["rows_per_s"] / base["get only" in r["name"]]
    params = {
        "classes": classes,
        "dim": dim,
        "rows": rows,
        "steps": steps,
        "warmup": warmup,
        "threads": threads,
        "cpus": format_cpu_list(available_cpus()),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    return report("paramserver", params, results, json_path, cpu_only=True)

