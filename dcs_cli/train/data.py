"""Training and validation data for `dcs train`, checked before any worker starts.

    >>> from dcs_cli.config import load_config
    >>> cfg = load_config("configs/synthetic.yaml", ["data.synthetic.num_classes=20",
    ...                   "data.synthetic.train_per_class=4", "selection.sample_num=10"])
    >>> data = build_data(cfg)
    >>> data.num_classes, data.input_shape, len(data.train)
    (20, (64,), 80)
    >>> loader = train_loader(data.train, batch_size=16, workers=0, epoch=0, seed=0, rank=0, world=1)
    >>> len(loader), steps_per_epoch(len(data.train), 16, world=1)
    (5, 5)

Sources: list files from `dcs convert` (data.train_list / train_root / val_list), a `.rec` read directly
(data.rec), or the synthetic feature-level classes (data.source=synthetic). Every problem a user can
cause (missing list, empty data, a label ≥ data.num_classes, sample_num > classes) is a one-line error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from dcs_cli.console import info, warn
from dcs_cli.errors import ConfigError, DataError
from dcs_cli.seeds import stream_seed
from dcs_cli.selection.base import check_sample_num


@dataclass
class TrainData:
    """The datasets of one run and what the model must know about them."""

    train: Dataset
    val: Dataset | None
    num_classes: int
    input_shape: tuple


def _labels(ds: Dataset) -> np.ndarray | None:
    labels = getattr(ds, "labels", None)
    if labels is None:
        return None
    return np.asarray(labels, dtype=np.int64)


def _check_labels(ds: Dataset, num_classes: int, where: str) -> None:
    labels = _labels(ds)
    if labels is None or not len(labels):
        return
    top = int(labels.max())
    if top >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(f"{where}: item {bad} has label {int(labels[bad])} but data.num_classes is {num_classes} "
                        f"(labels must be < num_classes, largest found {top}); raise data.num_classes or set it to 0")


def _image_datasets(cfg, report: bool) -> tuple[Dataset, Dataset | None, int]:
    from dcs_cli.data.datasets import ListDataset, RecDataset
    from dcs_cli.data.listfile import default_root

    d = cfg.data
    if d.source == "list":
        if not d.train_list:
            raise ConfigError("data.train_list is empty; set it to the train_list.txt written by `dcs convert`")
        if not Path(d.train_list).is_file():
            raise DataError(f"data.train_list: {d.train_list} not found; run `dcs convert` or fix the path")
        root = d.train_root or default_root(d.train_list)
        if not Path(root).is_dir():
            raise DataError(f"data.train_root: {root} is not a folder")
        train = ListDataset(d.train_list, root, d.image_size, random_flip=True)
        train_where = d.train_list
    else:
        if not d.rec:
            raise ConfigError("data.rec is empty; set it to the folder holding train.rec/train.idx")
        if not Path(d.rec).exists():
            raise DataError(f"data.rec: {d.rec} not found")
        train = RecDataset(d.rec, d.image_size, random_flip=True)
        train_where = d.rec
    val = None
    if d.val_list:
        if not Path(d.val_list).is_file():
            raise DataError(f"data.val_list: {d.val_list} not found; fix the path or set it to '' (no validation)")
        root = d.train_root or default_root(d.val_list)
        val = ListDataset(d.val_list, root, d.image_size)
    elif report:
        info("data.val_list is empty: training without validation (val top-1 is not measured)")
    if len(train) == 0:
        raise DataError(f"{train_where}: the training data is empty")
    if val is not None and len(val) == 0:  # e.g. `dcs convert --val-ratio 0`: validation has nothing to score
        if report:
            warn(f"data.val_list: {d.val_list} lists no images; training without validation")
        val = None
    inferred = max(int(getattr(train, "num_classes", 0) or 0), int(getattr(val, "num_classes", 0) or 0))
    num_classes = d.num_classes or inferred
    _check_labels(train, num_classes, train_where)
    if val is not None:
        _check_labels(val, num_classes, d.val_list)
    for ds in (train, val):
        if isinstance(ds, ListDataset):
            ds.check_images_exist()
    return train, val, num_classes


def build_data(cfg, report: bool = True) -> TrainData:
    """Open (and check) the data the config names; cheap enough to run in the parent before the workers.
    `report`: say what the run goes without (validation); once per run, not per worker."""
    d = cfg.data
    if d.source == "synthetic":
        from dcs_cli.data.synthetic_features import SyntheticClasses

        source = SyntheticClasses(d.synthetic)
        train, val = source.train_dataset(), source.val_dataset()
        if d.num_classes and d.num_classes != source.num_classes:
            raise ConfigError(f"data.num_classes = {d.num_classes} but data.synthetic.num_classes = "
                              f"{source.num_classes}; set data.num_classes to 0 for synthetic data")
        num_classes, shape = source.num_classes, (d.synthetic.dim,)
        if val is not None and len(val) == 0:
            val = None
    else:
        train, val, num_classes = _image_datasets(cfg, report)
        shape = (3, d.image_size, d.image_size)
    if len(train) < 1:
        raise DataError("the training data is empty")
    if num_classes < 2:
        raise DataError(f"the training data has {num_classes} class(es); a classifier needs at least 2")
    check_sample_num(cfg.selection.sample_num, num_classes, mode=cfg.selection.mode)
    return TrainData(train=train, val=val, num_classes=num_classes, input_shape=shape)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_loader(ds: Dataset, batch_size: int, workers: int, epoch: int, seed: int, rank: int,
                 world: int) -> DataLoader:
    """Shuffled loader whose order depends only on (seed, epoch): a resumed run sees the same batches.

    Its worker processes' random streams (augmentation) come from (seed, epoch, rank), so ranks do not draw
    the same flips (with `workers` 0 the process's own stream, seeded alike by the loop, draws them).
    Drops the last partial batch so batch-norm never sees a batch of one and every rank steps together.
    """
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(stream_seed(seed, "loader", epoch, rank))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      generator=gen, persistent_workers=False, pin_memory=torch.cuda.is_available())


def val_loader(ds: Dataset, batch_size: int, workers: int, rank: int, world: int) -> DataLoader:
    """Every rank evaluates a strided shard without padding, so summed counts are exact."""
    shard = Subset(ds, list(range(rank, len(ds), world)))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers)


def steps_per_epoch(n_items: int, batch_size: int, world: int) -> int:
    return (n_items // world) // batch_size
