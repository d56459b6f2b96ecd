"""Huge-page-backed row tables: random row access into a GB-sized table without TLB stalls.

    >>> table = empty_rows(1000, 8, zero=True)
    >>> tuple(table.shape), float(table.sum())
    ((1000, 8), 0.0)
"""

from __future__ import annotations

import math
import mmap

import numpy as np
import torch

HUGE_PAGE = 2 << 20


def empty_rows(*shape: int, zero: bool = False) -> torch.Tensor:
    """`empty_rows(N, d)`: an uninitialised float32 CPU table backed by transparent huge pages.

    Random row access into a GB-sized table is bound by TLB misses with 4 KiB pages (two-level page walks
    under virtualisation); 2 MiB pages cut a 10,000-row get+update by ~20% (measured). Falls back to
    `torch.empty` for small tables or where the kernel lacks MADV_HUGEPAGE. `zero=True` returns zeros,
    written now: faulting 1 GB of huge pages in costs seconds, which belongs to start-up, not to the
    first training step's latency.
    """
    count = math.prod(shape)
    nbytes = count * 4
    if nbytes < 2 * HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape) if zero else torch.empty(shape)
    # private (not the default shared) anonymous memory: shmem does not get transparent huge pages
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE)  # + slack to align to 2 MiB
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP disabled: still a valid (4 KiB-paged) table
        pass
    raw = np.frombuffer(buf, dtype=np.uint8)
    offset = -raw.ctypes.data % HUGE_PAGE
    table = torch.from_numpy(raw[offset : offset + nbytes].view(np.float32).reshape(shape))
    return table.zero_() if zero else table
