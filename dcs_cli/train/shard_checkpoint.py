"""Class-store checkpoints as shards plus a manifest, loadable on any number of processes.

>>> import tempfile
>>> from dcs_cli.selection.local_store import LocalStore
>>> tmp = tempfile.TemporaryDirectory()
>>> folder = Path(tmp.name) / "epoch_003.store"
>>> store = LocalStore(10, 4, seed=0)
>>> save_sharded_store(store, folder).name  # a collective for a ShardedStore; a LocalStore is one shard
'store_manifest.json'
>>> read_manifest(folder)["world_size"], local_state_dict(folder)["weight"].shape
(1, torch.Size([10, 4]))
>>> other = LocalStore(10, 4, seed=1)
>>> load_store(other, folder)  # W → M ranks, or into a LocalStore (M = 1)
>>> torch.equal(other.weights(), store.weights())
True
>>> tmp.cleanup()

A folder holds `store_shard_RRR_of_WWW.pt` per rank (that rank's rows [lo, hi): weights, momentum in its
storage dtype, optional bias; written with `save_torch_file`, so each carries its content checksum) and
`store_manifest.json`: N, d, world size, each shard's file, range and checksum, dtypes, the optimiser
settings and the step count. Loading reads the manifest, opens only the shard files whose range overlaps
the rows wanted, memory-mapped, and copies just that slice; `verify=True` (default) checks each opened
file's checksum, which reads that file once (`verify=False` reads only the slice's pages).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
import torch.distributed as dist

from dcs_cli.errors import DataError
from dcs_cli.fsutil import write_json_atomic
from dcs_cli.torchfile import CHECKSUM_KEY, content_digest, save_torch_file

MANIFEST = "store_manifest.json"
FORMAT = "dcs-sharded-store/1"
ROW_KEYS = ("weight", "momentum", "bias", "bias_momentum")


def shard_file_name(rank: int, world: int) -> str:
    return f"store_shard_{rank:03d}_of_{world:03d}.pt"


def _shard_state(store) -> dict:
    """The store's rows with its range: a ShardedStore's own state, or a LocalStore's as the one shard."""
    state = dict(store.state_dict())
    state.setdefault("lo", 0)
    state.setdefault("hi", store.num_classes)
    state.setdefault("rank", 0)
    state.setdefault("world", 1)
    return state


def save_shard(state: dict, folder: str | Path) -> dict:
    """Write one rank's shard file; returns its manifest entry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = shard_file_name(int(state["rank"]), int(state["world"]))
    save_torch_file(state, folder / name)
    return {"file": name, "rank": int(state["rank"]), "lo": int(state["lo"]), "hi": int(state["hi"]),
            "sha256": content_digest(state)}


def write_manifest(folder: str | Path, entries: list[dict], state: dict) -> Path:
    """The manifest of a complete set of shards (`state`: any one shard's state, for the shared fields)."""
    entries = sorted(entries, key=lambda e: e["lo"])
    manifest = {
        "format": FORMAT, "num_classes": int(state["num_classes"]), "dim": int(state["dim"]),
        "world_size": len(entries), "bias": "bias" in state, "weight_dtype": str(state["weight"].dtype),
        "momentum_dtype": str(state["momentum"].dtype), "optim": state.get("optim"),
        "steps": int(state.get("steps", 0)), "shards": entries,
    }
    path = Path(folder) / MANIFEST
    write_json_atomic(path, manifest)
    return path


def save_sharded_store(store, folder: str | Path) -> Path | None:
    """Every rank writes its shard; rank 0 then writes the manifest (returned there, None elsewhere).

    A collective when the store is sharded over several ranks: every rank must call it."""
    state = _shard_state(store)
    entry = save_shard(state, folder)
    world = int(state["world"])
    if world > 1:
        entries: list = [None] * world
        dist.all_gather_object(entries, entry)
    else:
        entries = [entry]
    path = write_manifest(folder, entries, state) if int(state["rank"]) == 0 else None
    if world > 1:
        dist.barrier()
    return path


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST}; this is not a sharded class-store checkpoint (or it is "
                        "incomplete: a rank died while saving)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({type(exc).__name__}); use another checkpoint") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    covered = 0
    for entry in sorted(manifest["shards"], key=lambda e: e["lo"]):
        if entry["lo"] != covered:
            raise DataError(f"{path}: the shards do not cover classes {covered}..{entry['lo'] - 1}")
        covered = entry["hi"]
    if covered != manifest["num_classes"]:
        raise DataError(f"{path}: the shards cover {covered} of {manifest['num_classes']} classes")
    return manifest


