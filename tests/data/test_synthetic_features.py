import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dcs_cli.config  # noqa: F401  (loads the sections in the order that avoids a circular import)
from dcs_cli.data.config import SyntheticConfig
from dcs_cli.data.synthetic_features import SyntheticClasses
from dcs_cli.errors import ConfigError


def test_deterministic_lazy_and_consistent():
    cfg = SyntheticConfig(num_classes=5000, dim=16, seed=3)
    a, b = SyntheticClasses(cfg), SyntheticClasses(cfg)
    x1, y1 = a.samples("train", [7, 5000 * 3 + 4999, 12345])
    x2, y2 = b.samples("train", [12345, 7])
    assert np.array_equal(x1[0], x2[1]) and np.array_equal(x1[2], x2[0])
    assert y1.tolist() == [7, 4999, 12345 % 5000]
    ds = a.train_dataset()
    x, y = ds[7]
    assert torch.equal(x, torch.from_numpy(x1[0])) and y == 7
    assert len(ds) == 5000 * cfg.train_per_class and ds.num_classes == 5000
    other = SyntheticClasses(SyntheticConfig(num_classes=5000, dim=16, seed=4))
    assert not np.array_equal(other.samples("train", [7])[0], x1[:1])


def test_clusters_are_hard_negatives():
    cfg = SyntheticConfig(num_classes=2000, dim=32, cluster_size=10, seed=0)
    data = SyntheticClasses(cfg)
    means = data.class_means(np.arange(2000))
    dist = np.linalg.norm(means[:1, None] - means[None], axis=2)[0]
    nearest = np.argsort(dist)[1:10]
    assert set(nearest.tolist()) == set(range(1, 10))  # class 0's closest classes are its cluster-mates
    x, y = data.arrays("val")
    # nearest-mean classification works far above chance but not perfectly: the task is learnable and hard
    xm = torch.from_numpy(means)
    acc = float(((torch.cdist(x, xm).argmin(1)) == y).float().mean())
    assert 0.3 < acc


def test_loader_batches_and_errors():
    data = SyntheticClasses(SyntheticConfig(num_classes=100, dim=8))
    xb, yb = next(iter(DataLoader(data.val_dataset(), batch_size=32, shuffle=True)))
    assert xb.shape == (32, 8) and xb.dtype == torch.float32 and yb.max() < 100
    with pytest.raises(ConfigError, match="num_classes"):
        SyntheticClasses(SyntheticConfig(num_classes=0))
    with pytest.raises(IndexError):
        data.val_dataset()[200]
