"""`dcs bench scale`: classifier samples/s and peak memory from 125k to 10M classes, 1 and 2 processes.

    dcs bench scale --quick --json scale.json
    dcs bench scale --classes 10000000 --only hf --procs 2 --momentum-dtype bfloat16

A step is the classifier alone over fixed random features (no backbone): all-gather (2 processes),
selection, row gather, logits, cross-entropy, backward and the store update. One process runs today's
single-process path (LocalStore + SampledSoftmax); two run the model-parallel path (ShardedStore +
ShardedSoftmax over gloo, NCCL on GPUs), each rank holding half the classes. Every configuration runs in
fresh spawned processes, so peak RSS is its own; `peak_rss_mb` is the sum over its processes. Before
starting one, the bench estimates its memory and compares it with /proc/meminfo's MemAvailable: one that
cannot fit is a row saying so (with the estimate), not a crash. hf's index is built once before the timed
steps (`build_s`: projection + Annoy over each shard) and not refreshed during them (interval = ∞), so
samples_per_s is the steady-state step; add build_s / interval per step for a refresh schedule.
`--batch` and `--sample-num` are per process, as in `dcs train`: 2 processes train a global batch twice as
large over twice the active classes (W × sample_num over all shards, each shard its share by size, via
`build_shard_selector`), so each shard does the work one process does over its half of the classes and the
rows compare like for like; `active` is the active classes of a step over all shards. samples_per_s counts
global samples. `--momentum-dtype bfloat16` halves the sharded store's momentum (updates stay float32).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path

from dcs_cli.bench.common import WorkerDied, collect, peak_rss_mb, report
from dcs_cli.console import info
from dcs_cli.cpus import share_of_cores
from dcs_cli.errors import UsageError
from dcs_cli.memory import mem_available

CONTENDERS = ("full", "random", "hf")
CLASSES = (125_000, 1_000_000, 4_000_000, 10_000_000)
QUICK_CLASSES = (20_000, 125_000)
PROCS = (1, 2)
BASE_BYTES = 450 << 20  # interpreter + torch + annoy per process
FIT = 0.9  # share of MemAvailable a configuration may plan to use
TIMEOUT_S = 3600


def estimate_bytes(mode: str, classes: int, procs: int, p: dict) -> int:
    """Planned peak bytes of one configuration, all processes together (an estimate, on the high side)."""
    n, d, b = -(-classes // procs), p["dim"], p["batch"] * procs
    mom = 2 if procs > 1 and p["momentum_dtype"] == "bfloat16" else 4
    per = BASE_BYTES + n * d * (4 + mom) + n * 8  # weights, momentum, catch-up step counters
    if mode == "full":
        per += 2 * n * d * 4 + 4 * b * n * 4  # gathered rows and their gradient; logits, softmax, grads
    elif mode == "hf":
        r = p["index_dim"] if 0 < p["index_dim"] < d else d
        per += n * r * 4 + int(2.2 * n * (16 + 4 * r)) + n  # snapshot, Annoy (items + split nodes, growth)
    return per * procs


def _worker(rank: int, world: int, port: int, mode: str, classes: int, p: dict, results) -> None:
    """One process of one configuration; puts its figures (or an error line) on `results`."""
    try:
        import torch

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        torch.set_num_threads(p["threads"] or share_of_cores(world))
        from dcs_cli.train.dist import init_distributed

        ctx = init_distributed("auto")
        figures = _steps(mode, classes, p, ctx)
        figures.update(rank=rank, peak_rss_mb=peak_rss_mb())
        results.put(figures)
    except BaseException as exc:  # reported by the parent as a row
        results.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        from dcs_cli.train.dist import destroy_distributed

        destroy_distributed()


def _steps(mode: str, classes: int, p: dict, ctx) -> dict:
    import torch

    import dcs_cli.config  # noqa: F401 - section import order
    from dcs_cli.config import SelectionConfig
    from dcs_cli.models.heads import SoftmaxHead
    from dcs_cli.selection.store import OptimParams

    d, b, world = p["dim"], p["batch"], ctx.world_size
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=5e-4)
    # per worker's batch, as `dcs train` (train/parts.py): W·sample_num over the W shards
    cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=min(p["sample_num"] * world, classes),
                              interval=1 << 30, ntrees=p["ntrees"], index_dim=p["index_dim"], rerank=p["rerank"],
                              background=False, seed=0)
    t0 = time.perf_counter()
    if world == 1:
        from dcs_cli.selection import build_selector
        from dcs_cli.selection.local_store import LocalStore
        from dcs_cli.selection.sampled import SampledSoftmax

        store = LocalStore(classes, d, seed=0, params=params, device=ctx.device, catch_up=True)  # as dcs train
        made = time.perf_counter()
        clf = SampledSoftmax(build_selector(cfg, classes, b), store, SoftmaxHead())
    else:
        from dcs_cli.selection.sharded_store import ShardedStore
        from dcs_cli.train.sharded_softmax import ShardedSoftmax, build_shard_selector

        store = ShardedStore(classes, d, seed=0, params=params, device=ctx.device,
                             momentum_dtype=p["momentum_dtype"], catch_up=True)
        made = time.perf_counter()
        clf = ShardedSoftmax(build_shard_selector(cfg, store, b * world), store, SoftmaxHead())
    build = getattr(clf.selector, "build_seconds", 0.0)
    gen = torch.Generator().manual_seed(1 + ctx.rank)
    steps = p["full_steps"] if mode == "full" else p["steps"]
    seconds, active = 0.0, 0
    for i in range(steps + 1):  # step 0 pays one-off allocations: not timed
        # a fresh batch every step, made before its timer: no step revisits another's rows
        feats = torch.randn(b, d, generator=gen).to(ctx.device)
        labels = torch.randint(0, classes, (b,), generator=gen).to(ctx.device)
        if i == 1 and world > 1:
            torch.distributed.barrier()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        x = feats.requires_grad_(True)
        loss, stats = clf(x, labels)
        active = stats.get("active", active)
        loss.backward()
        clf.push()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            seconds += time.perf_counter() - start
    clf.selector.close()
    return {"seconds": seconds, "steps": steps, "init_s": made - t0, "build_s": build, "active": active}


def run_config(mode: str, classes: int, procs: int, p: dict) -> dict:
    """One row: spawn `procs` workers, wait for their figures, sum their memory."""
    from dcs_cli.train.dist import free_port

    need, avail = estimate_bytes(mode, classes, procs, p), mem_available()
    # every row has every key (None where a configuration did not run), so JSON readers and the table agree
    row = {"name": f"{mode}/{'local' if procs == 1 else 'sharded'}", "mode": mode, "classes": classes,
           "procs": procs, "estimated_mb": round(need / 2**20), "samples_per_s": None, "active": None,
           "step_s": None, "peak_rss_mb": None, "peak_rss_mb_per_proc": None, "init_s": None, "build_s": None,
           "note": ""}
    if avail and need > FIT * avail:
        row["note"] = f"does not fit: needs ~{need / 2**30:.1f} GB, {avail / 2**30:.1f} GB available"
        return row
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    workers = [ctx.Process(target=_worker, args=(r, procs, port, mode, classes, p, results), daemon=True)
               for r in range(procs)]
    for w in workers:
        w.start()
    try:
        got = collect(results, workers, procs, TIMEOUT_S, failed=lambda g: "error" in g)
    except WorkerDied as exc:
        got = [{"error": str(exc)}]
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
                w.join(10)
    errors = [g["error"] for g in got if "error" in g]
    if errors:
        row["note"] = f"failed: {errors[0][:200]}"
        return row
    slowest = max(g["seconds"] for g in got)
    steps = got[0]["steps"]
    row.update(samples_per_s=round(p["batch"] * procs * steps / slowest, 1), active=got[0]["active"],
               step_s=round(slowest / steps, 4),
               peak_rss_mb=round(sum(g["peak_rss_mb"] for g in got)),
               peak_rss_mb_per_proc=[round(g["peak_rss_mb"]) for g in sorted(got, key=lambda g: g["rank"])],
               init_s=round(max(g["init_s"] for g in got), 1), build_s=round(max(g["build_s"] for g in got), 1))
    return row


def run_scale(params: dict, classes=None, contenders=None, procs=None, json_path: Path | None = None,
              quick: bool = False) -> dict:
    """Run every (class count, contender, process count) configuration and report one row each.

    `classes`, `contenders` and `procs` default to CLASSES (QUICK_CLASSES with `quick`), CONTENDERS and PROCS;
    a value the scenario cannot run with is a `UsageError` naming its option.
    """
    counts = tuple(classes) if classes else (QUICK_CLASSES if quick else CLASSES)
    contenders = tuple(contenders) if contenders else CONTENDERS
    worlds = tuple(procs) if procs else PROCS
    _check(params, counts, contenders, worlds)
    rows = []
    for n in counts:
        for mode in contenders:
            for w in worlds:
                info(f"scale: {mode}, {n:,} classes, {w} process(es) ...")
                rows.append(run_config(mode, n, w, params))
                info(f"  -> {rows[-1].get('samples_per_s')} samples/s, {rows[-1].get('peak_rss_mb')} MB "
                     f"{rows[-1].get('note', '')}")
    return report("scale", params, rows, json_path)


def _check(p: dict, counts: tuple, contenders: tuple, worlds: tuple) -> None:
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        raise UsageError(f"--only: unknown contender(s) {', '.join(bad)}; choose from {', '.join(CONTENDERS)}")
    for name, value in (("--dim", p["dim"]), ("--batch", p["batch"]), ("--sample-num", p["sample_num"]),
                        ("--steps", p["steps"]), ("--full-steps", p["full_steps"]), ("--ntrees", p["ntrees"]),
                        ("--rerank", p["rerank"]), ("--classes", min(counts)), ("--procs", min(worlds))):
        if value <= 0:
            raise UsageError(f"{name} must be > 0, got {value}")
    if p["momentum_dtype"] not in ("float32", "bfloat16"):
        raise UsageError(f"--momentum-dtype must be float32 or bfloat16, got {p['momentum_dtype']!r}")
    if p["index_dim"] < 0 or p["threads"] < 0:
        raise UsageError("--index-dim and --threads must be >= 0")
