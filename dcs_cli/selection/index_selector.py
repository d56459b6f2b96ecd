"""The base of the index selectors (hf = Annoy, hnsw, ivf): query the serving index, compose the active
set, and keep the index fresh without stalling the step.

    >>> import torch
    >>> from dcs_cli.selection.ivf import IvfSelector
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> store = LocalStore(num_classes=1000, dim=16, init_std=1.0)
    >>> selector = IvfSelector(1000, sample_num=64, batch_size=8, interval=2, background=False)
    >>> selector.attach(store)                            # the first index, built synchronously and timed
    >>> sel = selector.select(torch.randn(8, 16), torch.arange(8))
    >>> sel.ids.numel(), sel.stats["positives"], sel.stats["index_age"]
    (64, 8, 0)
    >>> store.push(sel.ids, torch.randn(64, 16))
    >>> for step in (1, 2):
    ...     selector.refresh(store, step)                 # due every `interval` steps; never waits for one
    >>> selector.refreshes, selector.index_step
    (1, 2)

Schedule: a refresh starts every `interval` steps, or, in adaptive mode, when the rows drifted past
`drift_threshold` (measured every `drift_check` steps, see drift.py). When `rerank` > 1 or the index
holds a projection (`index_dim`), a query retrieves `rerank` × k candidates and keeps the k best by their
exact score (rerank.py); adaptive mode also gives hard samples a larger share of `sample_num`
(adaptive_share.py).

Refresh: in the caller's thread the store first settles (rows that sat out steps catch up), then a
full build only takes `store.weights()` (a live view for a CPU LocalStore: no N-sized copy stalls the
step); the background thread fits the projection, reads the rows into the index's own (reduced,
`index_dim`) snapshot chunk by chunk and builds. Rows the trainer updates while that read is under way
may land in the snapshot at either their old or new value — harmless for an approximate index, and the
re-rank scores the live rows anyway. Incremental backends (hnsw, ivf) instead read the rows selected
since the last snapshot in the caller's thread and update the index with them in the background, unless
their `_rebuild_due` rule (hnsw: more than `rebuild_fraction` of N changed; ivf: every `rebuild_every`-th
refresh) calls for a full build. The result is swapped in by the next `select`/`refresh` once ready;
the old index serves meanwhile. Every refresh's wall time, and the part of it spent in the caller's
thread, is recorded. `background=False` refreshes in place instead (deterministic; the step waits).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from abc import abstractmethod

import numpy as np
import torch

from dcs_cli.errors import ConfigError, DcsError
from dcs_cli.selection.adaptive_share import max_share, share_by_hardness
from dcs_cli.selection.base import Selection, Selector, check_sample_num
from dcs_cli.selection.compose import check_batch, compose
from dcs_cli.selection.drift import sum_squares, weight_drift
from dcs_cli.selection.projection import Projection
from dcs_cli.selection.rerank import exact_rerank
from dcs_cli.selection.store import ClassStore

# Selectors that started a background refresh; weak, so a selector still goes when its last user drops it
_REFRESHING: weakref.WeakSet[IndexSelector] = weakref.WeakSet()


@atexit.register
def _join_refreshes() -> None:
    """Interpreter exit waits for in-flight refreshes (a run that never called `close`): a refresh thread
    frozen at exit inside hnswlib's or Annoy's native build threads aborts the process."""
    for selector in list(_REFRESHING):
        selector.close()


class IndexSelector(Selector):
    """Base of selectors that query an approximate-nearest-neighbour index over the class weights."""

    incremental = False  # True: refresh updates only the rows changed since the last snapshot

    def __init__(self, num_classes: int, sample_num: int, batch_size: int, *, interval: int = 100,
                 seed: int = 0, metric: str = "auto", adaptive: bool = False, drift_threshold: float = 0.05,
                 drift_check: int = 10, hard_factor: float = 2.0, background: bool = True, jobs: int = -1,
                 index_dim: int = 0, rerank: int = 1, rebuild_fraction: float = 0.5, query_jobs: int = -1):
        check_sample_num(sample_num, num_classes)
        if query_jobs == 0 or query_jobs < -1:
            raise ConfigError(f"selection.query_jobs must be -1 (torch's thread count) or > 0, got {query_jobs}")
        self.query_jobs = query_jobs
        self.num_classes, self.sample_num, self.batch_size = num_classes, sample_num, batch_size
        self.k = sample_num // batch_size + 1  # per-sample neighbours, as in the original code
        self.interval, self.seed, self.metric = interval, seed, metric
        self.adaptive, self.drift_threshold, self.drift_check = adaptive, drift_threshold, drift_check
        self.hard_factor, self.background, self.jobs = hard_factor, background, jobs
        if index_dim < 0 or rerank < 1 or not 0 <= rebuild_fraction <= 1:
            raise ConfigError("selection.index_dim must be >= 0, selection.rerank >= 1 and "
                              "selection.hnsw_rebuild_fraction in [0, 1]")
        self.index_dim, self.rerank, self.rebuild_fraction = index_dim, rerank, rebuild_fraction
        self.proj = Projection(None, False)  # the serving index's projection (identity until attach)
        self.generator = torch.Generator().manual_seed(seed)
        self.store: ClassStore | None = None
        self.index = None
        self.index_step = 0  # step of the snapshot the serving index was built from
        self._snap_step = 0  # step of the latest snapshot (serving or being built)
        self._snap: np.ndarray | None = None  # weights as of the latest snapshot (drift reference)
        self._snap_norm2 = 1.0
        self._dirty: torch.Tensor | None = None  # rows selected since the latest snapshot
        self._thread: threading.Thread | None = None
        self._result = None
        self._error: BaseException | None = None
        self.step = 0
        self.build_seconds = 0.0
        self.refreshes = 0
        self.refresh_seconds: list[float] = []
        self.stall_seconds: list[float] = []  # the part of each refresh spent in the caller's thread
        self.rebuilds = 0  # refreshes that built afresh (always, for non-incremental backends)
        self.last_drift = 0.0

    # ----------------------------------------------------------------------------- backend hooks
    @abstractmethod
    def _build(self, snapshot: np.ndarray, seed: int):
        """A new index over all rows of `snapshot` (N×d float32); `seed` is this build's (`build_seed`)."""

    def _update(self, index, ids: np.ndarray, rows: np.ndarray):
        """Incremental backends: replace rows `ids` of `index` in place; returns the index."""
        raise TypeError(f"{self.name} has no incremental update")

    @abstractmethod
    def _query(self, index, features: np.ndarray, k: int) -> np.ndarray:
        """B×k int64 neighbour ids, best first, -1 where the index returned fewer."""

    # ----------------------------------------------------------------------------------- set-up
    def set_metric(self, metric: str) -> None:
        if self.metric == "auto":
            self.metric = metric

    def query_threads(self, rows: int) -> int:
        """Threads a query of `rows` samples may use: `selection.query_jobs`, by default as many as torch uses
        for the step's own math (the step's CPU budget), never more than the rows."""
        return max(1, min(self.query_jobs if self.query_jobs > 0 else torch.get_num_threads(), rows))

    def build_seed(self, refreshes: int | None = None) -> int:
        """The seed of the index built after `refreshes` refreshes (default: so far): a run resumed with its
        refresh count (the checkpoint's) builds its first index as the uninterrupted run built that one."""
        return self.seed + (self.refreshes if refreshes is None else refreshes)

    def _resolved_metric(self) -> str:
        return "dot" if self.metric == "auto" else self.metric

    def attach(self, store: ClassStore) -> None:
        """Build the first index synchronously (nothing to serve yet); its time is `build_seconds`."""
        if store.num_classes != self.num_classes:
            raise ConfigError(f"selector was built for {self.num_classes} classes, the store has "
                              f"{store.num_classes}")
        self.store = store
        if self.index is None:
            start = time.perf_counter()
            weights = store.weights().detach()
            seed = self.build_seed()
            self.proj = Projection.fit(weights, self.index_dim, self._resolved_metric(), seed)
            self._snap = self.proj.apply(weights)
            self._snap_norm2 = sum_squares(self._snap) or 1.0
            self._dirty = torch.zeros(self.num_classes, dtype=torch.bool)
            self.index = self._build(self._snap, seed)
            self.build_seconds = time.perf_counter() - start
            self.index_step = self._snap_step = self.step

    # ---------------------------------------------------------------------------------- selection
    def neighbours(self, features: torch.Tensor, k: int) -> torch.Tensor:
        self._poll()
        if self.index is None:
            raise DcsError(f"{self.name} selection has no index yet: call attach(store) before select")
        feats = features.detach().to("cpu", torch.float32)
        kq = min(k * self.rerank, self.num_classes)
        cand = self._query(self.index, np.ascontiguousarray(self.proj.apply(feats)), kq)
        cand = torch.from_numpy(cand.astype(np.int64))
        if self.rerank > 1 or not self.proj.identity:
            cand = exact_rerank(feats, cand, k, self.store, self._resolved_metric())
        return cand

    def select(self, features: torch.Tensor, labels: torch.Tensor) -> Selection:
        check_batch(features, labels, self.num_classes)
        if self.adaptive:  # the candidates a sample's share leaves out are near classes too
            kmax = min(max_share(self.k, self.hard_factor), self.num_classes)  # no more than there are classes
            found = self.neighbours(features, kmax + self.near)
            cand, share = share_by_hardness(found[:, :kmax], features, labels, self.store,
                                            self._resolved_metric(), self.k, kmax)
            near = found if self.near else None
        else:  # one query for the kept neighbours and the `near` ones past them
            cand, share = self.neighbours(features, self.k + self.near), None
            cand, near = cand[:, : self.k], (cand[:, self.k:] if self.near else None)
        sel = compose(labels, cand.T.reshape(-1), self.sample_num, self.num_classes, self.generator, near,
                      self.random_share)
        self._dirty[sel.ids] = True
        sel.stats.update(self.stats())
        if share is not None:
            sel.stats["share_min"], sel.stats["share_max"] = int(share.min()), int(share.max())
        return sel

    # ------------------------------------------------------------------------------------ refresh
    def refresh(self, store: ClassStore, step: int) -> None:
        """Start a refresh when due (every `interval` steps, or on drift when adaptive); never waits."""
        self.step = step
        if self.store is None or self.index is None:
            self.attach(store)
        self.store = store
        self._poll()
        if self._thread is not None:
            return
        since = step - self._snap_step
        if self.adaptive:
            if since > 0 and since % self.drift_check == 0:
                self.last_drift = weight_drift(self.store, self.proj, self._snap, self._snap_norm2, self._dirty,
                                               self.generator)
                if self.last_drift >= self.drift_threshold:
                    self._start_refresh()
        elif since >= self.interval:
            self._start_refresh()

    def _rebuild_due(self, changed: int) -> bool:
        """Whether this refresh builds afresh rather than updating the `changed` rows (incremental backends)."""
        return not self.incremental or changed > self.rebuild_fraction * self.num_classes

    def _start_refresh(self) -> None:
        start = time.perf_counter()
        # Rows that sat out steps catch up first, so the index sees every row as of this step (and a run
        # resumed from a checkpoint, whose rows are caught up, rebuilds the very same index).
        self.store.settle()
        changed = int(self._dirty.sum())
        rebuilt = self._rebuild_due(changed)
        if not rebuilt:
            ids = self._dirty.nonzero().squeeze(1)
            rows = self.proj.apply(self.store.rows(ids)[0])
            self._snap[ids.numpy()] = rows
            index, proj, snap = self.index, self.proj, self._snap

            def job():
                return self._update(index, ids.numpy(), rows), proj, snap
        else:
            weights = self.store.weights().detach()  # a live view on a CPU store: read in the thread
            metric, seed = self._resolved_metric(), self.build_seed(self.refreshes + 1)

            def job():
                proj = Projection.fit(weights, self.index_dim, metric, seed)
                snap = proj.apply(weights)
                return self._build(snap, seed), proj, snap
        self._dirty.zero_()
        self._snap_step = self.step
        stall = time.perf_counter() - start

        def run():
            t0 = time.perf_counter()
            try:
                index, proj, snap = job()
                norm2 = sum_squares(snap) or 1.0
                self._result = (index, proj, snap, norm2, stall + time.perf_counter() - t0, stall, rebuilt)
            except BaseException as exc:  # reported in the training thread by _poll
                self._error = exc

        if self.background:
            self._thread = threading.Thread(target=run, name=f"dcs-{self.name}-refresh", daemon=True)
            self._thread.start()
            _REFRESHING.add(self)
        else:
            run()
            self._swap()

    def _poll(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            self._thread.join()
            self._thread = None
            self._swap()

    def _swap(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise DcsError(f"{self.name} index refresh failed: {err}") from err
        if self._result is not None:
            self.index, self.proj, self._snap, self._snap_norm2, seconds, stall, rebuilt = self._result
            self._result = None
            self.index_step = self._snap_step
            self.refreshes += 1
            self.rebuilds += int(rebuilt)
            self.refresh_seconds.append(seconds)
            self.stall_seconds.append(stall)

    def wait(self) -> None:
        """Block until an in-flight refresh is done and swapped in (tests, benchmarks, checkpoints)."""
        if self._thread is not None:
            self._thread.join()
        self._poll()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stats(self) -> dict:
        return {
            "index_age": self.step - self.index_step,
            "refreshes": self.refreshes,
            "refresh_seconds": float(sum(self.refresh_seconds)),
            "refresh_stall_seconds": float(sum(self.stall_seconds)),
            "rebuilds": self.rebuilds,
            "build_seconds": self.build_seconds,
            "refreshing": self._thread is not None,
            "drift": self.last_drift,
        }

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.step = int(state.get("step", self.step))
