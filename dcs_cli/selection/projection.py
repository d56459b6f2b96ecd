"""A reduced-dimension view of the class weights for index building (`selection.index_dim`).

    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> weights = torch.randn(1000, 4, generator=gen) @ torch.randn(4, 64, generator=gen)   # rank 4
    >>> proj = Projection.fit(weights, dim=8, metric="dot", seed=0)   # PCA basis from a row sample
    >>> reduced = proj.apply(weights)                                 # N×8 float32 numpy, chunked
    >>> reduced.shape, reduced.dtype, round(proj.energy(weights), 3)  # the share of the rows' energy kept
    ((1000, 8), dtype('float32'), 1.0)

An index built over `reduced` is queried with `proj.apply(features)` for `rerank × k` candidates, which
are then re-ranked exactly against the full-d rows (rerank.py).

Why: building an index costs about N × d per tree (and Annoy's per-row `add_item` is slow per element),
so indexing 32 of 256 dimensions makes a refresh several times cheaper. The projection loses ranking
precision, so callers retrieve `rerank × k` candidates and re-score them exactly against the full rows.

Basis: the top right singular vectors of a seeded sample of rows, without centring, because the index
ranks by inner products (dot) or cosines, and the uncentred basis is the one that keeps most of the
rows' inner-product energy. For the angular metric rows (and queries) are normalised first, so the
basis describes directions. Trained classifier weights have a strong low-rank structure (classes share
features), which is what makes a small `dim` work; isotropic random weights are the worst case.
`dim=0` (or `dim >= d`) is the identity: a float32 copy of the rows, nothing projected.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FIT_SAMPLE = 8192  # rows the basis is fitted on (an SVD of 8192×d is ~0.1 s at d=256)
CHUNK = 65536  # rows per matmul when projecting, so no N×d temporary is made


class Projection:
    """`Projection.fit(weights, dim, metric, seed).apply(x) -> reduced float32 rows` (identity when dim=0)."""

    def __init__(self, basis: torch.Tensor | None, normalize: bool):
        self.basis = basis  # d×r float32, or None = identity
        self.normalize = normalize

    @property
    def identity(self) -> bool:
        return self.basis is None

    @property
    def dim(self) -> int | None:
        return None if self.basis is None else int(self.basis.shape[1])

    @classmethod
    def fit(cls, weights: torch.Tensor, dim: int, metric: str, seed: int = 0) -> Projection:
        """PCA (uncentred) basis of `dim` columns from a seeded sample of `weights` rows."""
        n, d = weights.shape
        if dim <= 0 or dim >= d:
            return cls(None, False)
        normalize = metric == "angular"
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n, generator=gen)[:FIT_SAMPLE] if n > FIT_SAMPLE else torch.arange(n)
        sample = weights.index_select(0, pick).to("cpu", torch.float32)
        if normalize:
            sample = F.normalize(sample, dim=1)
        _, _, vt = torch.linalg.svd(sample, full_matrices=False)
        basis = vt[:dim].T
        if basis.shape[1] < dim:  # fewer rows than dim (tiny stores): pad with seeded orthonormal columns
            extra = torch.randn(d, dim - basis.shape[1], generator=gen)
            basis = torch.linalg.qr(torch.cat([basis, extra], 1)).Q[:, :dim]
        return cls(basis.contiguous(), normalize)

    def apply(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Rows of `x` in the reduced space as a fresh C-contiguous float32 array (chunked, no N×d temp)."""
        x = torch.as_tensor(x).detach().to("cpu", torch.float32)
        if self.basis is None:
            return x.numpy().copy()
        out = torch.empty(x.shape[0], self.basis.shape[1])
        for start in range(0, x.shape[0], CHUNK):
            part = x[start:start + CHUNK]
            if self.normalize:
                part = F.normalize(part, dim=1)
            torch.matmul(part, self.basis, out=out[start:start + CHUNK])
        return out.numpy()

    def energy(self, x: torch.Tensor) -> float:
        """Share of the squared norm of rows `x` the basis keeps (1.0 for the identity): a quality probe."""
        x = x.detach().to("cpu", torch.float32)
        if self.basis is None:
            return 1.0
        if self.normalize:
            x = F.normalize(x, dim=1)
        total = float(x.square().sum()) or 1.0
        return float((x @ self.basis).square().sum()) / total
