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


def test_an_unreadable_image_in_a_worker_is_one_line(tmp_path):
    """A DataLoader worker's DataError reaches the caller as the same one-line message, not as the worker's
    traceback (torch rebuilds the error from "Caught DataError in DataLoader worker process 0 ...")."""
    from dcs_cli.data.listfile import write_list
    from dcs_cli.errors import DataError

    write_list(tmp_path / "l.txt", [("missing.jpg", 0)])
    loader = torch.utils.data.DataLoader(ListDataset(tmp_path / "l.txt", tmp_path, image_size=16), num_workers=1)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert str(caught.value) == f"{tmp_path / 'l.txt'}: entry 1: cannot read {tmp_path / 'missing.jpg'} " \
                                "(No such file or directory)"


def test_an_empty_val_list_means_no_validation(tmp_path, monkeypatch):
    """`dcs convert --val-ratio 0` writes an empty val_list.txt: training skips validation (and says so)
    instead of scoring 0 % on nothing."""
    from dcs_cli.config import load_config
    from dcs_cli.train import data as train_data

    said = []
    monkeypatch.setattr(train_data, "warn", said.append)

    write_synthetic_rec(tmp_path / "rec", 3, 4, image_size=24, seed=0)
    rec_to_images(tmp_path / "rec", tmp_path / "out", val_ratio=0.0)
    assert (tmp_path / "out" / "val_list.txt").read_text() == ""
    cfg_sets = [f"data.train_list={tmp_path / 'out' / 'train_list.txt'}",
                f"data.train_root={tmp_path / 'out' / 'images'}",
                f"data.val_list={tmp_path / 'out' / 'val_list.txt'}", "data.source=list", "data.image_size=24",
                "data.batch_size=4", "data.workers=0", "selection.mode=full"]
    cfg = load_config(None, cfg_sets)
    data = train_data.build_data(cfg)
    assert data.num_classes == 3 and data.val is None
    assert len(said) == 1 and said[0].endswith("val_list.txt lists no images; training without validation")
    # no val_list at all: also said, as a notice
    monkeypatch.setattr(train_data, "info", said.append)
    assert train_data.build_data(load_config(None, [*cfg_sets[:2], "data.val_list=''", *cfg_sets[3:]])).val is None
    assert said[-1].startswith("data.val_list is empty: training without validation")
    # a worker re-opening the data says nothing: the parent did
    before = len(said)
    train_data.build_data(load_config(None, [*cfg_sets[:2], "data.val_list=''", *cfg_sets[3:]]), report=False)
    train_data.build_data(cfg, report=False)
    assert len(said) == before


def test_lists_from_dcs_convert_train_without_a_root(tmp_path):
    """data.train_root left empty: the images/ that `dcs convert` writes beside its lists is found."""
    from dcs_cli.config import load_config
    from dcs_cli.train import data as train_data

    write_synthetic_rec(tmp_path / "rec", 3, 4, image_size=24, seed=0)
    rec_to_images(tmp_path / "rec", tmp_path / "out", val_ratio=0.25)
    cfg = load_config(None, ["data.source=list", f"data.train_list={tmp_path / 'out' / 'train_list.txt'}",
                             f"data.val_list={tmp_path / 'out' / 'val_list.txt'}", "data.image_size=24",
                             "data.batch_size=4", "data.workers=0", "selection.mode=full"])
    data = train_data.build_data(cfg)
    assert data.train.root == data.val.root == tmp_path / "out" / "images"
    assert data.num_classes == 3 and len(data.train) + len(data.val) == 12


def test_a_16_bit_grey_png_keeps_its_tones():
    # Pillow's convert("RGB") clips 16-bit values at 255: a ramp came out 98 % white
    import io

    import numpy as np
    from PIL import Image

    from dcs_cli.data.images import decode_rgb

    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    rgb = decode_rgb(buf.getvalue())
    assert rgb.shape == (8, 8, 3) and (rgb == (ramp >> 8)[..., None]).all()
