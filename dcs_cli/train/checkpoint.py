"""Epoch checkpoints: atomic save (temp + rename), keep the last K, find and load for resume.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> state = {"backbone": {}, "config": {}, "epoch": 3, "step": 150, "optimizer": {}}
>>> save_checkpoint(tmp.name, 3, state, keep=3).relative_to(tmp.name).as_posix()
'checkpoints/epoch_003.pt'
>>> loaded = load_checkpoint(tmp.name)  # a run folder: its newest checkpoint
>>> loaded["epoch"], Path(loaded["_path"]).name
(3, 'epoch_003.pt')
>>> tmp.cleanup()

A checkpoint is a `torch.save` dict with the keys agreed with `dcs extract`: backbone, classifier, config,
epoch, step, optimizer, store, selector, plus a content checksum (`dcs_cli.torchfile`); it is loaded as
data only, never as code. Checkpoints of earlier versions also hold scheduler, rng and world_size, which
nothing reads. When the class store lives in a paramserver, the server's snapshot of the same step sits
beside it as `epoch_003.store.pt` and the checkpoint's `store` names it; a sharded store (several
processes) writes its shards and manifest into the folder `epoch_003.store/` beside it, loadable on any
number of processes (`dcs_cli.train.shard_checkpoint`). Both are deleted with their checkpoint.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from dcs_cli.errors import DataError
from dcs_cli.torchfile import load_torch_file, save_torch_file

_NAME = re.compile(r"epoch_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint written after `epoch` epochs (1-based count of finished epochs)."""
    return checkpoint_dir(run_dir) / f"epoch_{epoch:03d}.pt"


def store_snapshot_path(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.stem + ".store.pt")


def store_folder_path(ckpt: str | Path) -> Path:
    """The folder of a sharded class store's shards saved with checkpoint `ckpt` (`epoch_003.store/`)."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.stem + ".store")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.search(p.name)), key=checkpoint_epoch)


def checkpoint_epoch(path: Path) -> int:
    """The epoch in a checkpoint's name (epoch_NNN.pt)."""
    return int(_NAME.search(path.name).group(1))


def save_checkpoint(run_dir: str | Path, epoch: int, state: dict, keep: int = 0) -> Path:
    """Write `state` as the checkpoint of `epoch`; then delete the checkpoints of later epochs (an abandoned
    run's, when this one resumed from an earlier epoch) and all but the newest `keep` (0 = keep all)."""
    path = save_torch_file(state, checkpoint_path(run_dir, epoch))
    saved = list_checkpoints(run_dir)
    stale = [p for p in saved if checkpoint_epoch(p) > epoch]
    kept = [p for p in saved if checkpoint_epoch(p) <= epoch]
    for old in stale + (kept[:-keep] if keep > 0 else []):
        remove_checkpoint(old)
    return path


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint with its class-store snapshot or shard folder."""
    path.unlink(missing_ok=True)
    store_snapshot_path(path).unlink(missing_ok=True)
    shutil.rmtree(store_folder_path(path), ignore_errors=True)


def checkpoint_file(path: str | Path, flag: str) -> Path:
    """The checkpoint the user pointed at with `flag`: a file, or a run folder (or its checkpoints/) → its
    newest checkpoint; a DataError when there is none."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path) or list_checkpoints(path.parent)
        if not found:
            raise DataError(f"{path}: no checkpoints/epoch_NNN.pt found; pass a checkpoint file to {flag}")
        return found[-1]
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found; pass an existing .pt file or a run folder to {flag}")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint the user pointed at (a file, or a run folder → its newest checkpoint)."""
    path = checkpoint_file(path, "--resume")
    state = load_torch_file(path, "checkpoint")
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a dcs train checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [k for k in ("backbone", "config", "epoch", "step", "optimizer") if k not in state]
    if missing:
        raise DataError(f"{path}: not a dcs train checkpoint (missing {', '.join(missing)})")
    state["_path"] = str(path)
    return state
