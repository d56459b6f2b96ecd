"""Helpers of the sharded tests: run a function on W gloo processes, and the step those processes take.

    results = run_ranks(sharded_steps, 2, tmp_path, spec)   # [rank 0's result, rank 1's result]

Imported as a top-level module (its folder is put on sys.path), so spawned children can unpickle the
worker functions. Results travel as torch files in the test's tmp folder; every child is joined with a
timeout and killed if it outlives it.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcs_cli.train.dist import free_port

TIMEOUT_S = 180


def _child(rank: int, world: int, port: int, fn, folder: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(
            seconds=TIMEOUT_S))
        result = fn(rank, world, *args)
        torch.save(result, Path(folder) / f"rank{rank}.pt")
        dist.barrier()  # every rank done before any tears gloo down: a peer gone mid-teardown can abort gloo
    except BaseException:
        (Path(folder) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        del fn
        gc.collect()  # the step's DDP model and its pending gloo work, freed while the interpreter is whole
        if dist.is_initialized():
            dist.destroy_process_group()
    # Done and saved: skip interpreter finalization, where gloo's threads have been seen to abort the process
    # (exit -6 after a successful run, about one suite run in four).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, folder: Path, *args, timeout: float = TIMEOUT_S) -> list:
    """`fn(rank, world, *args)` on `world` spawned gloo processes; their return values, by rank."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world, port, fn, str(folder), args), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    errors = [e.read_text() for e in sorted(folder.glob("rank*.err"))]
    if errors:
        raise RuntimeError("a rank failed:\n" + "\n".join(errors))
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        raise RuntimeError(f"ranks exited with {codes} (killed after {timeout}s if None/negative)")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]


# --------------------------------------------------------------------------------------- the step

def make_head(name: str):
    from dcs_cli.models.heads import ArcFaceHead, CosFaceHead, SoftmaxHead

    return {"softmax": lambda: SoftmaxHead(bias=False), "softmax_bias": lambda: SoftmaxHead(bias=True),
            "cosface": lambda: CosFaceHead(16.0, 0.35), "arcface": lambda: ArcFaceHead(16.0, 0.5)}[name]()


