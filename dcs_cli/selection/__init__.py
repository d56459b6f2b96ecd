"""Dynamic class selection: which classes each mini-batch trains, over which class store.

`build_selector` turns the `selection:` config section into the selector `selection.mode` names, checked
against the number of classes and the batch size:

    >>> import torch
    >>> from dcs_cli.selection.config import SelectionConfig
    >>> selector = build_selector(SelectionConfig(mode="random", sample_num=8), num_classes=100, batch_size=4)
    >>> sel = selector.select(torch.zeros(4, 16), torch.tensor([3, 3, 50, 7]))
    >>> sel.ids.numel(), sel.ids[:3].tolist(), sel.local_labels.tolist()
    (8, [3, 7, 50], [0, 0, 2, 1])
    >>> too_many = SelectionConfig(mode="random", sample_num=800)
    >>> build_selector(too_many, num_classes=100, batch_size=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dcs_cli.errors.ConfigError: selection.sample_num = 800 exceeds the 100 classes; lower it or use ...

Training wraps the selector with a class store and a head in `SampledSoftmax` (sampled.py), which
attaches the store to it and calls its `refresh(store, step)` after each update of the rows.

Adding a selector: write its module (a `Selector` subclass, see base.py) and add one `SelectorEntry` to
`SELECTORS` below: its builder and a one-line description. The registry is the one list of modes:
`selection.mode`'s valid values and its help (config.py) are derived from it, and so is the check of a
mode name here. Options of its own are fields of `SelectionConfig` (selection/config.py), which the
builder passes on. The help of `dcs train --mode` (cli/train.py) lists the modes in its own words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dcs_cli.errors import ConfigError
from dcs_cli.selection.base import Selection, Selector, check_sample_num

if TYPE_CHECKING:  # a runtime import would be circular: selection/config.py derives its modes from SELECTORS
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
                background=cfg.background, jobs=cfg.build_jobs, index_dim=cfg.index_dim, rerank=cfg.rerank,
                query_jobs=cfg.query_jobs)


def _hf(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.annoy_hf import AnnoySelector
    return AnnoySelector(n, cfg.sample_num, b, ntrees=cfg.ntrees, search_k=cfg.search_k, **_index_kwargs(cfg))


def _hnsw(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.hnsw import HnswSelector
    return HnswSelector(n, cfg.sample_num, b, m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                        ef=cfg.hnsw_ef, rebuild_fraction=cfg.hnsw_rebuild_fraction, **_index_kwargs(cfg))


def _ivf(cfg: SelectionConfig, n: int, b: int) -> Selector:
    from dcs_cli.selection.ivf import IvfSelector
    return IvfSelector(n, cfg.sample_num, b, lists=cfg.ivf_lists, nprobe=cfg.ivf_nprobe, iters=cfg.ivf_iters,
                       rebuild_every=cfg.ivf_rebuild_every, **_index_kwargs(cfg))


@dataclass(frozen=True)
class SelectorEntry:
    """One `selection.mode`: `build(cfg, num_classes, batch_size)` makes its selector (importing its module
    only then); `help` describes it in `selection.mode`'s help; `adaptive`: whether it honours
    `selection.adaptive` (the index selectors)."""

    build: Callable[[SelectionConfig, int, int], Selector]
    help: str
    adaptive: bool = False


# The order is the order `selection.mode`'s help and its error message list the modes in.
SELECTORS: dict[str, SelectorEntry] = {
    "full": SelectorEntry(_full, "full softmax: every class, every step"),
    "hf": SelectorEntry(_hf, "sampled: Annoy forest, the paper's HF-Softmax", adaptive=True),
    "hnsw": SelectorEntry(_hnsw, "sampled: hnswlib graph", adaptive=True),
    "random": SelectorEntry(_random, "sampled: uniform negatives, Partial-FC style"),
    "exact": SelectorEntry(_exact, "sampled: the true top-k by a full matmul; a quality oracle, not a speed-up"),
    "ivf": SelectorEntry(_ivf, "sampled: k-means lists + exact scores of the live rows; high recall at 1M "
                               "classes, fast", adaptive=True),
}
MODES = tuple(SELECTORS)  # `selection.mode`'s valid values


def modes_help() -> str:
    """`selection.mode`'s help: every mode with its description, in registry order."""
    return ", ".join(f"{name} ({entry.help})" for name, entry in SELECTORS.items())


def check_adaptive(cfg: SelectionConfig) -> None:
    """ConfigError when `selection.adaptive` is on for a mode that has no use for it (it would be ignored)."""
    if cfg.adaptive and cfg.mode in SELECTORS and not SELECTORS[cfg.mode].adaptive:
        adaptive = ", ".join(name for name, entry in SELECTORS.items() if entry.adaptive)
        raise ConfigError(f"selection.adaptive works with modes {adaptive}, not {cfg.mode}; set "
                          "selection.adaptive=false or choose one of those modes")


def build_selector(cfg: SelectionConfig, num_classes: int, batch_size: int) -> Selector:
    """The selector `cfg.mode` names, checked against the number of classes and the batch size (and
    `selection.adaptive` against the modes that honour it)."""
    if cfg.mode not in SELECTORS:
        raise ConfigError(f"selection.mode={cfg.mode!r} is not one of {', '.join(SELECTORS)}")
    if num_classes <= 0 or batch_size <= 0:
        raise ConfigError(f"selection needs num_classes > 0 and batch_size > 0, got {num_classes}, {batch_size}")
    cfg.validate("selection")
    check_adaptive(cfg)
    check_sample_num(cfg.sample_num, num_classes, mode=cfg.mode)
    return SELECTORS[cfg.mode].build(cfg, num_classes, batch_size)


__all__ = ["MODES", "SELECTORS", "Selection", "Selector", "SelectorEntry", "build_selector", "modes_help"]
