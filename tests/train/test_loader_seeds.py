"""`train_loader`: the batches follow (seed, epoch) alone; the worker processes' random streams (augmentation)
differ per rank and epoch, and repeat for the same (seed, epoch, rank), as a resumed run needs."""

import torch
from torch.utils.data import Dataset

from dcs_cli.train.data import train_loader


class RandomDraws(Dataset):
    """Each item is a draw from the loading process's random stream, as an augmentation's flip would be."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.rand(()), i


def _draws(rank: int, epoch: int = 0) -> list[float]:
    loader = train_loader(RandomDraws(), batch_size=4, workers=1, epoch=epoch, seed=0, rank=rank, world=2)
    return [float(v) for draws, _ in loader for v in draws]


def test_ranks_draw_their_own_augmentation_and_repeat_it():
    zero = _draws(0)
    assert zero != _draws(1)  # the same flips on every rank before
    assert zero == _draws(0) and zero != _draws(0, epoch=1)
