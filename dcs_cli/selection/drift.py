"""How far the class weights moved since an index's snapshot: what triggers a refresh in adaptive mode.

The measure is the relative Frobenius distance ||W_now − W_snap|| / ||W_snap||, both in the index's
(projected) space. Only rows selected since the snapshot can have moved (the store updates lazily), so
it is estimated from up to DRIFT_SAMPLE of those rows and scaled up by their count:

    >>> import torch
    >>> from dcs_cli.selection.local_store import LocalStore
    >>> from dcs_cli.selection.projection import Projection
    >>> store, proj = LocalStore(num_classes=4, dim=2), Projection(None, False)   # identity projection
    >>> store.weight = torch.ones(4, 2)
    >>> snap = proj.apply(store.weight)
    >>> round(sum_squares(snap), 4)
    8.0
    >>> store.weight[0] = 2.0                              # row 0 moved by (1, 1)
    >>> dirty = torch.tensor([True, False, False, False])   # the rows selected since the snapshot
    >>> drift = weight_drift(store, proj, snap, sum_squares(snap), dirty, torch.Generator().manual_seed(0))
    >>> round(drift, 4)                                    # sqrt(2 / 8)
    0.5
"""

from __future__ import annotations

import numpy as np
import torch

from dcs_cli.selection.projection import Projection
from dcs_cli.selection.store import ClassStore

DRIFT_SAMPLE = 4096  # rows read per measurement at most


def sum_squares(rows: np.ndarray) -> float:
    """Σ rows² without an N×d temporary (np.square of a 1M×256 snapshot allocates 1 GB and takes seconds)."""
    flat = torch.from_numpy(rows).reshape(-1)
    step = 1 << 20  # float32 partial sums over 1M elements each stay accurate; the total is a Python float
    return sum(float(torch.linalg.vector_norm(flat[i:i + step])) ** 2 for i in range(0, flat.numel(), step))


def weight_drift(store: ClassStore, proj: Projection, snap: np.ndarray, snap_norm2: float, dirty: torch.Tensor,
                 generator: torch.Generator) -> float:
    """Estimated ||W_now − W_snap|| / ||W_snap|| of the store's rows against `snap` (their `proj`ected
    snapshot, of squared norm `snap_norm2`), from a seeded sample of the `dirty` rows (N bools)."""
    dirty = dirty.nonzero().squeeze(1)
    if dirty.numel() == 0:
        return 0.0
    pick = dirty[torch.randperm(dirty.numel(), generator=generator)[:DRIFT_SAMPLE]]
    now, _ = store.rows(pick)
    delta = proj.apply(now) - snap[pick.numpy()]
    moved2 = float(np.square(delta).sum()) * dirty.numel() / pick.numel()
    return (moved2 / snap_norm2) ** 0.5
