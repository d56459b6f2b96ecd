"""Shared machinery of the index selectors (hf = Annoy, hnsw): refresh scheduling, background builds,
drift measurement and the adaptive share of neighbours.

    sel = HnswSelector(...); sel.attach(store)          # first index, built synchronously and timed
    s = sel.select(features, labels)                    # query the serving index, compose S ids
    sel.refresh(store, step)                            # maybe start a refresh; never waits for one

Refresh: a snapshot of the weights is taken in the caller's thread (a memcpy), the index is built or
updated from it in a background thread, and the result is swapped in by the next `select`/`refresh`
once ready; the old index serves meanwhile. Every refresh's wall time is recorded (`stats`).

Adaptive mode (the paper's scheme, our reading of it):
  (a) drift-triggered refresh: every `drift_check` steps, estimate
        drift = ||W_now - W_snap||_F / ||W_snap||_F
      from up to 4096 sampled rows among those selected (hence updated) since the snapshot, scaled by
      their count; a refresh starts when drift >= `drift_threshold` (instead of every `interval` steps).
  (b) hard samples get more of `sample_num`: each sample's candidates (hard_factor × the even share)
      are rescored against the current rows; hardness = best negative score − positive score; shares
      are softmax(hardness / std) × (B × even share), clamped to [even/2, hard_factor × even].
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from dcs_cli.errors import ConfigError, DcsError
from dcs_cli.selection.base import Selection, Selector
from dcs_cli.selection.compose import check_batch, compose
from dcs_cli.selection.store import ClassStore

DRIFT_SAMPLE = 4096


class IndexSelector(Selector):
    """Base of selectors that query an approximate-nearest-neighbour index over the class weights."""

    incremental = False  # True: refresh updates only the rows changed since the last snapshot

    def __init__(self, num_classes: int, sample_num: int, batch_size: int, *, interval: int = 100,
                 seed: int = 0, metric: str = "auto", adaptive: bool = False, drift_threshold: float = 0.05,
                 drift_check: int = 10, hard_factor: float = 2.0, background: bool = True, jobs: int = -1):
        if sample_num > num_classes:
            raise ConfigError(f"selection.sample_num={sample_num} exceeds the {num_classes} classes; "
                              "lower it or use selection.mode=full")
        self.num_classes, self.sample_num, self.batch_size = num_classes, sample_num, batch_size
        self.k = sample_num // batch_size + 1  # per-sample neighbours, as in the original code
        self.interval, self.seed, self.metric = interval, seed, metric
        self.adaptive, self.drift_threshold, self.drift_check = adaptive, drift_threshold, drift_check
        self.hard_factor, self.background, self.jobs = hard_factor, background, jobs
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
        self.last_drift = 0.0

    # ----------------------------------------------------------------------------- backend hooks
    @abstractmethod
    def _build(self, snapshot: np.ndarray):
        """A new index over all rows of `snapshot` (N×d float32)."""

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
            self._snap = store.weights().detach().to(torch.float32).numpy().copy()
            self._snap_norm2 = float(np.square(self._snap).sum()) or 1.0
            self._dirty = torch.zeros(self.num_classes, dtype=torch.bool)
            self.index = self._build(self._snap)
            self.build_seconds = time.perf_counter() - start
            self.index_step = self._snap_step = self.step

    # ---------------------------------------------------------------------------------- selection
    def neighbours(self, features: torch.Tensor, k: int) -> torch.Tensor:
        self._poll()
        if self.index is None:
            raise DcsError(f"{self.name} selection has no index yet: call attach(store) before select")
        feats = features.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self._query(self.index, np.ascontiguousarray(feats), k).astype(np.int64))

    def select(self, features: torch.Tensor, labels: torch.Tensor) -> Selection:
        check_batch(features, labels, self.num_classes)
        if self.adaptive:
            cand, share = self._adaptive_candidates(features, labels)
        else:
            cand, share = self.neighbours(features, self.k), None
        sel = compose(labels, cand.T.reshape(-1), self.sample_num, self.num_classes, self.generator)
        self._dirty[sel.ids] = True
        sel.stats.update(self.stats())
        if share is not None:
            sel.stats["share_min"], sel.stats["share_max"] = int(share.min()), int(share.max())
        return sel

    def _adaptive_candidates(self, features: torch.Tensor, labels: torch.Tensor):
        kmax = max(self.k, int(round(self.hard_factor * self.k)))
        cand = self.neighbours(features, kmax)  # B×kmax
        valid = cand >= 0
        w, _ = self.store.rows(cand.clamp(min=0).reshape(-1))
        wpos, _ = self.store.rows(labels)
        feats = features.detach().to("cpu", torch.float32)
        w, wpos = w.to("cpu").view(*cand.shape, -1), wpos.to("cpu")
        if self._resolved_metric() == "angular":
            feats, w, wpos = F.normalize(feats, dim=1), F.normalize(w, dim=2), F.normalize(wpos, dim=1)
        scores = torch.einsum("bd,bkd->bk", feats, w)
        scores[~valid | (cand == labels.view(-1, 1).to(cand.device))] = float("-inf")
        pos = (feats * wpos).sum(1)
        hardness = scores.max(1).values - pos
        hardness = torch.nan_to_num(hardness, neginf=float(hardness[torch.isfinite(hardness)].min())
                                    if torch.isfinite(hardness).any() else 0.0)
        temp = hardness.std().clamp(min=1e-6) if hardness.numel() > 1 else torch.tensor(1.0)
        weights = torch.softmax(hardness / temp, 0)
        share = (weights * self.k * len(labels)).round().long().clamp(max(1, self.k // 2), kmax)
        order = scores.argsort(1, descending=True)
        cand = cand.gather(1, order)
        ranks = torch.arange(kmax).view(1, -1)
        cand = torch.where((ranks < share.view(-1, 1)) & valid.gather(1, order), cand, torch.full_like(cand, -1))
        return cand, share

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
                self.last_drift = self._measure_drift()
                if self.last_drift >= self.drift_threshold:
                    self._start_refresh()
        elif since >= self.interval:
            self._start_refresh()

    def _measure_drift(self) -> float:
        dirty = self._dirty.nonzero().squeeze(1)
        if dirty.numel() == 0:
            return 0.0
        pick = dirty[torch.randperm(dirty.numel(), generator=self.generator)[:DRIFT_SAMPLE]]
        now, _ = self.store.rows(pick)
        delta = now.to("cpu").numpy() - self._snap[pick.numpy()]
        moved2 = float(np.square(delta).sum()) * dirty.numel() / pick.numel()
        return (moved2 / self._snap_norm2) ** 0.5

    def _start_refresh(self) -> None:
        start = time.perf_counter()
        if self.incremental:
            ids = self._dirty.nonzero().squeeze(1)
            rows = self.store.rows(ids)[0].detach().to("cpu", torch.float32).numpy()
            self._snap[ids.numpy()] = rows
            job = (self._update, (self.index, ids.numpy(), rows))
        else:
            self._snap = self.store.weights().detach().to(torch.float32).numpy().copy()
            job = (self._build, (self._snap,))
        self._dirty.zero_()
        self._snap_step = self.step
        snap_seconds = time.perf_counter() - start

        def run():
            t0 = time.perf_counter()
            try:
                norm2 = float(np.square(self._snap).sum()) or 1.0
                self._result = (job[0](*job[1]), norm2, snap_seconds + time.perf_counter() - t0)
            except BaseException as exc:  # reported in the training thread by _poll
                self._error = exc

        if self.background:
            self._thread = threading.Thread(target=run, name=f"dcs-{self.name}-refresh", daemon=True)
            self._thread.start()
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
            self.index, self._snap_norm2, seconds = self._result
            self._result = None
            self.index_step = self._snap_step
            self.refreshes += 1
            self.refresh_seconds.append(seconds)

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
