"""The inactive classes' share of the softmax denominator, estimated from a uniform draw of their rows.

    >>> import torch
    >>> tail = TailSampler(num_classes=1000, k=64, seed=0)
    >>> ids, log_weight = tail.draw(torch.arange(50)) # 64 ids outside the active set, with replacement
    >>> bool((ids >= 50).all()), round(log_weight, 3)  # log((1000 - 50) / 64)
    (True, 2.698)

A sampled softmax normalises over its S active classes only. With a margin head (CosFace, ArcFace) the
target logit soon dominates that small sum: the positive row stops being pulled and the selected negatives
are pushed as if they were all the competition there is, and rows and features drift to a shared
direction. Full softmax's denominator also holds the N - S inactive classes; `k` uniform draws among them,
scaled by (N - S) / k, estimate that mass without bias, and the rows' gradient is taken with it
(`SampledSoftmax`, `ShardedSoftmax`). Where the inactive classes number at most `k`, all of them are
taken once each (the estimate is exact).

With a margin head's scale (s = 32 there) much of the inactive classes' exp-logit mass sits in the few
classes closest to the sample, so uniform draws alone are noisy and, in log space, low: on the
train-quality bench's hf/CosFace runs 64 draws read the log-mass −0.3 ± 0.8 off the exact value. The
selectors that search neighbours therefore also return each sample's next `near` classes past the active
ones (`selection.tail_near`, `Selection.near`); their exp-logits join the mass whole and the draws cover
the rest (`draw(active ∪ near)`), a stratified estimate (there, 30 near: −0.1 ± 0.2). The store catches
the rows read up to the present step.
"""

from __future__ import annotations

import math

import torch

from dcs_cli.seeds import stream_seed

AUTO_TAIL_SAMPLES = 64  # draws per step for angular heads (selection.tail_samples = -1)
AUTO_TAIL_NEAR = 30  # next-nearest classes per sample taken whole, with the draws on (selection.tail_near = -1)


def resolve_tail_samples(tail_samples: int, metric: str, selects_all: bool = False) -> int:
    """`selection.tail_samples`, with -1 (auto) resolved by the head: margin heads (angular metric) need the
    estimate, the softmax head trains better without it (README, "Margin heads under sampling"). 0 when the
    selector takes every class (full mode): there is no inactive class to stand for."""
    if selects_all:
        return 0
    if tail_samples >= 0:
        return tail_samples
    return AUTO_TAIL_SAMPLES if metric == "angular" else 0


def resolve_tail_near(tail_near: int, tail_samples: int) -> int:
    """`selection.tail_near` with -1 (auto) resolved: AUTO_TAIL_NEAR where the estimate is on (`tail_samples`
    as resolved), else 0."""
    if tail_samples <= 0:
        return 0
    return AUTO_TAIL_NEAR if tail_near < 0 else tail_near


class TailSampler:
    """`ids, log_weight = TailSampler(N, k, seed).draw(active)`: k uniform draws from the ids not in `active`,
    and log((N - |active|) / k), the log-weight that turns their exp-logits into an estimate of the sum over
    every inactive class."""

    def __init__(self, num_classes: int, k: int, seed: int = 0):
        self.num_classes, self.k = num_classes, k
        self.gen = torch.Generator().manual_seed(stream_seed(seed, "tail"))  # apart from the fill's

    def reseed(self, seed: int) -> None:
        """Restart the draws from `seed` (the training loop does at each epoch, as for the random fill)."""
        self.gen.manual_seed(stream_seed(seed, "tail"))

    def draw(self, active: torch.Tensor) -> tuple[torch.Tensor, float]:
        active = active.cpu().long()
        rest = self.num_classes - int(torch.unique(active).numel())
        if rest <= 0:
            return torch.empty(0, dtype=torch.long), 0.0
        if rest <= self.k or rest * 4 < self.num_classes:  # few inactive left: list them (O(N), N small here)
            mask = torch.ones(self.num_classes, dtype=torch.bool)
            mask[active] = False
            inactive = mask.nonzero().squeeze(1)
            if rest <= self.k:
                return inactive, 0.0
            return inactive[torch.randint(rest, (self.k,), generator=self.gen)], math.log(rest / self.k)
        picked: list[torch.Tensor] = []
        have = 0
        while have < self.k:  # rejection: at least a quarter of the draws are inactive
            cand = torch.randint(self.num_classes, (2 * self.k,), generator=self.gen)
            cand = cand[~torch.isin(cand, active)]
            picked.append(cand)
            have += cand.numel()
        return torch.cat(picked)[: self.k], math.log(rest / self.k)


def rows_past_active(tail: TailSampler | None, sel) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`near, drawn, log_weight`: the rows a step reads past its active ones (`sel`, a Selection) for the
    inactive mass: the selection's near classes, then `tail`'s draws among the rest (none without a tail)."""
    if tail is None:
        return sel.ids[:0], sel.ids[:0], 0.0
    near = sel.near if sel.near is not None else sel.ids[:0]
    drawn, log_weight = tail.draw(torch.cat([sel.ids, near]))
    return near, drawn.to(sel.ids.device), log_weight


def tail_log_mass(logits: torch.Tensor, near: int, log_weight: float) -> torch.Tensor:
    """(B,) log of the estimated sum of exp-logits over the inactive classes, from the B×(near + k) logits of
    the rows `rows_past_active` gave: the first `near` columns taken whole, the k drawn ones scaled by
    exp(log_weight); -inf where there are none (no inactive class)."""
    mass = logits.new_full((logits.shape[0],), float("-inf"))
    if logits.shape[1] > near:
        mass = torch.logsumexp(logits[:, near:], 1) + log_weight
    if near:
        mass = torch.logaddexp(mass, torch.logsumexp(logits[:, :near], 1))
    return mass
