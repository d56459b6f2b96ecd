"""torch Datasets over a list file, a `.rec` read directly, and a `.bin` verification set.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.convert import rec_to_images
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name)
    >>> _ = write_synthetic_rec(folder / "faces", 2, 3, image_size=16, pairs=2)   # train.rec/.idx, pairs.bin
    >>> _ = rec_to_images(folder / "faces", folder / "out", val_ratio=0.0)       # images + train_list.txt
    >>> ds = ListDataset(folder / "out" / "train_list.txt", folder / "out" / "images", image_size=32)
    >>> x, label = ds[0]                       # (3, 32, 32) float in [-1, 1], int
    >>> tuple(x.shape), label, len(ds)
    ((3, 32, 32), 0, 6)
    >>> len(RecDataset(folder / "faces", image_size=32))          # train without converting
    6
    >>> pairs = BinDataset(folder / "faces" / "pairs.bin", image_size=32)   # items 2k and 2k+1: pair k
    >>> len(pairs), pairs[3][1], pairs.issame.tolist()
    (4, 1, [True, False])
    >>> tmp.cleanup()

Images are decoded with Pillow to RGB uint8, resized (bilinear) when not already image_size, and
normalised as InsightFace does: (x - 127.5) / 127.5. `random_flip` mirrors half the items (training).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dcs_cli.data.binfile import read_bin
from dcs_cli.data.images import decode_rgb, to_input_tensor
from dcs_cli.data.layout import read_table
from dcs_cli.data.listfile import read_list
from dcs_cli.errors import DataError


class _ImageDataset(Dataset):
    image_size: int
    random_flip: bool

    def _tensor(self, payload: bytes, where: str) -> torch.Tensor:
        try:
            rgb = decode_rgb(payload, self.image_size)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        return to_input_tensor(rgb, flip=self.random_flip and random.random() < 0.5)


class ListDataset(_ImageDataset):
    """`ListDataset(list_file, root, image_size)[i] -> (image, label)` over `path label` lines."""

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike, image_size: int = 112,
                 random_flip: bool = False):
        self.list_file = Path(list_file)
        self.root = Path(root)
        self.entries = read_list(self.list_file)
        self.labels = np.asarray([label for _, label in self.entries], dtype=np.int64)
        self.image_size = image_size
        self.random_flip = random_flip
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.entries)

    def check_images_exist(self) -> None:
        """DataError naming the first entry whose image is missing (one listing per folder, not a stat
        per image, so a million entries take seconds)."""
        listed: dict[Path, set[str]] = {}
        for i, (rel, _) in enumerate(self.entries):
            path = self.root / rel
            names = listed.get(path.parent)
            if names is None:
                try:
                    names = listed[path.parent] = set(os.listdir(path.parent))
                except OSError:
                    names = listed[path.parent] = set()
            if path.name not in names:
                raise DataError(f"{self.list_file}: entry {i + 1}: image {path} not found; fix the list or its "
                                f"images root (data.train_root)")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.entries[i]
        path = self.root / rel
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{self.list_file}: entry {i + 1}: cannot read {path} ({exc.strerror})") from None
        return self._tensor(payload, str(path)), label


class RecDataset(_ImageDataset):
    """`RecDataset(rec_folder, image_size)[i] -> (image, label)` straight from train.rec/train.idx."""

    def __init__(self, rec_folder: str | os.PathLike, image_size: int = 112, random_flip: bool = False):
        self.table = read_table(rec_folder)
        self.labels = self.table.labels
        self.image_size = image_size
        self.random_flip = random_flip
        self.num_classes = self.table.num_classes

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        where = f"{self.table.reader.rec_path}: record key {self.table.keys[i]}"
        return self._tensor(self.table.payload(i), where), int(self.labels[i])


class BinDataset(_ImageDataset):
    """`BinDataset(bin_path, image_size)[i] -> (image, i // 2)`: items 2k, 2k+1 form pair k; `.issame[k]`."""

    def __init__(self, bin_path: str | os.PathLike, image_size: int = 112):
        self.bin_path = Path(bin_path)
        self.images, self.issame = read_bin(self.bin_path)
        self.image_size = image_size
        self.random_flip = False
        self.num_classes = None  # pairs, not classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._tensor(self.images[i], f"{self.bin_path}: image {i}"), i // 2
