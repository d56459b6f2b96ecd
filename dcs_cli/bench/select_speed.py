"""`dcs bench select-speed`: seconds per classifier step for full, random, exact, hf, hnsw and ivf, side by side.

    dcs bench select-speed --quick --json select_speed.json
    dcs bench select-speed --quick --sweep --json sweep.json   # recall vs speed, each index at 4-5 settings

A step is forward + backward + store update over a fresh batch (generated before the timer starts):
selection, row gather, head, loss, one batched push, and the selector's refresh hook. Each contender runs
in its own spawned process so its peak RSS is its own. The store holds "trained-looking" weights (classes in clusters of
`CLUSTER` around shared centres, as trained classifiers are: similar classes have similar rows) and
each sample's feature points at its own class, so the index's neighbours are meaningful and its recall
can be measured. Figures:
  step_s      mean wall seconds per step (refreshes excluded in the default `--refresh sync` mode; with
              `--refresh background` the steps that ran beside a build are included, contention and all)
  idle_step_s mean over the steps with no refresh in flight (equal to step_s in sync mode)
  build_s     the first index build (synchronous, before step 1)
  refresh_s   mean wall seconds of one periodic refresh (hf: projection + full rebuild; hnsw: re-insert
              the changed rows, or a fresh build when more than hnsw_rebuild_fraction of them changed;
              ivf: the changed rows re-assigned among nearby lists + a Lloyd round; every
              ivf_rebuild_every-th refresh is a full build, charged here at the first build's cost:
              refresh_s = ((every - 1) x the measured updates' mean + build_s) / every)
  stall_s     the part of refresh_s spent in the training thread (the rest runs in a background thread
              in training; in sync mode the bench waits for all of it)
  amortized_s step_s + refresh_s / interval: every refresh's whole wall time is charged to the steps,
              as if it had stalled training (on 2 cores a background build takes the same CPU)
  recall      recall@k of the selector's neighbours against the exact top-k of the final weights
              (k = sample_num // batch + 1), on a held-out batch
  speedup     full's amortized_s / this amortized_s
`--sweep` replaces the contenders by full plus each index kind at several settings (SWEEP: hf over
Annoy trees and index_dim, hnsw over ef, ivf over nprobe), one row each, named by its settings.
Labels are drawn uniformly for every step, so the rows a refresh must handle are as many as real training
would touch (until 2026-12-07 the bench cycled 16 pre-made batches, which left hnsw's and ivf's
incremental refreshes a third of the changed rows they meet in training). full and exact cost a whole
B×N×d product per step; they run `--full-steps` steps only.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from pathlib import Path

import torch

from dcs_cli.bench.common import WorkerDied, collect, peak_rss_mb, recall_at_k, report
from dcs_cli.console import info, progress_bar
from dcs_cli.errors import UsageError

CONTENDERS = ("full", "random", "exact", "hf", "hnsw", "ivf")
INDEX_MODES = ("hf", "hnsw", "ivf")  # the contenders with an index to build and refresh
# --sweep: (mode, parameter overrides) per row; each index kind at four or more settings
SWEEP: tuple[tuple[str, dict], ...] = (
    ("full", {}),
    ("hf", {"ntrees": 4, "index_dim": 32}), ("hf", {"ntrees": 16, "index_dim": 32}),
    ("hf", {"ntrees": 4, "index_dim": 0}), ("hf", {"ntrees": 16, "index_dim": 0}),
    ("hnsw", {"hnsw_ef": 64}), ("hnsw", {"hnsw_ef": 128}), ("hnsw", {"hnsw_ef": 256}), ("hnsw", {"hnsw_ef": 512}),
    ("ivf", {"ivf_nprobe": 1}), ("ivf", {"ivf_nprobe": 2}), ("ivf", {"ivf_nprobe": 4}), ("ivf", {"ivf_nprobe": 8}),
    ("ivf", {"ivf_nprobe": 16}),
)
CLUSTER = 50  # classes per cluster of the trained-looking weights
REFRESH_MODES = ("sync", "background")


def trained_looking_(w: torch.Tensor, gen: torch.Generator, chunk: int = 1 << 16) -> torch.Tensor:
    """Fill N×d `w` in place with rows in clusters of CLUSTER classes: centre + half as much own noise."""
    n, d = w.shape
    centres = torch.randn((n + CLUSTER - 1) // CLUSTER, d, generator=gen)
    for start in range(0, n, chunk):  # chunked so no second N×d temporary is made
        part = w[start:start + chunk]
        part.normal_(0.0, 0.5, generator=gen)
        part += centres[torch.arange(start, start + part.shape[0]) // CLUSTER]
    return w.mul_(0.05)


def make_batch(w: torch.Tensor, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of `b` uniform labels: each feature is its class's present row, rescaled, plus noise."""
    labels = torch.randint(0, w.shape[0], (b,), generator=gen)
    rows = w.index_select(0, labels)
    feats = 8.0 * rows / rows.norm(dim=1, keepdim=True) + 0.5 * torch.randn(b, w.shape[1], generator=gen)
    return feats, labels


