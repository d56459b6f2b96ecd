"""Model-parallel softmax: every rank scores the global batch against its own class shard only.

    >>> from dcs_cli.config import load_config
    >>> from dcs_cli.models.heads import SoftmaxHead
    >>> cfg = load_config(overrides=["selection.mode=random", "selection.sample_num=64"])
    >>> store = ShardedStore(num_classes=1000, dim=16)     # rank and world of the process group (here 0 of 1)
    >>> clf = ShardedClassifier(build_shard_selector(cfg.selection, store, global_batch=8), store, SoftmaxHead())
    >>> features = torch.randn(8, 16, requires_grad=True)            # the backbone's output (under DDP)
    >>> loss, correct, stats = clf.loss(features, torch.randint(0, 1000, (8,)))   # collective: every rank
    >>> loss.backward(); clf.after_step()                             # rows pushed locally
    >>> stats["active"], store.steps
    (64, 1)

Under `dcs train --nproc N` every rank runs those lines on its own shard and batch, with an optimizer step
for the backbone between backward and `after_step()`; one process (no process group) runs the same code.

One step: all-gather features and labels (autograd-aware) → the shard's selector picks active classes
among the shard's rows (positives = gathered labels inside the shard) → the head's logits over those rows
→ cross-entropy across shards: all-reduce MAX of each sample's largest logit, all-reduce SUM of the
exp-sums and of the target logit (owned by exactly one shard); loss = mean over the global batch.
Backward: d loss / d logits = (softmax − onehot) / B_global on each shard, locally; the gathered-feature
gradient is summed over ranks and each rank keeps its own samples' slice, multiplied by W because DDP
averages the backbone gradients over ranks (as Partial FC does): the backbone then gets exactly the
gradient a single process over the global batch would. Row gradients already are that process's
gradients, so they are pushed as they are. No class parameter crosses the network; per step the wire
carries B×d features (and their gradient), B labels and 3·B+6 floats of reductions (a MAX of B, a SUM of
2·B+6, six of them the step's sizes summed over the shards; with tail samples or a random share, where the
backbone's loss and the rows' are apart, a second MAX of B, or 2·B with the tail, and SUM of 2·B). Shards'
active sets may differ in width: every reduction is per sample.

A shard holds the distinct labels of the whole global batch that fall in it, a Binomial count: now and
then a step brings a shard more of them than its share of sample_num. Under several processes that step
trains all of the shard's positives and nothing past them (no retrieved negatives, no fill), the other
shards as usual; the step stats count such steps (`shard_overflow`, over all shards, since the process
started) and the rank that first sees one warns once. One process keeps the selector's error: its batch's
distinct labels are the user's choice (`selection.base.check_sample_num`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dcs_cli.console import warn
from dcs_cli.errors import ConfigError, DcsError
from dcs_cli.selection.full import FullSelector
from dcs_cli.selection.sharded_store import ShardedStore
from dcs_cli.selection.tail import (
    TailSampler,
    resolve_tail_near,
    resolve_tail_samples,
    rows_past_active,
    tail_log_mass,
)

SUMMED_STATS = ("positives", "retrieved", "random_fill")  # a step's counts over every shard, like `active`

ADAPTIVE_UNSUPPORTED = ("selection.adaptive is not supported with the sharded class store yet; set "
                        "selection.adaptive=false, or use dist.class_store=paramserver")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(count: int, device: torch.device) -> list[int]:
    """Every rank's local batch size (ranks may differ, e.g. at an epoch's end)."""
    rank, world = _world()
    if world == 1:
        return [count]
    mine = torch.tensor([count], dtype=torch.long, device=device)
    sizes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine)
    return [int(s) for s in sizes]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class GatherFeatures(torch.autograd.Function):
    """`all = GatherFeatures.apply(x, sizes, scale)`: rank-major concatenation of every rank's x; backward sums
    the gradient over ranks and returns this rank's rows times `scale`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], scale: float):
        rank, world = _world()
        ctx.lo, ctx.hi, ctx.scale = sum(sizes[:rank]), sum(sizes[: rank + 1]), scale
        return x.clone() if world == 1 else _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if _world()[1] > 1:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.lo:ctx.hi] * ctx.scale, None, None


