"""Rows between a client's tensors and the wire: tensors as frame arrays, whole matrices in chunks.

`RemoteStore.weights()`, `state_dict()` and `load_state_dict()` move every row of a matrix; they do it
one row range at a time, so that no frame exceeds `CHUNK_BYTES` or the server's `max_frame_bytes`.

>>> chunk_rows(dim=256, arrays_per_row=2, max_frame_bytes=128 << 20)   # weight + momentum rows
32768
>>> list(row_ranges(10, 4))
[(0, 4), (4, 8), (8, 10)]
>>> read_in_chunks(10, 4, lambda ids: {"weight": ids[:, None] * 2.0})["weight"].shape
torch.Size([10, 1])
>>> [a.dtype.name for a in state_frames({"weight": torch.ones(3, 2), "momentum": torch.zeros(3, 2)}, 1, 3, False)]
['int64', 'float32', 'float32']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

CHUNK_BYTES = 64 << 20  # whole-matrix transfers go in pieces of this size


def wire_array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """`t` as a C-contiguous CPU array of `dtype`, ready to be sent as a frame."""
    return np.ascontiguousarray(t.detach().to("cpu", dtype).numpy())


def chunk_rows(dim: int, arrays_per_row: int, max_frame_bytes: int) -> int:
    """Rows per piece when each row travels as `arrays_per_row` float32 rows of `dim` (weight, momentum)."""
    return max(1, min(CHUNK_BYTES, max_frame_bytes) // (4 * dim * arrays_per_row))


def row_ranges(num_classes: int, chunk: int) -> Iterator[tuple[int, int]]:
    """`(lo, hi)` of consecutive pieces of at most `chunk` rows covering `range(num_classes)`."""
    for lo in range(0, num_classes, chunk):
        yield lo, min(lo + chunk, num_classes)


def read_in_chunks(
    num_classes: int, chunk: int, read: Callable[[torch.Tensor], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Every row: `read(ids)` of each piece returns its arrays by name; they are concatenated per name."""
    parts = [read(torch.arange(lo, hi)) for lo, hi in row_ranges(num_classes, chunk)]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def state_frames(state: dict, lo: int, hi: int, bias: bool) -> list[np.ndarray]:
    """The SET_ROWS arrays of rows `[lo, hi)` of a store's state: ids, weight, momentum, (bias, bias
    momentum)."""
    keys = ["weight", "momentum"] + ["bias", "bias_momentum"] * bias
    return [wire_array(torch.arange(lo, hi), torch.int64)] + [wire_array(state[k][lo:hi], torch.float32) for k in keys]
