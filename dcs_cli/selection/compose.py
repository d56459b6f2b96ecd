"""Turning a batch's labels and retrieved candidates into exactly `sample_num` active class ids.

    >>> import torch
    >>> labels, candidates = torch.tensor([7, 3, 7]), torch.tensor([9, 3, -1, 11])   # -1 = padding
    >>> sel = compose(labels, candidates, 6, 100, torch.Generator().manual_seed(0))
    >>> sel.ids[:4].tolist(), sel.ids.numel(), sel.local_labels.tolist(), sel.stats
    ([3, 7, 9, 11], 6, [1, 0, 1], {'positives': 2, 'retrieved': 2, 'random_fill': 2})

Order of the active set: the batch's distinct labels (sorted), then candidates in the order given (callers
pass them rank-major: every sample's 1st neighbour, then every 2nd, ... so a cut drops the farthest ones
evenly), then uniform random classes to fill up. Everything here is S-sized; nothing allocates N entries
unless `sample_num` is more than half of N (then drawing the complement is the cheap way).
"""

from __future__ import annotations

import torch

from dcs_cli.errors import ConfigError, DataError
from dcs_cli.selection.base import Selection, check_sample_num


def check_batch(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    """DataError for non-finite features or labels outside 0..N-1 (a user's data, not a bug)."""
    if not torch.isfinite(features).all():
        raise DataError("selection: the batch features contain NaN or Inf; lower the learning rate or "
                        "check the input data")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"selection: labels must lie in 0..{num_classes - 1}, got "
                        f"{int(labels.min())}..{int(labels.max())}; check data.num_classes")


def unique_in_order(ids: torch.Tensor) -> torch.Tensor:
    """Distinct values of `ids` (1-D int64) in order of first occurrence."""
    if ids.numel() == 0:
        return ids
    uniq, inverse = torch.unique(ids, return_inverse=True)
    pos = torch.arange(ids.numel(), dtype=torch.long)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long).scatter_reduce_(
        0, inverse, pos, reduce="amin")
    return uniq[torch.argsort(first)]


def random_fill(taken: torch.Tensor, count: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct uniform class ids not in `taken` (seeded)."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    if num_classes - taken.numel() < count:
        raise ConfigError(f"selection: cannot draw {count} more classes, only {num_classes} exist")
    if count + taken.numel() > num_classes // 2:
        # Dense regime: a permutation of the free ids is cheaper than rejection sampling.
        free = torch.ones(num_classes, dtype=torch.bool)
        free[taken] = False
        pool = free.nonzero().squeeze(1)
        return pool[torch.randperm(pool.numel(), generator=generator)[:count]]
    out = torch.empty(0, dtype=torch.long)
    while out.numel() < count:
        draw = torch.randint(0, num_classes, (2 * (count - out.numel()) + 16,), generator=generator)
        draw = unique_in_order(draw)
        draw = draw[~torch.isin(draw, taken) & ~torch.isin(draw, out)]
        out = torch.cat([out, draw[: count - out.numel()]])
    return out


def compose(
    labels: torch.Tensor,
    candidates: torch.Tensor | None,
    sample_num: int,
    num_classes: int,
    generator: torch.Generator,
    near: torch.Tensor | None = None,
    random_share: float = 0.0,
) -> Selection:
    """Positives, then unique candidates (ids < 0 are padding), cut or randomly filled to `sample_num`;
    `random_share` (> 0) of the slots past the positives are kept for the fill, and the selection marks the
    retrieved ids (`Selection.retrieved`).
    `near` (ids < 0 are padding) becomes the selection's `near`: its unique ids not selected."""
    labels = labels.to("cpu", torch.long)
    positives = torch.unique(labels)
    check_sample_num(sample_num, num_classes, int(positives.numel()))
    ids = positives
    retrieved = 0
    if candidates is not None and candidates.numel():
        cand = candidates.to("cpu", torch.long).reshape(-1)
        cand = unique_in_order(cand[cand >= 0])
        room = sample_num - positives.numel()
        cand = cand[~torch.isin(cand, positives)][: room - round(room * random_share)]
        retrieved = cand.numel()
        ids = torch.cat([positives, cand])
    fill = random_fill(ids, sample_num - ids.numel(), num_classes, generator)
    hard = None
    if random_share > 0:
        hard = torch.zeros(sample_num, dtype=torch.bool)
        hard[positives.numel():ids.numel()] = True
    ids = torch.cat([ids, fill])
    local = torch.searchsorted(positives, labels)
    stats = {"positives": int(positives.numel()), "retrieved": int(retrieved), "random_fill": int(fill.numel())}
    if near is not None:
        near = torch.unique(near.to("cpu", torch.long).reshape(-1))
        near = near[(near >= 0) & ~torch.isin(near, ids)]
        stats["near"] = int(near.numel())
    return Selection(ids=ids, local_labels=local, stats=stats, near=near, retrieved=hard)
