"""Validation of every request the parameter server receives: frame counts, row ids, array values.

Each check raises `ProtocolError` with a message the client receives as its error reply.

>>> import zmq
>>> from dcs_cli.paramserver.matrix import MatrixSpec
>>> from dcs_cli.paramserver.protocol import Op
>>> from dcs_cli.selection.store import OptimParams
>>> m = ServedMatrix(0, MatrixSpec("classifier", num_classes=10, dim=4), OptimParams())
>>> row_ids(m, Header(op=Op.PUSH, rows=2), zmq.Frame(np.array([7, 2], "<i8").tobytes()), unique=True, op="PUSH")
tensor([7, 2])
>>> row_ids(m, Header(op=Op.PUSH, rows=2), zmq.Frame(np.array([7, 7], "<i8").tobytes()), unique=True, op="PUSH")
Traceback (most recent call last):
...
dcs_cli.paramserver.protocol.ProtocolError: PUSH: row ids must be unique
"""

from __future__ import annotations

import numpy as np
import torch

from dcs_cli.paramserver.config import MAX_MESSAGE_BYTES
from dcs_cli.paramserver.matrix import ServedMatrix
from dcs_cli.paramserver.protocol import NUMPY_DTYPES, DType, Header, ProtocolError, array_from_frame

F32 = NUMPY_DTYPES[DType.FLOAT32]
I64 = NUMPY_DTYPES[DType.INT64]


def expect_frames(frames: list, count: int, op: str) -> None:
    if len(frames) != count:
        raise ProtocolError(f"{op}: expected {count} data frame(s), got {len(frames)}")


def row_ids(m: ServedMatrix, header: Header, frame, unique: bool, op: str) -> torch.Tensor:
    if header.rows > m.spec.num_classes and unique:
        raise ProtocolError(
            f"{op}: {header.rows} unique rows asked of a matrix with {m.spec.num_classes}"
        )
    if header.rows * m.spec.dim * F32.itemsize > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            f"{op}: {header.rows} rows exceed one message; send at most "
            f"{MAX_MESSAGE_BYTES // (m.spec.dim * F32.itemsize)} rows per request"
        )
    ids = array_from_frame(frame.buffer, I64, (header.rows,), f"{op} ids")
    if len(ids):
        # sorted once: min, max and (for unique) duplicates from one O(S log S) pass, ~4x cheaper
        # than torch.unique; the ids themselves stay in the client's order
        ordered = np.sort(ids) if unique else None
        low, high = (ordered[0], ordered[-1]) if unique else (ids.min(), ids.max())
        if low < 0 or high >= m.spec.num_classes:
            raise ProtocolError(
                f"{op}: row id {low if low < 0 else high} out of range [0, {m.spec.num_classes})"
            )
        if unique and len(ids) > 1 and not (ordered[1:] != ordered[:-1]).all():
            raise ProtocolError(f"{op}: row ids must be unique")
    return torch.from_numpy(ids)


def row_values(m: ServedMatrix, header: Header, frame, cols: int | None, op: str, what: str) -> torch.Tensor:
    shape = (header.rows, cols) if cols else (header.rows,)
    values = array_from_frame(frame.buffer, F32, shape, f"{op} {what}")
    if not all_finite(values):
        raise ProtocolError(f"{op}: {what} holds NaN or inf values; refused")
    return torch.from_numpy(values)


def check_row_request(m: ServedMatrix, header: Header, op: str) -> None:
    if header.dtype != DType.FLOAT32:
        raise ProtocolError(f"{op}: dtype {header.dtype} not supported; rows are float32 (dtype 1)")
    if header.cols != m.spec.dim:
        raise ProtocolError(f"{op}: cols {header.cols} != matrix dim {m.spec.dim}")


def all_finite(values: np.ndarray) -> bool:
    """No NaN/inf in `values`. A NaN or inf makes the dot product non-finite, so a finite dot proves the
    array finite in one allocation-free pass (~3.5x faster than `np.isfinite(values).all()`); only a
    non-finite dot (bad values, or finite ones so large their squares overflow) pays for the exact check."""
    flat = values.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(flat).all())