def sweep_name(mode: str, overrides: dict) -> str:
    """A sweep row's name: the mode and its settings, e.g. `ivf nprobe=4`."""
    short = {"ntrees": "ntrees", "index_dim": "dim", "hnsw_ef": "ef", "ivf_nprobe": "nprobe", "ivf_lists": "lists"}
    return " ".join([mode] + [f"{short.get(key, key)}={value}" for key, value in overrides.items()])


def _run_contender(mode: str, p: dict, queue, name: str | None = None) -> None:
    """One contender in a fresh process; puts its figures (or an error line) on `queue`."""
    name = name or mode
    try:
        import dcs_cli.config  # noqa: F401 - section import order
        from dcs_cli.config import HeadConfig, SelectionConfig
        from dcs_cli.models.heads import build_head
        from dcs_cli.selection import build_selector
        from dcs_cli.selection.local_store import LocalStore
        from dcs_cli.selection.sampled import SampledSoftmax
        from dcs_cli.selection.store import OptimParams

        if p.get("threads", 0) > 0:
            torch.set_num_threads(p["threads"])
        torch.manual_seed(0)
        n, d, b = p["classes"], p["dim"], p["batch"]
        gen = torch.Generator().manual_seed(1)
        store = LocalStore(n, d, seed=0, init_std=0.0, catch_up=True, params=OptimParams(lr=0.01, momentum=0.9,
                                                                            weight_decay=1e-4))
        trained_looking_(store.weight, gen)
        held_out = make_batch(store.weight, b, gen)[0]
        cfg = dataclasses.replace(SelectionConfig(), mode=mode, sample_num=p["sample_num"], interval=p["interval"],
                                  ntrees=p["ntrees"], hnsw_m=p["hnsw_m"], hnsw_ef=p["hnsw_ef"], seed=0,
                                  hnsw_ef_construction=p["hnsw_ef_construction"], index_dim=p["index_dim"],
                                  rerank=p["rerank"], hnsw_rebuild_fraction=p["hnsw_rebuild_fraction"],
                                  background=p["refresh"] == "background", ivf_lists=p["ivf_lists"],
                                  ivf_nprobe=p["ivf_nprobe"])
        selector = build_selector(cfg, n, b)
        sampled = SampledSoftmax(selector, store, build_head(HeadConfig(type="softmax")))
        steps = p["full_steps"] if mode in ("full", "exact") else p["steps"]
        if mode in INDEX_MODES:
            steps = max(steps, p["interval"] + 1)  # at least one periodic refresh is measured
        times, idle = [], []
        for _ in range(steps):
            feats, labels = make_batch(store.weight, b, gen)
            x = feats.clone().requires_grad_(True)
            stats = selector.stats() if hasattr(selector, "stats") else {}
            busy, before = bool(stats.get("refreshing", False)), int(stats.get("refreshes", 0))
            t0 = time.perf_counter()
            loss, _ = sampled(x, labels)
            loss.backward()
            sampled.push()  # the store update, then the selector's refresh hook
            seconds = time.perf_counter() - t0
            if not cfg.background and getattr(selector, "refreshes", 0) > before:
                seconds -= selector.refresh_seconds[-1]  # sync: the refresh is reported as refresh_s
            times.append(seconds)
            if not busy:
                idle.append(seconds)
        if hasattr(selector, "wait"):
            selector.wait()
        k = p["sample_num"] // b + 1
        searched = mode in ("exact", *INDEX_MODES)
        recall = recall_at_k(selector, store.weights(), held_out, k) if searched else float("nan")
        selector.close()
        build = getattr(selector, "build_seconds", 0.0)
        refreshes = list(getattr(selector, "refresh_seconds", []))
        stalls = list(getattr(selector, "stall_seconds", []))
        refresh = sum(refreshes) / len(refreshes) if refreshes else build
        every = getattr(selector, "rebuild_every", 1)
        if every > 1 and refreshes:  # ivf: the run's refreshes are updates; one in `every` is a full build
            refresh = (refresh * (every - 1) + build) / every
        # the first step also pays one-off allocations; leave it out when there are more
        step = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]
        idle = idle[1:] if len(idle) > 1 else idle
        queue.put({"name": name, "steps": steps, "step_s": step,
                   "idle_step_s": sum(idle) / len(idle) if idle else float("nan"), "build_s": build,
                   "refreshes": len(refreshes), "rebuilds": getattr(selector, "rebuilds", 0), "refresh_s": refresh,
                   "stall_s": sum(stalls) / len(stalls) if stalls else 0.0,
                   "amortized_s": step + (refresh / p["interval"] if mode in INDEX_MODES else 0.0),
                   "recall": recall, "peak_rss_mb": peak_rss_mb()})
    except BaseException as exc:  # reported by the parent as one line
        queue.put({"name": name, "error": f"{type(exc).__name__}: {exc}"})


