"""Torch files (checkpoints, store snapshots) that cannot run code and name their own corruption.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory(); path = Path(tmp.name) / "example.pt"
    >>> _ = save_torch_file({"w": torch.zeros(2), "epoch": 3}, path)   # atomic, with a content checksum
    >>> load_torch_file(path, "checkpoint")                            # DataError if unsafe or corrupt
    {'w': tensor([0., 0.]), 'epoch': 3}
    >>> torch.save({"w": torch.ones(2), "epoch": 3, CHECKSUM_KEY: "0" * 64}, path)   # content ≠ checksum
    >>> load_torch_file(path, "checkpoint")
    Traceback (most recent call last):
    ...
    dcs_cli.errors.DataError: ...example.pt: checksum mismatch; this checkpoint is corrupt — use another copy ...
    >>> tmp.cleanup()

Loading goes through `torch.load(weights_only=True)`: only tensors, containers and plain values are
unpickled, so a file whose pickle calls a function (`os.system`, …) is refused with one line instead of
being run. The checksum is a SHA-256 over the content as loaded — structure, keys, plain values and every
tensor's dtype, shape and bytes — stored in the file under `CHECKSUM_KEY`; a file with flipped bytes that
still unpickles is reported as corrupt, naming the file. Files without the key (written by dcs before the
checksum, or a third party's state_dict) load unchecked.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from pathlib import Path

import torch

from dcs_cli.errors import DataError, OutputError
from dcs_cli.fsutil import atomic_path

CHECKSUM_KEY = "_sha256"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch names a callable it refused


def content_digest(obj) -> str:
    """SHA-256 of a nest of dicts, lists, tuples, tensors and plain values, as it reads after a load."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        digest.update(b"{%d" % len(obj))
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[%d" % len(obj))
        for value in obj:
            _feed(digest, value)
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def save_torch_file(state: dict, target: str | Path) -> Path:
    """`torch.save` of `state` plus its checksum, under a temporary name renamed when complete."""
    with atomic_path(target) as tmp:
        try:
            torch.save({**state, CHECKSUM_KEY: content_digest(state)}, tmp)
        except RuntimeError as exc:  # torch's writer reports a failed write (a full disk) this way, not as OSError
            free = shutil.disk_usage(tmp.parent).free
            raise OutputError(f"{target}: cannot write it ({str(exc).splitlines()[0][:120]}; {free / 2**30:.1f} "
                              "GiB free there); free space or choose another output folder") from None
    return Path(target)


def load_torch_file(path: str | Path, what: str) -> object:
    """Load a torch file that may come from anyone: data only, checksum verified when present."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refusal, or a file that is not a torch file
        found = _GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if found is not None:
            raise DataError(f"{path}: refused to load this {what}: it holds a reference to {found.group(1)}, "
                            "which could run code; dcs loads only tensors and plain values — re-save it as a "
                            "plain state_dict") from None
        # torch words every failure of its restricted unpickler alike, so only the exception type is shown
        raise DataError(f"{path}: not a readable {what} ({type(exc).__name__}); it may be truncated or not a "
                        "torch file") from None
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        stored = obj.pop(CHECKSUM_KEY)
        if stored != content_digest(obj):
            raise DataError(f"{path}: checksum mismatch; this {what} is corrupt — use another copy or an "
                            "earlier checkpoint")
    return obj
