"""Paramserver snapshots: one safetensors file, written under a temporary name and renamed (never torn).

>>> import tempfile
>>> from dcs_cli.selection.store import OptimParams
>>> with tempfile.TemporaryDirectory() as folder:
...     path = write_snapshot(folder, [ServedMatrix(0, MatrixSpec("classifier", 10, 4), OptimParams())])
...     path.name, [(m.spec.name, tuple(m.weight.shape)) for m in read_snapshot(path)]
('paramserver.safetensors', [('classifier', (10, 4))])

`read_snapshot` verifies the format and the checksum; a file that fails either is a DataError.

Format (safetensors, so any safetensors reader can open it):
- tensors `<id>/weight` (N×d float32), `<id>/momentum` (N×d), and with a bias `<id>/bias`,
  `<id>/bias_momentum` (N), one group per served matrix, keyed by its matrix id;
- string metadata: `format` = "dcs-paramserver-snapshot", `format_version` = "2", `matrices` = JSON list
  (ASCII only: other characters are escaped) of {"id", "spec", "step", "optim"} and `sha256` = hex
  SHA-256 over the `matrices` JSON followed, for each tensor in sorted name order, by its name and its raw
  little-endian bytes.

Matrix names appear only inside the escaped JSON, so no name can make a snapshot unwritable. Version 1
files (tensors keyed `<name>/…`) are still read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dcs_cli.errors import DataError
from dcs_cli.fsutil import atomic_path, missing
from dcs_cli.paramserver.matrix import MatrixSpec, ServedMatrix, check_step, optim_from_dict
from dcs_cli.paramserver.protocol import ProtocolError

FORMAT = "dcs-paramserver-snapshot"
FORMAT_VERSION = "2"
READABLE_VERSIONS = {"1": "name", "2": "id"}  # version → what keys the tensor groups
SNAPSHOT_NAME = "paramserver.safetensors"


def _tensors(matrices: list[ServedMatrix]) -> dict[str, torch.Tensor]:
    out = {}
    for m in matrices:
        out[f"{m.matrix_id}/weight"] = m.weight
        out[f"{m.matrix_id}/momentum"] = m.momentum
        if m.spec.bias:
            out[f"{m.matrix_id}/bias"] = m.bias
            out[f"{m.matrix_id}/bias_momentum"] = m.bias_momentum
    return out


def _checksum(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(memoryview(tensors[name].contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def write_snapshot(folder: str | Path, matrices: list[ServedMatrix]) -> Path:
    """Write every matrix (weights, momentum, step, optimiser params) atomically; returns the path."""
    target = Path(folder) / SNAPSHOT_NAME
    tensors = _tensors(matrices)
    meta_json = json.dumps(
        [
            {
                "id": m.matrix_id,
                "spec": m.spec.to_dict(),
                "step": m.step,
                "optim": {
                    "lr": m.params.lr,
                    "momentum": m.params.momentum,
                    "weight_decay": m.params.weight_decay,
                },
            }
            for m in matrices
        ],
        ensure_ascii=True,
    )
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "matrices": meta_json,
        "sha256": _checksum(meta_json, tensors),
    }
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return target


def read_snapshot(path: str | Path) -> list[ServedMatrix]:
    """Load and verify a snapshot; a wrong format, a torn file or a checksum mismatch is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"snapshot {path} {missing(path)}; pass a file written by `dcs paramserver --snapshot-dir` "
                        "(DIR/paramserver.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(
            f"snapshot {path}: not a readable safetensors file ({exc}); it may be truncated"
        ) from exc
    keyed_by = READABLE_VERSIONS.get(metadata.get("format_version"))
    if metadata.get("format") != FORMAT or keyed_by is None:
        raise DataError(f"snapshot {path}: not a {FORMAT} file of version {', '.join(READABLE_VERSIONS)}")
    meta_json = metadata.get("matrices", "")
    if _checksum(meta_json, tensors) != metadata.get("sha256"):
        raise DataError(f"snapshot {path}: checksum mismatch; the file is corrupt, resume from another one")
    try:
        entries = json.loads(meta_json)
        matrices = []
        for position, entry in enumerate(entries):
            spec = MatrixSpec.from_dict(entry["spec"])
            if int(entry["id"]) != position:  # matrix ids index the server's list: 0..n-1 in order
                raise ValueError(f"entry {position} ('{spec.name}') has id {entry['id']}, expected {position}")
            key = spec.name if keyed_by == "name" else str(position)  # of its tensor group
            parts = ["weight", "momentum"] + ["bias", "bias_momentum"] * spec.bias
            for part in parts:
                shape = (spec.num_classes, spec.dim) if part in ("weight", "momentum") else (spec.num_classes,)
                _check_tensor(tensors.get(f"{key}/{part}"), f"{key}/{part}", shape, f"entry {position} ('{spec.name}')")
            m = ServedMatrix(
                position,
                spec,
                optim_from_dict(entry["optim"]),
                weight=tensors[f"{key}/weight"],
                momentum=tensors[f"{key}/momentum"],
                bias=tensors.get(f"{key}/bias") if spec.bias else None,
                bias_momentum=tensors.get(f"{key}/bias_momentum") if spec.bias else None,
                step=int(entry["step"]),
            )
            check_step(m.step, "snapshot")
            matrices.append(m)
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise DataError(f"snapshot {path}: inconsistent metadata ({exc})") from exc
    return matrices


def _check_tensor(tensor: torch.Tensor | None, name: str, shape: tuple[int, ...], entry: str) -> None:
    """One part of a matrix is there, float32 and of its shape (the server indexes it unchecked)."""
    if tensor is None:
        raise ValueError(f"{entry}: tensor '{name}' is missing")
    if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
        raise ValueError(f"{entry}: tensor '{name}' is {tensor.dtype} "
                         f"{tuple(tensor.shape)}, expected torch.float32 {shape}")
