"""Seeded synthetic classification data with hard negatives, generated lazily (N in the millions is free).

    >>> from dcs_cli.data.config import SyntheticConfig
    >>> data = SyntheticClasses(SyntheticConfig(num_classes=1_000_000, dim=16))   # nothing generated yet
    >>> x, y = data.train_dataset()[999_999]     # (float32 vector of dim d, int label); sample i: label i % N
    >>> tuple(x.shape), x.dtype, y
    ((16,), torch.float32, 999999)
    >>> small = SyntheticClasses(SyntheticConfig(num_classes=50, dim=8, val_per_class=2))
    >>> x, y = small.arrays("val")               # a whole split at once (benchmarks)
    >>> tuple(x.shape), tuple(y.shape)
    ((100, 8), (100,))

`dcs train` builds it from `cfg.data.synthetic` (`data.source=synthetic`). Class means sit in tight
clusters of `cluster_size` classes: a unit-norm cluster centre plus an offset of length `cluster_spread`.
A sample is its class mean plus Gaussian noise of expected length `noise`. So the classes that matter for
a sample are its cluster-mates, which a random subset of negatives rarely contains. Everything is
generated in blocks from counter-based seeds ([seed, stream, block]), so any class or sample can be
produced on its own, reproducibly, without materialising the rest.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from dcs_cli.errors import ConfigError

BLOCK = 1024
_MEANS, _CENTRES, _TRAIN, _VAL = 0, 1, 2, 3


class SyntheticClasses:
    """`SyntheticClasses(SyntheticConfig(num_classes=20000, dim=64))`: lazily generated clustered classes."""

    def __init__(self, cfg):
        cfg.validate("data.synthetic")
        self.cfg = cfg
        self.num_classes, self.dim = cfg.num_classes, cfg.dim
        self._block = lru_cache(maxsize=64)(self._block_uncached)

    def _block_uncached(self, stream: int, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, stream, block])
        return rng.standard_normal((BLOCK, self.dim), dtype=np.float32)

    def _rows(self, stream: int, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        blocks = ids // BLOCK
        for blk in np.unique(blocks):
            pick = blocks == blk
            out[pick] = self._block(stream, int(blk))[ids[pick] % BLOCK]
        return out

    def class_means(self, classes) -> np.ndarray:
        """Means (len×d) of `classes`: cluster centre (unit) + offset of length `cluster_spread`."""
        classes = np.asarray(classes, dtype=np.int64)
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ConfigError(f"synthetic classes are 0..{self.num_classes - 1}, asked for {classes.max()}")
        centres = self._rows(_CENTRES, classes // self.cfg.cluster_size)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
        offsets = self._rows(_MEANS, classes)
        offsets *= self.cfg.cluster_spread / (np.linalg.norm(offsets, axis=1, keepdims=True) + 1e-12)
        return centres + offsets

    def split_size(self, split: str) -> int:
        return self.num_classes * self._per_class(split)

    def _per_class(self, split: str) -> int:
        if split not in ("train", "val"):
            raise ConfigError(f"synthetic split must be 'train' or 'val', got {split!r}")
        return self.cfg.train_per_class if split == "train" else self.cfg.val_per_class

    def samples(self, split: str, indices) -> tuple[np.ndarray, np.ndarray]:
        """Features (len×d float32) and labels of samples `indices` of `split`; sample i has label i % N."""
        indices = np.asarray(indices, dtype=np.int64)
        size = self.split_size(split)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise IndexError(f"synthetic {split} has {size} samples, asked for index {indices.max()}")
        labels = indices % self.num_classes
        noise = self._rows(_TRAIN if split == "train" else _VAL, indices)
        feats = self.class_means(labels) + noise * (self.cfg.noise / np.sqrt(self.dim))
        return feats.astype(np.float32), labels

    def arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.samples(split, np.arange(self.split_size(split)))
        return torch.from_numpy(x), torch.from_numpy(y)

    def train_dataset(self) -> Dataset:
        return SyntheticSplit(self, "train")

    def val_dataset(self) -> Dataset:
        return SyntheticSplit(self, "val")


class SyntheticSplit(Dataset):
    """`ds = data.train_dataset(); x, y = ds[i]` — one split of a `SyntheticClasses` source."""

    def __init__(self, source: SyntheticClasses, split: str):
        self.source, self.split = source, split
        self.num_classes = source.num_classes
        self._len = source.split_size(split)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        if not -self._len <= i < self._len:
            raise IndexError(f"synthetic {self.split} index {i} out of range ({self._len})")
        x, y = self.source.samples(self.split, [i % self._len])
        return torch.from_numpy(x[0]), int(y[0])

    def __getitems__(self, indices):
        # DataLoader's batched fetch: one vectorised generation instead of a Python call per sample
        x, y = self.source.samples(self.split, indices)
        return [(torch.from_numpy(x[j]), int(y[j])) for j in range(len(y))]
