"""A checkpoint's saved state fitted to the form of the run that resumes from it.

The classifier's rows may have been saved in three forms: inside the checkpoint (a `FullClassifier`, or
an in-process store's state), as a paramserver snapshot beside it (`epoch_NNN.store.pt`), or as the shards
of a sharded store beside it (`epoch_NNN.store/`, any world size). A run may resume in another form
(one process ↔ several, full mode in a `FullClassifier` ↔ full mode over the sharded store): the rows and
their momentum move across, and the optimiser's state gains or loses the classifier's entries to match.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcs_cli.errors import DataError
from dcs_cli.selection.sharded_store import ShardedStore
from dcs_cli.torchfile import load_torch_file
from dcs_cli.train.classifier import FullClassifier
from dcs_cli.train.shard_checkpoint import load_store, local_state_dict


def sharded_store_folder(resume: dict) -> Path:
    """The folder of a checkpoint's sharded class store (beside the checkpoint)."""
    folder = Path(resume["_path"]).with_name(resume["store"]["sharded"])
    if not folder.is_dir():
        raise DataError(f"{resume['_path']}: its class-store shards {folder} are missing; copy that folder "
                        f"beside the checkpoint")
    return folder


def saved_store_state(resume: dict) -> dict:
    """The whole-table class-store state of a checkpoint: inside it (in-process store), its snapshot beside
    it (paramserver), or assembled from its shards beside it (sharded store)."""
    saved = resume["store"]
    if "sharded" in saved:
        return local_state_dict(sharded_store_folder(resume))
    if "snapshot" not in saved:
        return saved
    path = Path(resume["_path"]).with_name(saved["snapshot"])
    if not path.is_file():
        raise DataError(f"{resume['_path']}: its class-store snapshot {path} is missing; copy it beside the "
                        f"checkpoint")
    return load_torch_file(path, "class-store snapshot")


def restore_sharded_store(store: ShardedStore, resume: dict) -> None:
    """A sharded store from any checkpoint form: shards of any world size (only the overlapping files are
    read), a whole-table state (one process, paramserver snapshot) or a full-mode FullClassifier."""
    saved = resume.get("store")
    if saved and "sharded" in saved:
        load_store(store, sharded_store_folder(resume))
    elif saved:
        store.load_state_dict(saved_store_state(resume))
    elif resume.get("classifier"):
        store.load_state_dict(_full_classifier_store_state(resume))


def restore_full_classifier(full: FullClassifier, resume: dict) -> list[torch.Tensor]:
    """Load a checkpoint's rows into `full`. Returns the rows' momentum when the checkpoint kept it in a class
    store (a sharded full-mode run), for the optimiser to take over; empty when its optimiser holds it."""
    if resume.get("classifier"):
        full.load_state_dict(resume["classifier"])
        return []
    if not resume.get("store"):
        return []
    whole = saved_store_state(resume)
    rows = {"weight": whole["weight"]}
    momenta = [whole["momentum"]]
    if full.bias is not None:
        rows["bias"] = whole["bias"]
        momenta.append(whole["bias_momentum"])
    full.load_state_dict({**full.state_dict(), **rows})
    return momenta


def fit_optimizer_state(saved: dict, count: int, momenta: list[torch.Tensor]) -> dict:
    """The saved optimiser state for this run's `count` parameters when the classifier changed form across
    the resume: FullClassifier → class store drops the classifier's entries (the store took its momentum);
    class store → FullClassifier appends them, the store's momentum (`momenta`) as their buffers."""
    groups = saved["param_groups"]
    have = len(groups[0]["params"]) if len(groups) == 1 else None
    if have is None or have == count:
        return saved
    ids = list(groups[0]["params"])
    if have > count:
        keep = ids[:count]
        state = {k: v for k, v in saved["state"].items() if k in keep}
    else:
        if len(momenta) != count - have:
            raise DataError(f"the checkpoint's optimiser holds {have} parameters, this model {count}; resume "
                            "with the model and head it was trained with")
        start = max(ids, default=-1) + 1
        extra = list(range(start, start + count - have))
        keep = ids + extra
        state = dict(saved["state"])
        for idx, buf in zip(extra, momenta, strict=True):
            state[idx] = {"momentum_buffer": buf.float().clone()}
    return {"state": state, "param_groups": [dict(groups[0], params=keep)]}


def strip_module_prefix(state: dict) -> dict:
    """A state dict saved from a DDP/DataParallel-wrapped module, keyed like the bare module."""
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def _full_classifier_store_state(resume: dict) -> dict:
    """A full-mode checkpoint's classifier (FullClassifier form) as a whole-table class-store state: its rows
    and their momentum, which lived in the optimiser's buffers (the last parameters of its one group)."""
    classifier = resume["classifier"]
    rows = ["weight"] + (["bias"] if classifier.get("bias") is not None else [])
    group = resume["optimizer"]["param_groups"][0]["params"]
    momenta = resume["optimizer"]["state"]
    ids = group[len(group) - len(rows):]
    state = {"steps": int(resume["step"]), "num_classes": int(classifier["weight"].shape[0]),
             "dim": int(classifier["weight"].shape[1])}
    for key, idx in zip(rows, ids, strict=True):
        value = classifier[key].float()
        buf = (momenta.get(idx) or {}).get("momentum_buffer")
        state[key] = value
        state["momentum" if key == "weight" else "bias_momentum"] = (
            buf.float() if buf is not None else torch.zeros_like(value))
    return state