def make_data(spec: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step`: inputs (B×d_in) and labels, the same in every process."""
    gen = torch.Generator().manual_seed(100 + step)
    b = sum(spec["sizes"])
    x = torch.randn(b, spec["d_in"], generator=gen)
    y = torch.randint(0, spec["classes"], (b,), generator=gen)
    return x, y


def make_backbone(spec: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(spec["d_in"], spec["dim"])


def store_kwargs(spec: dict) -> dict:
    from dcs_cli.selection.store import OptimParams

    return dict(bias=spec["head"] == "softmax_bias", seed=3, init_std=0.3,
                params=OptimParams(lr=0.5, momentum=0.9, weight_decay=1e-3))


def sharded_steps(rank: int, world: int, spec: dict) -> dict:
    """`spec["steps"]` sharded steps over a DDP backbone; everything a single process must reproduce."""
    import dataclasses

    from dcs_cli.selection.config import SelectionConfig
    from dcs_cli.selection.sharded_store import ShardedStore
    from dcs_cli.train.sharded_softmax import ShardedClassifier, build_shard_selector

    store = ShardedStore(spec["classes"], spec["dim"], rank=rank, world=world, **store_kwargs(spec))
    cfg = dataclasses.replace(SelectionConfig(), mode=spec["mode"], sample_num=spec.get("sample_num", 1),
                              metric="auto")
    selector = build_shard_selector(cfg, store, sum(spec["sizes"]))
    clf = ShardedClassifier(selector, store, make_head(spec["head"]), tail_samples=spec.get("tail_samples", 0),
                            tail_near=spec.get("tail_near", 0), random_share=spec.get("random_share", 0.0))
    chosen = []  # each step's Selection, for its retrieved ids
    select = selector.select
    selector.select = lambda features, labels: chosen.append(select(features, labels)) or chosen[-1]
    backbone = torch.nn.parallel.DistributedDataParallel(make_backbone(spec))
    lo = sum(spec["sizes"][:rank])
    hi = lo + spec["sizes"][rank]
    out = {"loss": [], "feature_grad": [], "backbone_grad": [], "active": [], "retrieved": [], "correct": [],
           "lo": store.lo, "hi": store.hi}
    for step in range(spec["steps"]):
        x, y = make_data(spec, step)
        backbone.zero_grad()
        features = backbone(x[lo:hi])
        features.retain_grad()
        loss, correct, stats = clf.loss(features, y[lo:hi])
        loss.backward()
        active = clf.sharded._pending[0] + store.lo
        clf.after_step()
        out["loss"].append(float(loss.detach()))
        out["correct"].append(correct)
        out["feature_grad"].append(features.grad.clone())
        out["backbone_grad"].append([p.grad.clone() for p in backbone.parameters()])
        out["active"].append(active)
        sel = chosen[-1]
        hard = sel.retrieved if sel.retrieved is not None else torch.zeros(sel.ids.numel(), dtype=torch.bool)
        out["retrieved"].append(hard)
        out["active_total"] = stats["active"]
    out["weight"], out["momentum"] = store.weight.clone(), store.momentum.clone()
    out["bias"] = store.bias.clone() if store.bias is not None else None
    full_w, _ = store.gather_weights()
    out["gathered"] = full_w
    clf.close()
    return out


def save_worker(rank: int, world: int, spec: dict) -> dict:
    """Train a shard a little, save it collectively; returns the shard's (settled) state."""
    from dcs_cli.selection.sharded_store import ShardedStore
    from dcs_cli.train.shard_checkpoint import save_sharded_store

    store = ShardedStore(spec["classes"], spec["dim"], rank=rank, world=world, **store_kwargs(spec))
    gen = torch.Generator().manual_seed(rank)
    for _ in range(3):
        ids = store.lo + torch.randperm(store.shard_size, generator=gen)[:4]
        store.push(ids, torch.randn(4, spec["dim"], generator=gen))
    manifest = save_sharded_store(store, spec["folder"])
    return {"state": store.state_dict(), "manifest": str(manifest) if manifest else None}


def uneven_steps(rank: int, world: int, spec: dict) -> dict:
    """Steps whose global batch puts every label in shard 0 (classes 0.., `spec["labels"]` distinct), for each
    selection mode in `spec["modes"]`; per mode the figures of each step and the warnings this rank gave."""
    import dataclasses

    from dcs_cli.models.heads import SoftmaxHead
    from dcs_cli.selection.config import SelectionConfig
    from dcs_cli.selection.sharded_store import ShardedStore
    from dcs_cli.train import sharded_softmax
    from dcs_cli.train.sharded_softmax import ShardedClassifier, build_shard_selector

    warned: list[str] = []
    sharded_softmax.warn = warned.append
    b = spec["batch"]  # per rank
    labels = torch.arange(b * world) % spec["labels"]
    out = {}
    for mode in spec["modes"]:
        warned.clear()
        store = ShardedStore(spec["classes"], 8, rank=rank, world=world, init_std=0.3)
        cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=spec["sample_num"], metric="auto",
                                  background=False, build_jobs=1, interval=1)
        selector = build_shard_selector(cfg, store, b * world)
        clf = ShardedClassifier(selector, store, SoftmaxHead(), random_share=spec.get("random_share", 0.0))
        gen = torch.Generator().manual_seed(rank)
        steps = []
        for _ in range(2):
            before = store.weight.clone()
            feats = torch.randn(b, 8, generator=gen, requires_grad=True)
            loss, _, stats = clf.loss(feats, labels[rank * b:(rank + 1) * b])
            loss.backward()
            clf.after_step()
            moved = (store.weight != before).any(1).nonzero().squeeze(1) + store.lo
            steps.append({"loss": float(loss.detach()), "stats": stats, "moved": moved,
                          "grad_finite": bool(torch.isfinite(feats.grad).all())})
        out[mode] = {"steps": steps, "warned": list(warned), "share": selector.sample_num}
        clf.close()
    return out


def scale_steps(rank: int, world: int, mode: str, classes: int, params: dict) -> dict:
    """One process of a `dcs bench scale` configuration (its timed steps, in this process group)."""
    from dcs_cli.bench.scale import _steps
    from dcs_cli.train.dist import DistContext

    return _steps(mode, classes, params, DistContext(rank=rank, world_size=world))
