"""`dcs bench select-quality`: what each selection mode costs in accuracy at a 1% budget.

    dcs bench select-quality --json select_quality.json

A small residual MLP (x + MLP(x), d → hidden → d) plus a class store is trained on the seeded synthetic
clustered classes (hard negatives: cluster-mates) with each contender for the same steps, same seed, same
data order and the same learning-rate schedule (cosine from the base LR to 0, one rule for every mode).

Why this regime (it converges; the earlier 0.6-epoch one did not):
  * The loss is a batch mean, so a class row's gradient carries 1/B; a row is touched only when its class
    is active, so the store's LR is `row_lr × batch` (each sample moves its rows by ~row_lr), while the
    backbone, updated every step, keeps a small LR. Weight decay is not scaled with it: the store's
    coefficient is wd / batch, so every row decays by row_lr × wd per step it is updated (unscaled, full
    mode, which updates all N rows every step, shrank its rows ~10x and reached 50% instead of 85%).
  * The store runs without momentum: lazy momentum lets a hard negative that is selected step after step
    compound its velocity (exact selection trained *worse* than random with store momentum 0.9).
  * The residual backbone starts as the identity, so the rows learnt early stay valid as it trains.
Figures:
  top1_pct  held-out top-1 (percent) over all N classes (argmax of the softmax head over the whole matrix)
  recall10  recall of the exact top-10 confusers (highest-scoring wrong classes under the final weights)
            among the first 10 wrong classes the selector retrieves for the sample (a query for 11), on
            PROBE seeded held-out samples, measured when training ends against the index the selector
            serves then (after an in-flight refresh lands): for hf/hnsw, whose last periodic refresh falls
            on the final step when `interval` divides `steps`, that index was built from the final weights;
            hf+adaptive serves whatever its last drift-triggered refresh built. full/exact see all rows
            (1.0 by construction), random draws 10 at random
  recall_k  recall@k of the exact top-k classes among the k the selector retrieves, k = sample_num // B + 1:
            the query a training step makes (hf sizes its Annoy search by k, so this is the recall
            training gets, lower than recall10's larger search)
  refreshes index refreshes during training (hf, hnsw)
  wall_s    training wall time (index builds run in a background thread and are included)
hf+adaptive is hf with selection.adaptive=true (drift-triggered refresh, larger share for hard samples).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcs_cli.bench.common import recall_at_k, report
from dcs_cli.console import progress_bar
from dcs_cli.errors import UsageError

CONTENDERS = ("full", "random", "hf", "hnsw", "exact", "hf+adaptive")
PROBE = 512  # validation samples for the recall probe
WEIGHT_DECAY = 1e-4  # backbone; the store uses WEIGHT_DECAY / batch (see train_one)
EVAL_CHUNK = 256  # validation rows per scoring matmul: a 256×N block stays in cache (4096 rows ran 2x slower)


class ResidualMLP(nn.Module):
    """`ResidualMLP(d, hidden)(x) = x + MLP(x)`: the bench's backbone, the identity plus a learnt correction."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _selection_cfg(name: str, p: dict):
    from dcs_cli.config import SelectionConfig
    mode = name.split("+")[0]
    return dataclasses.replace(SelectionConfig(), mode=mode, sample_num=p["sample_num"], interval=p["interval"],
                               ntrees=p["ntrees"], adaptive=name.endswith("+adaptive"), seed=0,
                               drift_threshold=p["drift_threshold"],
                               hnsw_ef_construction=p["hnsw_ef_construction"])


