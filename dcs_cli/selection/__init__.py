"""Dynamic class selection: which classes each mini-batch trains, over which class store.

    selector = build_selector(cfg.selection, num_classes, batch_size)
    sampled = SampledSoftmax(selector, LocalStore(N, d), build_head(cfg.head))

Registry: a new selector is one module plus one line in `SELECTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dcs_cli.errors import ConfigError
from dcs_cli.selection.base import Selection, Selector

if TYPE_CHECKING:  # a runtime import would be circular: dcs_cli.config imports this package's config
    from dcs_cli.selection.config import SelectionConfig


def _full(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.full import FullSelector
    return FullSelector(n, cfg.metric)


def _random(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.random_sel import RandomSelector
    return RandomSelector(n, cfg.sample_num, cfg.seed)


def _exact(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.exact import ExactSelector
    return ExactSelector(n, cfg.sample_num, b, cfg.seed, cfg.metric)


def _index_kwargs(cfg: SelectionConfig) -> dict:
    return dict(interval=cfg.interval, seed=cfg.seed, metric=cfg.metric, adaptive=cfg.adaptive,
                drift_threshold=cfg.drift_threshold, drift_check=cfg.drift_check, hard_factor=cfg.hard_factor,
                background=cfg.background, jobs=cfg.build_jobs, index_dim=cfg.index_dim, rerank=cfg.rerank)


def _hf(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.annoy_hf import AnnoySelector
    return AnnoySelector(n, cfg.sample_num, b, ntrees=cfg.ntrees, search_k=cfg.search_k,
                         query_jobs=cfg.query_jobs, **_index_kwargs(cfg))


def _hnsw(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.hnsw import HnswSelector
    return HnswSelector(n, cfg.sample_num, b, m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                        ef=cfg.hnsw_ef, rebuild_fraction=cfg.hnsw_rebuild_fraction, **_index_kwargs(cfg))


def _ivf(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.ivf import IvfSelector
    return IvfSelector(n, cfg.sample_num, b, lists=cfg.ivf_lists, nprobe=cfg.ivf_nprobe, iters=cfg.ivf_iters,
                       rebuild_every=cfg.ivf_rebuild_every, **_index_kwargs(cfg))


SELECTORS: dict[str, Callable[[SelectionConfig, int, int], Selector]] = {
    "full": _full,
    "random": _random,
    "exact": _exact,
    "hf": _hf,
    "hnsw": _hnsw,
    "ivf": _ivf,
}


def build_selector(cfg: SelectionConfig, num_classes: int, batch_size: int) -> Selector:
    """The selector `cfg.mode` names, checked against the number of classes and the batch size."""
    if cfg.mode not in SELECTORS:
        raise ConfigError(f"selection.mode={cfg.mode!r} is not one of {', '.join(SELECTORS)}")
    if num_classes <= 0 or batch_size <= 0:
        raise ConfigError(f"selection needs num_classes > 0 and batch_size > 0, got {num_classes}, {batch_size}")
    cfg.validate("selection")
    if cfg.mode != "full" and cfg.sample_num > num_classes:
        raise ConfigError(f"selection.sample_num={cfg.sample_num} exceeds the {num_classes} classes; "
                          "lower it or use selection.mode=full")
    return SELECTORS[cfg.mode](cfg, num_classes, batch_size)


__all__ = ["SELECTORS", "Selection", "Selector", "build_selector"]
