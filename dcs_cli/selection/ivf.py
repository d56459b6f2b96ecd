"""A two-level index over the class weights: spherical k-means lists, then exact scores of the live rows.

    >>> import torch
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = LocalStore(num_classes=1000, dim=16, init_std=1.0)
    >>> selector = IvfSelector(1000, sample_num=64, batch_size=8, nprobe=4, background=False)
    >>> selector.attach(store)                      # the first lists, built synchronously
    >>> features = 2 * store.weights()[:8]          # sample i lies on class i's row
    >>> selector.neighbours(features, 1)[:, 0].tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> sel = selector.select(features, torch.arange(500, 508))
    >>> sel.ids[:10].tolist(), sel.stats["retrieved"]
    ([500, 501, 502, 503, 504, 505, 506, 507, 0, 1], 56)

Level one (stale, refreshed every `interval` steps): the rows are grouped into `lists` inverted lists by
spherical k-means (each list a unit centroid; a row belongs to the centroid with the highest cosine).
Level two (live, every step): each sample probes the `nprobe` lists whose centroids point most nearly its
way, and every row of those lists is scored exactly (x·w + b for dot, the cosine for angular) against
the store's current rows. So between refreshes only a row's list is stale, never its score: no re-rank
is needed (`rerank` and `index_dim` do not apply), and a moved row is still found while it stays near
its list's centroid.

Why spherical (cosine) lists, for both metrics: L2 k-means on high-dimensional rows with fine structure
(many small groups of look-alike classes) leaves near-origin centroids that collect the rows of every
group without a centroid of its own, and such a list scores low against any query, so those rows are
never probed. Unit centroids have no such attractor. Measured on the select-speed bench's rows (N=100k,
~1,000 lists, 4 probes): L2 lists recall 0.56 of the top-40, spherical lists 0.95+.

Why small lists (LIST_SIZE rows): a list must hold few groups of look-alikes, or a group's rows scatter
over many lists whose centroids the group barely moves (at 1M rows, 1,024 lists of ~1,000 rows: recall
0.35-0.5); and a step reads B × nprobe × LIST_SIZE rows, not B × nprobe × N / lists.

Refresh: a full build (first, and every `rebuild_every`-th refresh) is k-means on a row sample, then
every row assigned: flat (N×lists×d) up to FLAT_LISTS lists, above that two levels with a beam (see
build_lists), since a flat assignment to 10,000 lists costs minutes at 1M rows. The refreshes between
are incremental: the rows selected since the last one (the rows gradients moved; the others only drift
along their decaying momentum when caught up) move to the best of
their list's NEARBY nearest lists, and each centroid becomes its members' mean (a Lloyd round).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dcs_cli.errors import ConfigError
from dcs_cli.selection.index_selector import IndexSelector

LIST_SIZE = 100  # rows per list when selection.ivf_lists = 0 (auto)
MIN_LIST = 32  # rows per list at least: small stores get fewer lists, so a probe still yields candidates
FLAT_LISTS = 1024  # up to this many lists every row is scored against every centroid; above, two levels
BEAM = 16  # two-level build: coarse groups searched for each row's fine list. Measured at 1M rows, 10k lists,
# nprobe 8: beam 4 recall 0.85, 8: 0.91, 16: 0.95 (the build costs N × (groups + BEAM × per group) × d)
NEARBY = 32  # lists a changed row may move to at a refresh: its own list's nearest (see reassign)
SAMPLE_PER_LIST = 16  # k-means training rows per centroid
CHUNK = 16384  # rows per product in the chunked passes over all rows


@dataclass
class InvertedLists:
    """Unit centroids (C×d), each row's list (`owner`, N), the row ids of each list
    (`order[offsets[c]:offsets[c + 1]]`) and each list's NEARBY nearest lists (`near`, C×NEARBY)."""

    centroids: torch.Tensor
    owner: torch.Tensor
    order: torch.Tensor
    offsets: torch.Tensor
    near: torch.Tensor

    @classmethod
    def from_owner(cls, centroids: torch.Tensor, owner: torch.Tensor, near: torch.Tensor) -> InvertedLists:
        order = owner.argsort(stable=True)
        offsets = torch.zeros(centroids.shape[0] + 1, dtype=torch.long)
        offsets[1:] = torch.bincount(owner, minlength=centroids.shape[0]).cumsum(0)
        return cls(centroids, owner, order, offsets, near)

    @property
    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