class ShardedCrossEntropy(torch.autograd.Function):
    """`loss, right, totals = ShardedCrossEntropy.apply(logits, target_col, extra, log_tail)`: mean CE over
    the global batch.

    `logits` (B×S_r) are this shard's columns, S_r its own (it may be 0: a shard whose backbone loss keeps
    no column); `target_col` (B) the target's column here, or -1 where another shard owns it; `log_tail`
    (B, or None) the log of this shard's inactive classes' estimated exp-mass (`tail.py`), added to the
    denominator as a constant. Also returns, per sample, whether its target logit is the largest of the
    logits over all shards (accuracy among the active classes, ties count as right), and the sums over
    ranks of `extra` (a sequence of E figures that ride along with the reductions for free). Two
    collectives per step: one MAX of B floats (2·B with a tail), one SUM of 2·B+E."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target_col: torch.Tensor, extra: tuple[float, ...] = (),
                log_tail: torch.Tensor | None = None):
        world = _world()[1]
        logits = logits.detach()
        b = logits.shape[0]
        owned = target_col >= 0
        if logits.shape[1]:
            target = logits.gather(1, target_col.clamp(min=0).view(-1, 1)).squeeze(1) * owned
        else:  # no column here, so no target either
            target = logits.new_zeros(b)
        raw_max = logits.max(1).values if logits.shape[1] else logits.new_full((b,), float("-inf"))
        maxes = raw_max if log_tail is None else torch.cat([raw_max, torch.maximum(raw_max, log_tail)])
        if world > 1:
            dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        raw_max = maxes[:b]
        gmax = maxes[b:] if log_tail is not None else raw_max  # the shift: over the tails too
        exp = torch.sub(logits, gmax.unsqueeze(1)).exp_()
        local_sum = exp.sum(1)
        if log_tail is not None:
            local_sum = local_sum + torch.exp(log_tail - gmax)
        sums = torch.cat([local_sum, target, logits.new_tensor(list(extra))])
        if world > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sumexp, target = sums[:b], sums[b:2 * b]
        loss = (torch.log(sumexp) + gmax - target).mean()
        exp /= sumexp.unsqueeze(1)  # this shard's softmax columns, kept for backward
        ctx.save_for_backward(exp, target_col)
        right = target >= raw_max  # every rank now knows each sample's target and global max
        totals = sums[2 * b:].clone()
        ctx.mark_non_differentiable(right, totals)
        return loss, right, totals

    @staticmethod
    def backward(ctx, grad_loss, _grad_right, _grad_total):
        # The saved softmax becomes the gradient in place (a backward runs once: no retain_graph here).
        grad, target_col = ctx.saved_tensors
        rows = (target_col >= 0).nonzero().squeeze(1)
        grad[rows, target_col[rows]] -= 1.0
        return grad.mul_(grad_loss / grad.shape[0]), None, None, None


def margin_logits(head: nn.Module, feats: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                  target_col: torch.Tensor) -> torch.Tensor:
    """The head's training logits of this shard's columns; its margin only where the target column is here.

    Works for any head whose margin touches the target column alone (softmax, cosface, arcface): the
    plain logits (`local_labels=None`), then each owned sample's target logit from the head applied to
    that sample against its own target row (the diagonal of a small B_o×B_o call), scattered in."""
    logits = head(feats, w, b, None)
    rows = (target_col >= 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return logits
    cols = target_col[rows]
    own = head(feats[rows], w[cols], b[cols] if b is not None else None,
               torch.arange(rows.numel(), device=feats.device))
    # in place: the heads' last operations (matmul, + bias, × scale) do not keep their output for backward
    return logits.index_put_((rows, cols), own.diagonal())


class ShardedSoftmax(nn.Module):
    """`loss, stats = ShardedSoftmax(selector, store, head)(features, labels)`; then backward and push().

    `selector` works over the shard in local ids (attached here to `store.local_view()`)."""

    def __init__(self, selector, store: ShardedStore, head: nn.Module, ddp_average: bool = True,
                 tail_samples: int = 0, seed: int = 0, tail_near: int = 0, random_share: float = 0.0):
        super().__init__()
        if getattr(selector, "adaptive", False):
            raise ConfigError(ADAPTIVE_UNSUPPORTED)
        self.selector, self.store, self.head = selector, store, head
        self.world = store.world
        self.ddp_average = ddp_average
        metric = getattr(head, "metric", "dot")
        selector.set_metric(metric)
        selector.attach(store.local_view())
        self.step = 0
        # as SampledSoftmax, per worker's batch like sample_num: the W shards share W·k draws for the global
        # batch, each drawing its share among its own inactive rows
        k = resolve_tail_samples(tail_samples, metric, selects_all=isinstance(selector, FullSelector)) * store.world
        share = -(-k * store.shard_size // store.num_classes)
        self.tail = TailSampler(store.shard_size, share, seed + store.rank) if k > 0 else None
        selector.near = resolve_tail_near(tail_near, k)  # per sample, like SampledSoftmax
        selector.random_share = random_share
        self._pending: tuple | None = None
        self.last: dict = {}
        self.overflow_steps = 0  # steps in which some shard trained more positives than its share
        self._warned = False

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        device = features.device
        sizes = gather_sizes(features.shape[0], device)
        scale = float(self.world) if self.ddp_average else 1.0
        feats = GatherFeatures.apply(features, sizes, scale)
        all_labels = labels.to(device=device, dtype=torch.long)
        if self.world > 1:
            all_labels = _all_gather_padded(all_labels, sizes)
        labels_cpu = all_labels.cpu()
        owned = self.store.owns(labels_cpu)
        sel, overflow = self._select(feats.detach(), labels_cpu[owned] - self.store.lo)
        target_col = torch.full((labels_cpu.numel(),), -1, dtype=torch.long)
        target_col[owned] = sel.local_labels
        target_col = target_col.to(device)
        active_here = sel.ids.numel()
        near, drawn, log_weight = rows_past_active(self.tail, sel)
        w, b = self.store.current_local_rows(torch.cat([sel.ids, near, drawn]))
        w, w_rest = w[:active_here].to(device).detach().requires_grad_(True), w[active_here:].to(device)
        b, b_rest = (b[:active_here].to(device).detach().requires_grad_(True), b[active_here:].to(device)) \
            if b is not None else (None, None)
        feats = feats.float()
        tail_here = near.numel() + drawn.numel()
        # summed over the shards with the step's reductions: the step's sizes over all of them
        extra = (float(active_here), float(overflow), float(tail_here),
                 *(float(sel.stats.get(key, 0)) for key in SUMMED_STATS))
        if self.tail is None and sel.retrieved is None:
            logits = margin_logits(self.head, feats, w, b, target_col)
            loss, right, totals = ShardedCrossEntropy.apply(logits, target_col, extra, None)
        else:  # as SampledSoftmax: the backbone's loss and the rows' (with this shard's tail) apart
            logits = margin_logits(self.head, feats, w.detach(), b.detach() if b is not None else None, target_col)
            loss = ShardedCrossEntropy.apply(*sel.for_backbone(logits, target_col), (), None)[0]
            log_tail = None
            if self.tail is not None:
                with torch.no_grad():  # this shard's near rows whole, its drawn ones scaled up (tail.py)
                    log_tail = tail_log_mass(self.head(feats, w_rest, b_rest, None), near.numel(), log_weight)
            row_logits = margin_logits(self.head, feats.detach(), w, b, target_col)
            row_loss, right, totals = ShardedCrossEntropy.apply(row_logits, target_col, extra, log_tail)
            loss = loss + (row_loss - row_loss.detach())
        active, overflowed, tail_rows, *summed = (float(v) for v in totals.tolist())
        self.overflow_steps += int(overflowed > 0)
        self._pending = (sel.ids, w, b)
        rank = _world()[0]
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        self.last = {"correct": int(right[lo:hi].sum()), "global_batch": sum(sizes)}
        stats = dict(sel.stats)
        stats.update({key: int(round(v)) for key, v in zip(SUMMED_STATS, summed, strict=True) if key in sel.stats})
        stats["active_shard"] = int(sel.ids.numel())
        stats["active"] = int(round(active))
        stats["shard_overflow"] = self.overflow_steps
        if self.tail is not None:
            stats["tail"] = int(round(tail_rows))
        return loss, stats

    def _select(self, features: torch.Tensor, labels: torch.Tensor):
        """`sel, overflow`: the selector's choice over this shard for its positives `labels` (local ids); a
        step that brings the shard more distinct labels than its share of sample_num (under several
        processes) selects those positives alone, the selector asked for that many for this step only."""
        share = getattr(self.selector, "sample_num", None)  # FullSelector: every row, no share
        positives = int(torch.unique(labels).numel()) if share is not None else 0
        if self.world == 1 or share is None or positives <= share:
            return self.selector.select(features, labels), False
        self.selector.sample_num = positives  # no room past the positives: no retrieved negatives, no fill
        try:
            sel = self.selector.select(features, labels)
        finally:
            self.selector.sample_num = share
        if not self._warned:
            self._warned = True
            warn(f"rank {self.store.rank}: a step's global batch has {positives} distinct labels in this rank's shard "
                 f"(classes {self.store.lo}..{self.store.hi - 1}), more than its {share} active classes (its share of "
                 "selection.sample_num); such steps train the shard's positives alone, without negatives, and are "
                 "counted as shard_overflow; raise selection.sample_num to make them rarer (warned once)")
        return sel, True

    def push(self) -> None:
        """This shard's row gradients into its rows (local: nothing crosses the network), then refresh."""
        if self._pending is None:
            raise DcsError("ShardedSoftmax.push() called without a forward pass since the last push")
        ids, w, b = self._pending
        self._pending = None
        if w.grad is None:
            raise DcsError("ShardedSoftmax.push() needs loss.backward() first: the rows have no gradient")
        self.store.local_push(ids, w.grad, b.grad if b is not None else None)
        self.step += 1
        self.selector.refresh(self.store.local_view(), self.step)


