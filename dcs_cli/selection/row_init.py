"""The class rows' seeded start: one rule for every store, the full classifier and the paramserver.

    >>> w = init_rows(num_classes=1000, dim=8, lo=0, hi=1000, init_std=0.01, seed=0)   # the whole table
    >>> part = init_rows(num_classes=1000, dim=8, lo=250, hi=500, init_std=0.01, seed=0)
    >>> bool((part == w[250:500]).all())                                               # a shard of it
    True

`LocalStore`, `ShardedStore` (its slice), `FullClassifier` and the paramserver's matrices all start from it,
so a one-process, a sharded and a served run begin from the same classifier.
"""

from __future__ import annotations

import torch

from dcs_cli.errors import ConfigError
from dcs_cli.selection.hugepages import empty_rows

INIT_KINDS = ("normal", "uniform")
NORMAL_BLOCK = 16  # torch's CPU normal_ turns uniforms into normals 16 at a time (Box-Muller over i, i+8)
SKIP_CHUNK = 1 << 22


def _skip(gen: torch.Generator, draws: int) -> None:
    """Advance `gen` by `draws` 32-bit draws (float32 uniform_ takes exactly one per element)."""
    buf = torch.empty(min(draws, SKIP_CHUNK))
    while draws > 0:
        k = min(draws, SKIP_CHUNK)
        buf[:k].uniform_(generator=gen)
        draws -= k


def init_rows(num_classes: int, dim: int, lo: int, hi: int, init: str = "normal", init_std: float = 0.01,
              seed: int = 0) -> torch.Tensor:
    """Rows lo..hi-1 of the seeded N×d start table (lo=0, hi=N: the whole table).

    The table is what one seeded CPU generator draws over all N×d elements: float32 `uniform_` takes one
    draw per element in order; `normal_` (tables of 16+ elements) first fills uniforms in order, turns each
    aligned block of 16 into normals, and redraws the last 16 elements when the size is not a multiple of
    16. So the slice is reproduced by skipping the draws before its first aligned block and generating
    from there (through the table's end when the slice touches the redrawn tail). Memory: the slice plus
    16 elements; time: the skipped draws (about 0.3 s per 100M). tests/shard checks the equality.
    """
    if init not in INIT_KINDS:
        raise ConfigError(f"class store init must be one of {', '.join(INIT_KINDS)}, got {init!r}")
    gen = torch.Generator().manual_seed(int(seed))
    total, a, b = num_classes * dim, lo * dim, hi * dim
    out = empty_rows(hi - lo, dim)
    if init == "uniform":
        bound = init_std * 3.0**0.5
        _skip(gen, a)
        return out.uniform_(-bound, bound, generator=gen)
    if total < NORMAL_BLOCK:  # torch's element-wise path: tiny tables are generated whole
        full = torch.empty(num_classes, dim).normal_(0.0, init_std, generator=gen)
        return out.copy_(full[lo:hi])
    start = a // NORMAL_BLOCK * NORMAL_BLOCK
    tail = total % NORMAL_BLOCK != 0 and b > total - NORMAL_BLOCK
    if tail:
        start = min(start, (total - NORMAL_BLOCK) // NORMAL_BLOCK * NORMAL_BLOCK)
        end = total
    else:
        end = -(-b // NORMAL_BLOCK) * NORMAL_BLOCK
    _skip(gen, start)
    if start == a and end == b:  # aligned: generate straight into the table
        return out.view(-1).normal_(0.0, init_std, generator=gen).view(hi - lo, dim)
    buf = torch.empty(end - start).normal_(0.0, init_std, generator=gen)
    return out.view(-1).copy_(buf[a - start:b - start]).view(hi - lo, dim)