def unit_sample(rows: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` seeded rows (all when fewer), normalised: what spherical k-means trains on."""
    pick = torch.randperm(rows.shape[0], generator=gen)[:count]
    return F.normalize(rows.index_select(0, pick).to(torch.float32), dim=1)


def spherical_kmeans(sample: torch.Tensor, lists: int, iters: int, init: torch.Tensor | None = None) -> torch.Tensor:
    """Unit centroids (lists×d) of unit rows `sample` after `iters` rounds; warm-started from `init` (the
    previous centroids) when given, which needs at most one round: it keeps the centroids following the rows."""
    if init is not None and init.shape == (lists, sample.shape[1]):
        cents, iters = init.clone(), min(iters, 1)
    else:  # the first sample rows (repeated when there are fewer rows than lists)
        cents = sample[torch.arange(lists) % sample.shape[0]].clone()
    for _ in range(iters):
        nearest = (sample @ cents.T).argmax(1)
        sums = torch.zeros_like(cents).index_add_(0, nearest, sample)
        filled = torch.bincount(nearest, minlength=lists) > 0
        cents = torch.where(filled.unsqueeze(1), F.normalize(sums, dim=1), cents)  # empty lists keep theirs
    return cents


def assign(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each row's list: the unit centroid with the highest dot product (= cosine), chunked over rows."""
    out = torch.empty(rows.shape[0], dtype=torch.long)
    for start in range(0, rows.shape[0], CHUNK):
        out[start:start + CHUNK] = (rows[start:start + CHUNK].to(torch.float32) @ centroids.T).argmax(1)
    return out


def nearby_lists(centroids: torch.Tensor, m: int) -> torch.Tensor:
    """Each list's `m` most aligned lists (itself first), chunked: C×m."""
    m = min(m, centroids.shape[0])
    return torch.cat([(centroids[s:s + 4096] @ centroids.T).topk(m, dim=1).indices
                      for s in range(0, centroids.shape[0], 4096)])


def member_means(rows: torch.Tensor, owner: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The Lloyd update: each list's normalised mean of its unit rows (an empty list keeps its centroid)."""
    sums = torch.zeros_like(centroids)
    for start in range(0, rows.shape[0], CHUNK):
        sums.index_add_(0, owner[start:start + CHUNK], F.normalize(rows[start:start + CHUNK].to(torch.float32), dim=1))
    filled = torch.bincount(owner, minlength=centroids.shape[0]) > 0
    return torch.where(filled.unsqueeze(1), F.normalize(sums, dim=1), centroids)


def reassign(owner: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, centroids: torch.Tensor,
             near: torch.Tensor) -> torch.Tensor:
    """`owner` with rows `ids` (now `rows`) moved to the best of their current list's `near` lists: a row
    moves little between refreshes, so its new list is among its old one's neighbours, found at
    NEARBY/C of the cost of a full assignment."""
    owner = owner.clone()
    current = owner[ids]
    order = current.argsort(stable=True)
    ids, grouped = ids[order], rows.index_select(0, order).to(torch.float32)  # one gather, then slices
    lists, counts = torch.unique_consecutive(current[order], return_counts=True)
    moved = torch.empty_like(ids)
    start = 0
    for c, count in zip(lists.tolist(), counts.tolist(), strict=True):
        cand = near[c]
        moved[start:start + count] = cand[(grouped[start:start + count] @ centroids[cand].T).argmax(1)]
        start += count
    owner[ids] = moved
    return owner


def build_lists(rows: torch.Tensor, lists: int, iters: int, seed: int,
                init: torch.Tensor | None = None) -> InvertedLists:
    """Spherical k-means lists over `rows` (N×d), every row assigned: the index one full build produces.

    Up to FLAT_LISTS lists: k-means on a sample (warm-started from `init`, the previous build's centroids,
    when given: one round), then every row against every centroid. Above (`init` unused: `iters` rounds), the
    N×lists×d assignment would cost minutes at 1M rows, so two levels: ~sqrt(lists) coarse groups, each
    split into its own fine lists; every row then takes the best fine list of its BEAM best groups
    (N×(1 + BEAM)·sqrt(lists)×d), and the centroids become their members' means."""
    n = rows.shape[0]
    lists = max(1, min(lists, n))
    gen = torch.Generator().manual_seed(seed)
    if lists <= FLAT_LISTS:
        cents = spherical_kmeans(unit_sample(rows, SAMPLE_PER_LIST * lists, gen), lists, iters, init)
        return InvertedLists.from_owner(cents, assign(rows, cents), nearby_lists(cents, NEARBY))
    groups = round(math.sqrt(lists))
    per = -(-lists // groups)
    coarse = spherical_kmeans(unit_sample(rows, SAMPLE_PER_LIST * groups, gen), groups, iters)
    beam = min(BEAM, groups)
    home = torch.empty(n, beam, dtype=torch.long)  # each row's `beam` best coarse groups
    for start in range(0, n, CHUNK):
        home[start:start + CHUNK] = (rows[start:start + CHUNK].to(torch.float32) @ coarse.T).topk(beam, 1).indices
    group_of = home[:, 0]
    by_group = group_of.argsort(stable=True)
    bounds = torch.zeros(groups + 1, dtype=torch.long)
    bounds[1:] = torch.bincount(group_of, minlength=groups).cumsum(0)
    cents = coarse.repeat_interleave(per, 0)  # a group with too few rows keeps copies of its coarse centroid
    for g in range(groups):  # each group's fine lists, trained on the rows whose best group it is
        ids = by_group[bounds[g]:bounds[g + 1]]
        if len(ids):
            sample = unit_sample(rows.index_select(0, ids), SAMPLE_PER_LIST * per, gen)
            cents[g * per:(g + 1) * per] = spherical_kmeans(sample, per, iters)
    # every row to its best fine list within its `beam` best groups: a row near a group boundary (most
    # rows, in high dimensions) still reaches the list its look-alikes went to
    best = torch.full((n,), float("-inf"))
    owner = torch.zeros(n, dtype=torch.long)
    flat_home = home.reshape(-1)
    by_home = flat_home.argsort(stable=True)
    hb = torch.zeros(groups + 1, dtype=torch.long)
    hb[1:] = torch.bincount(flat_home, minlength=groups).cumsum(0)
    for g in range(groups):
        ids = by_home[hb[g]:hb[g + 1]] // beam
        if len(ids) == 0:
            continue
        score, idx = (rows.index_select(0, ids).to(torch.float32) @ cents[g * per:(g + 1) * per].T).max(1)
        better = score > best[ids]
        best[ids[better]] = score[better]
        owner[ids[better]] = idx[better] + g * per
    cents = member_means(rows, owner, cents)
    return InvertedLists.from_owner(cents, owner, nearby_lists(cents, NEARBY))


class IvfSelector(IndexSelector):
    """`IvfSelector(N, S, B, lists=0, nprobe=4)`: positives plus each sample's exact best rows of its
    `nprobe` nearest lists (lists=0: about one per LIST_SIZE rows)."""

    name = "ivf"
    incremental = True

    def __init__(self, num_classes: int, sample_num: int, batch_size: int, *, lists: int = 0, nprobe: int = 4,
                 iters: int = 3, rebuild_every: int = 10, **kwargs):
        if lists < 0 or nprobe <= 0 or iters < 0 or rebuild_every <= 0:
            raise ConfigError(f"selection.ivf_lists must be >= 0, ivf_nprobe and ivf_rebuild_every > 0 and "
                              f"ivf_iters >= 0, got {lists}, {nprobe}, {rebuild_every}, {iters}")
        # level two scores the live full rows exactly; the base's rebuild-by-fraction rule is replaced by
        # a full build every `rebuild_every` refreshes (see _rebuild_due)
        kwargs.update(index_dim=0, rerank=1, rebuild_fraction=1.0)
        super().__init__(num_classes, sample_num, batch_size, **kwargs)
        lists = lists or max(1, num_classes // LIST_SIZE)
        self.lists, self.nprobe, self.iters = min(lists, max(1, num_classes // MIN_LIST)), nprobe, iters
        self.rebuild_every = rebuild_every
        self._updates = 0  # incremental refreshes since the last full build
        self.rebuild_seconds: list[float] = []  # wall time of each full build (the first included)

    def _build(self, snapshot: np.ndarray, seed: int) -> InvertedLists:
        start = time.perf_counter()
        previous = self.index.centroids if isinstance(self.index, InvertedLists) else None
        lists = build_lists(torch.from_numpy(snapshot), self.lists, self.iters, seed, previous)
        self.rebuild_seconds.append(time.perf_counter() - start)
        return lists

    def _rebuild_due(self, changed: int) -> bool:
        """Every `rebuild_every`-th refresh assigns every row afresh; the others update the changed rows."""
        self._updates += 1
        if self._updates >= self.rebuild_every:
            self._updates = 0
            return True
        return False

    def _update(self, index: InvertedLists, ids: np.ndarray, rows: np.ndarray) -> InvertedLists:
        """An incremental refresh: the changed rows move to the best of their list's nearby lists, then
        every centroid becomes its members' mean (one Lloyd round over the snapshot, which the base has
        brought up to date). The nearby-list graph is kept until the next full build."""
        owner = reassign(index.owner, torch.from_numpy(ids), torch.from_numpy(rows), index.centroids, index.near)
        cents = member_means(torch.from_numpy(self._snap), owner, index.centroids)
        return InvertedLists.from_owner(cents, owner, index.near)

    def _query(self, index: InvertedLists, features: np.ndarray, k: int) -> np.ndarray:
        angular = self._resolved_metric() == "angular"
        feats = torch.from_numpy(features)
        if angular:
            feats = F.normalize(feats, dim=1)
        b = feats.shape[0]
        nprobe = min(self.nprobe, index.centroids.shape[0])
        probes = (feats @ index.centroids.T).topk(nprobe, dim=1).indices  # B×nprobe
        # (sample, probe) pairs grouped by list, so each probed list's rows are gathered and read once
        flat = probes.reshape(-1)
        pair_order = flat.argsort(stable=True)
        pair_list = flat[pair_order]
        probed, pairs_per_list = torch.unique_consecutive(pair_list, return_counts=True)
        sizes = index.sizes[probed]
        first = torch.zeros(len(probed) + 1, dtype=torch.long)
        first[1:] = sizes.cumsum(0)  # where each probed list's rows start among `members`
        total = int(first[-1])
        members = index.order[torch.repeat_interleave(index.offsets[probed] - first[:-1], sizes)
                              + torch.arange(total)]
        rows, bias = self.store.rows(members)  # one gather of the live rows (one request for a remote store)
        rows = rows.to("cpu", torch.float32)
        if angular:
            rows = F.normalize(rows, dim=1)
        sample_of = pair_order // nprobe
        parts, start = [], 0
        for list_start, list_end, count in zip(first[:-1].tolist(), first[1:].tolist(), pairs_per_list.tolist(),
                                               strict=True):
            parts.append((feats[sample_of[start:start + count]] @ rows[list_start:list_end].T).reshape(-1))
            start += count
        scores = torch.cat(parts) if parts else torch.empty(0)
        # each score's place in a B × nprobe × width table (pair-major within a list, as the products are)
        size_of_pair = torch.repeat_interleave(sizes, pairs_per_list)
        row0_of_pair = torch.repeat_interleave(first[:-1], pairs_per_list)
        elem0_of_pair = torch.zeros(len(size_of_pair) + 1, dtype=torch.long)
        elem0_of_pair[1:] = size_of_pair.cumsum(0)
        col = torch.arange(len(scores)) - torch.repeat_interleave(elem0_of_pair[:-1], size_of_pair)
        member_of = torch.repeat_interleave(row0_of_pair, size_of_pair) + col
        if bias is not None and not angular:  # rank as the softmax logits do
            scores += bias.to("cpu", torch.float32)[member_of]
        width = int(sizes.max()) if len(sizes) else 0
        slot = torch.repeat_interleave(sample_of * nprobe + pair_order % nprobe, size_of_pair) * width + col
        table = torch.full((b * nprobe * width,), float("-inf"))
        table[slot] = scores
        kk = min(k, nprobe * width)
        top = table.view(b, -1).topk(kk, dim=1)
        ids = torch.full((b * nprobe * width,), -1, dtype=torch.long)
        ids[slot] = members[member_of]
        out = np.full((b, k), -1, dtype=np.int64)
        out[:, :kk] = ids.view(b, -1).gather(1, top.indices).masked_fill(top.values == float("-inf"), -1).numpy()
        return out

    def stats(self) -> dict:
        out = super().stats()
        if isinstance(self.index, InvertedLists):
            out["ivf_lists"] = int(self.index.centroids.shape[0])
            out["ivf_max_list"] = int(self.index.sizes.max())
        return out
