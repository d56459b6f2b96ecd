"""`data:` section — where training and validation samples come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dcs_cli.config_fields import opt, require, require_seed


@dataclass
class SyntheticConfig:
    """Seeded synthetic classes with hard negatives (class means in tight clusters), generated lazily."""

    num_classes: int = opt(1000, "number of synthetic classes")
    dim: int = opt(64, "feature dimension of the synthetic samples")
    cluster_size: int = opt(10, "classes per tight cluster (the hard negatives of each other)")
    cluster_spread: float = opt(0.35, "distance of class means from their cluster centre (smaller = harder)")
    noise: float = opt(0.3, "per-sample noise around the class mean")
    train_per_class: int = opt(8, "training samples per class")
    val_per_class: int = opt(2, "held-out samples per class")
    seed: int = opt(0, "seed of the generator")

    def validate(self, key: str) -> None:
        for name in ("num_classes", "dim", "cluster_size", "train_per_class"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        require(self.val_per_class >= 0, f"{key}.val_per_class", "must be >= 0")
        require(self.noise >= 0 and self.cluster_spread >= 0, f"{key}.noise", "and cluster_spread must be >= 0")
        require_seed(self.seed, f"{key}.seed")


@dataclass
class DataConfig:
    """Training data: list files from `dcs convert`, a `.rec` read directly, or the synthetic source."""

    source: Literal["list", "rec", "synthetic"] = opt("list", "kind of training data")
    train_list: str = opt("", "list file (`path label` lines) of training images (source=list)")
    train_root: str = opt("", "folder the list's paths are relative to (source=list; empty: the "
                                 "list's folder, or the images/ beside it that `dcs convert` writes)")
    val_list: str = opt("", "list file of validation images; empty = no validation")
    rec: str = opt("", "folder holding train.rec/train.idx, or the .rec path (source=rec)")
    num_classes: int = opt(0, "number of classes; 0 = infer from the data")
    image_size: int = opt(112, "square input size in pixels")
    batch_size: int = opt(256, "mini-batch size per process")
    workers: int = opt(2, "data-loader worker processes")
    synthetic: SyntheticConfig = opt(SyntheticConfig(), "synthetic data settings (source=synthetic)")

    def validate(self, key: str) -> None:
        require(self.batch_size > 0, f"{key}.batch_size", "must be > 0")
        require(self.workers >= 0, f"{key}.workers", "must be >= 0")
        require(self.image_size > 0, f"{key}.image_size", "must be > 0")
        require(self.num_classes >= 0, f"{key}.num_classes", "must be >= 0 (0 = infer)")