def default_params(**overrides) -> dict:
    """The scenario's parameters at their command-line defaults (N = 1M), with `overrides` applied."""
    params = {"classes": 1_000_000, "dim": 256, "batch": 256, "sample_num": 10_000, "interval": 100,
              "steps": 30, "full_steps": 3, "ntrees": 4, "hnsw_m": 12,
              "hnsw_ef_construction": 40, "hnsw_ef": 64, "threads": 1, "index_dim": 32, "rerank": 4,
              "hnsw_rebuild_fraction": 0.25, "refresh": "sync", "ivf_lists": 0, "ivf_nprobe": 4}
    unknown = set(overrides) - set(params)
    if unknown:
        raise UsageError(f"select-speed: unknown parameter(s) {', '.join(sorted(unknown))}")
    return {**params, **overrides}


def sweep_settings(only=None) -> list[tuple[str, dict]]:
    """The `--sweep` rows: full (the speed-ups' reference), then SWEEP's index settings of the kinds in `only`
    (all when empty); a `UsageError` when `only` names none of them."""
    _check_contenders(tuple(only or ()))
    rows = [(mode, over) for mode, over in SWEEP if not only or mode == "full" or mode in only]
    if all(mode == "full" for mode, _ in rows):
        kinds = ", ".join(dict.fromkeys(mode for mode, _ in SWEEP if mode != "full"))
        raise UsageError(f"--sweep with --only {' --only '.join(only)}: no setting to sweep; the sweep covers "
                         f"the index kinds {kinds} (full is always its reference)")
    return rows


def run_select_speed(params: dict, contenders=CONTENDERS, json_path: Path | None = None, sweep=None,
                     quiet_table: bool = False) -> dict:
    """Run each contender (or each `sweep` setting: (mode, overrides) pairs) in its own process, add
    speed-ups over full, print and (optionally) save. Empty `contenders` means all of CONTENDERS; a value the
    scenario cannot run with is a `UsageError` naming its option."""
    contenders = tuple(contenders) if contenders else CONTENDERS
    _check(params, contenders)
    ctx = mp.get_context("spawn")
    runs = ([(sweep_name(mode, over), mode, {**params, **over}) for mode, over in sweep] if sweep is not None
            else [(mode, mode, params) for mode in contenders])
    rows = []
    with progress_bar("select-speed", total=len(runs), unit="contenders") as advance:
        for name, mode, p in runs:
            info(f"select-speed: {name} ...")
            queue = ctx.Queue()
            proc = ctx.Process(target=_run_contender, args=(mode, p, queue, name))
            proc.start()
            try:
                row = collect(queue, [proc], 1)[0]
            except WorkerDied as exc:
                row = {"name": name, "error": str(exc)}
            finally:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
            if "error" in row:
                raise UsageError(f"select-speed: contender {name} failed: {row['error']}")
            rows.append(row)
            advance(1)
    full = next((r for r in rows if r["name"] == "full"), None)
    if sweep is not None:
        params = {**params, "sweep": [sweep_name(mode, over) for mode, over in sweep]}
    for r in rows:
        r["speedup"] = full["amortized_s"] / r["amortized_s"] if full else float("nan")
    return report("select-speed", params, rows, json_path, show=not quiet_table, cpu_only=True)



def _check(p: dict, contenders: tuple) -> None:
    for name, value in (("--classes", p["classes"]), ("--dim", p["dim"]), ("--batch", p["batch"]),
                        ("--sample-num", p["sample_num"]), ("--interval", p["interval"]), ("--steps", p["steps"]),
                        ("--full-steps", p["full_steps"]), ("--ntrees", p["ntrees"]),
                        ("--ivf-nprobe", p["ivf_nprobe"])):
        if value <= 0:
            raise UsageError(f"{name} must be > 0, got {value}")
    if p["ivf_lists"] < 0:
        raise UsageError(f"--ivf-lists must be >= 0 (0 = one list per 100 rows), got {p['ivf_lists']}")
    if p["index_dim"] < 0 or p["rerank"] < 1 or not 0 <= p["hnsw_rebuild_fraction"] <= 1:
        raise UsageError("--index-dim must be >= 0, --rerank >= 1, --hnsw-rebuild-fraction in [0, 1]")
    if p["refresh"] not in REFRESH_MODES:
        raise UsageError(f"--refresh must be one of {', '.join(REFRESH_MODES)}, got {p['refresh']!r}")
    if p["sample_num"] > p["classes"]:
        raise UsageError(f"--sample-num {p['sample_num']} exceeds --classes {p['classes']}")
    _check_contenders(contenders)


def _check_contenders(contenders: tuple) -> None:
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        raise UsageError(f"--only: unknown contender(s) {', '.join(bad)}; choose from {', '.join(CONTENDERS)}")