def _open_shard(path: Path, entry: dict, verify: bool) -> dict:
    """A shard file memory-mapped (data only, as `load_torch_file`), its checksum checked when `verify`."""
    if not path.is_file():
        raise DataError(f"{path}: shard file missing; copy every {path.parent.name}/store_shard_* file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable class-store shard ({type(exc).__name__}); it may be truncated "
                        "or tampered with") from None
    stored = obj.pop(CHECKSUM_KEY, None) if isinstance(obj, dict) else None
    if verify and (stored != entry["sha256"] or content_digest(obj) != stored):
        raise DataError(f"{path}: checksum mismatch with {MANIFEST}; this shard is corrupt or from another save")
    if (int(obj["lo"]), int(obj["hi"])) != (entry["lo"], entry["hi"]):
        raise DataError(f"{path}: holds classes {obj['lo']}..{obj['hi']}, the manifest says "
                        f"{entry['lo']}..{entry['hi']}")
    return obj


def load_rows(folder: str | Path, lo: int, hi: int, verify: bool = True) -> dict:
    """Rows lo..hi-1 of a sharded checkpoint as a shard state (weight, momentum, bias…, lo, hi, steps)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    n, d = manifest["num_classes"], manifest["dim"]
    if not 0 <= lo < hi <= n:
        raise DataError(f"{folder}: rows {lo}..{hi - 1} are outside its {n} classes; check data.num_classes")
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ROW_KEYS}
    for entry in sorted(manifest["shards"], key=lambda e: e["lo"]):
        a, b = max(lo, entry["lo"]), min(hi, entry["hi"])
        if a >= b:
            continue  # not needed: never opened
        shard = _open_shard(folder / entry["file"], entry, verify)
        for key in ROW_KEYS:
            if key in shard:
                parts[key].append(shard[key][a - entry["lo"]:b - entry["lo"]].clone())
        del shard
    state = {"num_classes": n, "dim": d, "lo": lo, "hi": hi, "steps": manifest["steps"]}
    if manifest.get("optim"):
        state["optim"] = manifest["optim"]
    for key, chunks in parts.items():
        if chunks:
            state[key] = torch.cat(chunks)
    return state


def load_store(store, folder: str | Path, verify: bool = True) -> None:
    """Fill `store` from a sharded checkpoint of any world size: a ShardedStore takes its own rows (only
    the overlapping shard files are opened), a LocalStore all N."""
    manifest = read_manifest(folder)
    if (manifest["num_classes"], manifest["dim"]) != (store.num_classes, store.dim):
        raise DataError(f"{folder}: checkpoint of {manifest['num_classes']} classes of dim {manifest['dim']}, "
                        f"this store is ({store.num_classes}, {store.dim}); use the config it was saved with")
    lo, hi = getattr(store, "lo", 0), getattr(store, "hi", store.num_classes)
    state = load_rows(folder, lo, hi, verify)
    if not hasattr(store, "lo"):  # a whole-table store takes a whole-table state
        for key in ("lo", "hi"):
            state.pop(key)
    store.load_state_dict(state)


def local_state_dict(folder: str | Path, verify: bool = True) -> dict:
    """All N rows as a LocalStore state dict (N → 1: validation, `dcs extract`, a one-process resume)."""
    manifest = read_manifest(folder)
    state = load_rows(folder, 0, manifest["num_classes"], verify)
    state.pop("lo")
    state.pop("hi")
    if "momentum" in state:
        state["momentum"] = state["momentum"].float()
    return state
