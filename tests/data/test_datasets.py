import pytest
import torch

from dcs_cli.data.convert import rec_to_images
from dcs_cli.data.datasets import BinDataset, ListDataset, RecDataset
from dcs_cli.data.synthetic_rec import write_synthetic_rec


def test_rec_list_and_bin_datasets_agree(tmp_path):
    write_synthetic_rec(tmp_path / "rec", 3, 4, image_size=24, seed=0, pairs=2)
    rec_ds = RecDataset(tmp_path / "rec", image_size=24)
    assert len(rec_ds) == 12 and rec_ds.num_classes == 3
    x, label = rec_ds[5]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and label == 1
    assert -1.0 <= x.min() and x.max() <= 1.0

    rec_to_images(tmp_path / "rec", tmp_path / "out", val_ratio=0.0)
    list_ds = ListDataset(tmp_path / "out" / "train_list.txt", tmp_path / "out" / "images", image_size=24)
    assert len(list_ds) == 12 and list_ds.num_classes == 3
    lx, llabel = list_ds[5]
    assert llabel == label and torch.equal(lx, x)  # same bytes, same decode

    resized = RecDataset(tmp_path / "rec", image_size=16)[0][0]
    assert resized.shape == (3, 16, 16)

    bin_ds = BinDataset(tmp_path / "rec" / "pairs.bin", image_size=24)
    assert len(bin_ds) == 4 and bin_ds.issame.tolist() == [True, False]
    assert bin_ds[3][0].shape == (3, 24, 24) and bin_ds[3][1] == 1


@pytest.mark.slow
def test_dataloader_with_workers_reopens_mmap(tmp_path):
    write_synthetic_rec(tmp_path / "rec", 2, 4, image_size=16, seed=0)
    ds = RecDataset(tmp_path / "rec", image_size=16)
    ds.table.payload(0)  # open the mmap in the parent first
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn")
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