def cosine_factor(step: int, steps: int) -> float:
    """LR multiplier of the shared schedule: cosine from 1 at step 0 to 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * step / steps))


def train_one(name: str, p: dict, data) -> dict:
    """Train backbone + store with contender `name`; return its row of figures."""
    from dcs_cli.config import HeadConfig
    from dcs_cli.models.heads import build_head
    from dcs_cli.selection import build_selector
    from dcs_cli.selection.exact import exact_topk
    from dcs_cli.selection.local_store import LocalStore
    from dcs_cli.selection.sampled import SampledSoftmax
    from dcs_cli.selection.store import OptimParams

    xtr, ytr, xva, yva = data
    n, d, b = p["classes"], p["dim"], p["batch"]
    torch.manual_seed(0)
    backbone = ResidualMLP(d, p["hidden"])
    store_lr = p["row_lr"] * b
    # Weight decay is not a per-sample gradient: scaling the rows' LR by B must not scale the decay too,
    # so the store's coefficient is divided by B (decay per step = row_lr × wd). Unscaled, full mode
    # (which decays all N rows every step) lost ~90% of every row's norm over the run, while the lazy
    # sampled modes decay a row only on the ~15 steps it is selected: an unfair handicap for full.
    params = OptimParams(lr=store_lr, momentum=p["store_momentum"], weight_decay=WEIGHT_DECAY / b)
    store = LocalStore(n, d, seed=0, params=params, init_std=0.01 if p["head"] == "softmax" else 1.0,
                       catch_up=True)  # as `dcs train` (optim.catch_up): skipped steps' decay is caught up
    selector = build_selector(_selection_cfg(name, p), n, b)
    head = build_head(HeadConfig(type=p["head"], scale=p["scale"], margin=p["margin"]))
    sampled = SampledSoftmax(selector, store, head)
    opt = torch.optim.SGD(backbone.parameters(), lr=p["lr"], momentum=0.9, weight_decay=WEIGHT_DECAY)
    # The same data order for every contender: one seeded permutation per pass.
    passes = -(-p["steps"] * b // len(ytr))
    order = torch.cat([torch.randperm(len(ytr), generator=torch.Generator().manual_seed(e)) for e in range(passes)])
    start = time.perf_counter()
    for step in range(p["steps"]):
        factor = cosine_factor(step, p["steps"])
        store.set_lr(store_lr * factor)
        for group in opt.param_groups:
            group["lr"] = p["lr"] * factor
        idx = order[step * b:(step + 1) * b]
        loss, _ = sampled(backbone(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sampled.push()
    if hasattr(selector, "wait"):
        selector.wait()
    wall = time.perf_counter() - start
    with torch.no_grad():
        feats = backbone(xva)
        weights = store.weights()
        metric = head.metric  # argmax of the head's logits without margin = top-1 by this similarity
        top1 = _top1(feats, weights, yva, metric)
        probe = torch.randperm(len(yva), generator=torch.Generator().manual_seed(0))[:PROBE]
        f, y = feats[probe], yva[probe]
        truth = exact_topk(f, weights, 11, metric)[1]
        found = selector.neighbours(f, 11)
        recall_k = recall_at_k(selector, weights, f, p["sample_num"] // b + 1, metric)  # training's own query
    hits = 0
    for t, g, lab in zip(truth.tolist(), found.tolist(), y.tolist(), strict=False):
        t10 = [c for c in t if c != lab][:10]
        g10 = [c for c in g if c != lab and c >= 0][:10]
        hits += len(set(t10) & set(g10))
    selector.close()
    return {"name": name, "top1_pct": 100.0 * top1, "recall10": hits / (10 * len(y)), "recall_k": recall_k,
            "refreshes": getattr(selector, "refreshes", 0), "final_loss": float(loss.detach()), "wall_s": wall}


def _top1(feats: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, metric: str) -> float:
    """Share of `feats` whose highest-scoring row of `weights` (dot, or cosine for angular) is the label."""
    w = weights.detach().to("cpu", torch.float32)
    if metric == "angular":
        w, feats = F.normalize(w, dim=1), F.normalize(feats, dim=1)
    correct = 0
    for i in range(0, len(feats), EVAL_CHUNK):
        correct += int(((feats[i:i + EVAL_CHUNK] @ w.T).argmax(1) == labels[i:i + EVAL_CHUNK]).sum())
    return correct / max(len(feats), 1)


def run_select_quality(p: dict, contenders=CONTENDERS, json_path: Path | None = None) -> dict:
    import dcs_cli.config  # noqa: F401 - section import order
    from dcs_cli.data.config import SyntheticConfig
    from dcs_cli.data.synthetic_features import SyntheticClasses

    if p.get("threads", 0) > 0:
        torch.set_num_threads(p["threads"])
    syn = SyntheticClasses(SyntheticConfig(num_classes=p["classes"], dim=p["dim"], cluster_size=10,
                                           train_per_class=p["train_per_class"], val_per_class=2, seed=0))
    data = (*syn.arrays("train"), *syn.arrays("val"))
    rows = []
    with progress_bar("select-quality", total=len(contenders), unit="contenders") as advance:
        for name in contenders:
            rows.append(train_one(name, p, data))
            advance(1)
    return report("select-quality", p, rows, json_path, cpu_only=True)


def params_from_options(*, classes: int, dim: int, budget: float, batch: int, steps: int, interval: int,
                        ntrees: int, hnsw_ef_construction: int, lr: float, row_lr: float, drift_threshold: float,
                        train_per_class: int, threads: int, store_momentum: float, head: str, scale: float,
                        margin: float) -> dict:
    """The scenario's parameters from `dcs bench select-quality`'s options (sample_num = budget × classes);
    a value it cannot run with is a `UsageError` naming its option."""
    if not 0 < budget <= 1:  # first: NaN and inf fail every comparison, and round() would raise on them
        raise UsageError(f"--budget must be in (0, 1], got {budget}")
    sample_num = max(1, int(round(budget * classes)))
    for name, value in (("--classes", classes), ("--dim", dim), ("--batch", batch), ("--steps", steps),
                        ("--interval", interval), ("--ntrees", ntrees), ("--train-per-class", train_per_class),
                        ("--hnsw-ef-construction", hnsw_ef_construction)):
        if value <= 0:
            raise UsageError(f"{name} must be > 0, got {value}")
    if not (0 < lr < math.inf and 0 < row_lr < math.inf):
        raise UsageError(f"--lr and --row-lr must be > 0 and finite, got {lr} and {row_lr}")
    if not 0 <= store_momentum < 1:
        raise UsageError(f"--store-momentum must be in [0, 1), got {store_momentum}")
    if head not in ("softmax", "cosface", "arcface"):
        raise UsageError(f"--head must be softmax, cosface or arcface, got {head!r}")
    if sample_num < batch:
        raise UsageError(f"--budget gives sample_num={sample_num} < --batch {batch}: a batch's distinct "
                         "labels may not fit; raise --budget or lower --batch")
    return {"classes": classes, "dim": dim, "sample_num": sample_num, "batch": batch, "steps": steps,
            "interval": interval, "ntrees": ntrees, "hnsw_ef_construction": hnsw_ef_construction,
            "lr": lr, "row_lr": row_lr, "schedule": "cosine", "drift_threshold": drift_threshold,
            "train_per_class": train_per_class, "hidden": 128, "threads": threads,
            "head": head, "scale": scale, "margin": margin, "store_momentum": store_momentum}