def build_shard_selector(cfg, store: ShardedStore, global_batch: int):
    """The selector `cfg.mode` names, over this shard in local ids.

    `selection.sample_num` is the active classes over all shards: each shard gets its share by size
    (at least 1, at most the shard). Seeds differ per rank so the shards' random fills are independent."""
    from dcs_cli.selection import build_selector

    n = store.shard_size
    share = max(1, min(n, -(-cfg.sample_num * n // store.num_classes)))
    shard_cfg = dataclasses.replace(cfg, sample_num=share, seed=cfg.seed + store.rank)
    return build_selector(shard_cfg, n, global_batch)


class ShardedClassifier:
    """`loss, correct, stats = ShardedClassifier(selector, store, head).loss(features, labels)`.

    The same methods as `SampledClassifier`, so the training loop cannot tell them apart; `loss` and
    `top1` are collectives (every rank calls them)."""

    def __init__(self, selector, store: ShardedStore, head: nn.Module, step: int = 0, ddp_average: bool = True,
                 tail_samples: int = 0, seed: int = 0, tail_near: int = 0, random_share: float = 0.0):
        self.store, self.selector = store, selector
        self.head = head
        self.angular = getattr(head, "metric", "dot") == "angular"
        selector.load_state_dict({"step": step})
        self.sharded = ShardedSoftmax(selector, store, head, ddp_average=ddp_average,
                                     tail_samples=tail_samples, seed=seed, tail_near=tail_near,
                                     random_share=random_share)
        self.sharded.step = step
        self._lr: float | None = None

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, dict]:
        loss, stats = self.sharded(features.float(), labels)
        return loss, self.sharded.last["correct"], stats

    def after_step(self) -> None:
        self.sharded.push()

    def reseed(self, seed: int) -> None:
        """As `SampledClassifier.reseed`: this shard's random fill and tail draws restart from `seed`."""
        self.selector.reseed(seed)
        if self.sharded.tail is not None:
            self.sharded.tail.reseed(seed)

    def set_lr(self, lr: float, is_main: bool = True) -> None:
        if lr != self._lr:  # every rank owns its shard's optimiser state
            self.store.set_lr(lr)
        self._lr = lr

    def top1(self, backbone: nn.Module, loader, device: torch.device) -> tuple[float, int]:
        """Collective: validation top-1 over all N classes, rows caught up to this step; no rank gathers
        all N rows (`sharded_top1`)."""
        self.store.settle()
        return sharded_top1(backbone, self.store, loader, device, self.angular)

    def close(self) -> None:
        self.selector.close()



EVAL_BLOCK = 4096  # validation samples gathered and scored per round


@torch.no_grad()
def sharded_top1(backbone: nn.Module, store: ShardedStore, loader, device: torch.device,
                 angular: bool) -> tuple[float, int]:
    """Collective: (top-1 over all N classes, samples) of every rank's validation shard, without any rank
    holding all N rows. Each rank embeds its own samples; in rounds of `EVAL_BLOCK` per rank the features
    are all-gathered, each rank finds its shard's best class per sample, and an all-reduce MAX of the
    scores, then MIN of the ids that reach it (argmax's first index), picks the winner."""
    from dcs_cli.train.evaluate import predict

    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(backbone(x.to(device, non_blocking=True)).float())
        labels.append(y.to(device=device, dtype=torch.long))
    backbone.train(was_training)
    feats = torch.cat(feats) if feats else torch.empty(0, store.dim, device=device)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long, device=device)
    sizes = gather_sizes(feats.shape[0], device)
    rank, world = _world()
    weight = store.weight.to(device)
    bias = store.bias.to(device) if store.bias is not None and not angular else None
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, max(sizes), EVAL_BLOCK):
        block = [max(0, min(n, start + EVAL_BLOCK) - start) for n in sizes]
        f = feats[start:start + block[rank]]
        y = labels[start:start + block[rank]]
        if world > 1:
            f, y = _all_gather_padded(f, block), _all_gather_padded(y, block)
        if f.shape[0] == 0:
            continue
        q = F.normalize(f, dim=1) if angular else f
        local = predict(q, weight, bias, angular)
        w = weight[local]
        score = ((q * (F.normalize(w, dim=1) if angular else w)).sum(1) +
                 (bias[local] if bias is not None else 0.0))
        best = score.clone()
        if world > 1:
            dist.all_reduce(best, op=dist.ReduceOp.MAX)
        ids = torch.where(score >= best, local + store.lo, torch.full_like(local, store.num_classes))
        if world > 1:
            dist.all_reduce(ids, op=dist.ReduceOp.MIN)
        lo = sum(block[:rank])
        mine = slice(lo, lo + block[rank])  # count each sample once: on the rank that embedded it
        counts[0] += (ids[mine] == y[mine]).sum()
        counts[1] += block[rank]
    if world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    total = int(counts[1].item())
    return (float(counts[0].item()) / total if total else 0.0), total
