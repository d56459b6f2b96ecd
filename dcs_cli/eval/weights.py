"""Read a checkpoint's backbone weights and load them leniently or strictly.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.torchfile import save_torch_file
    >>> tmp = tempfile.TemporaryDirectory(); path = Path(tmp.name) / "epoch_030.pt"
    >>> saved = torch.nn.Linear(4, 2)
    >>> _ = save_torch_file({"backbone": {"module." + k: v for k, v in saved.state_dict().items()},
    ...                      "classifier": torch.zeros(10, 2), "config": {}}, path)   # as DDP would save it
    >>> state, saved_cfg = read_checkpoint(path)      # (backbone state_dict, the saved config or None)
    >>> model = torch.nn.Linear(4, 2)
    >>> report = load_backbone_weights(model, state, strict=True, where=str(path))
    >>> report["loaded"], report["stripped_prefix"], bool((model.weight == saved.weight).all())
    (2, True, True)
    >>> tmp.cleanup()

A uniform `module.` prefix (a state_dict saved from DistributedDataParallel or DataParallel) is removed in
both modes: it names the wrapper, not a different model. Strict mode then refuses any missing, unexpected
or shape-mismatched key and lists them; non-strict loads every key whose name and shape match, skips the
rest (classifier rows, heads, other wrappers' keys) and reports what was skipped and what kept its
initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dcs_cli.console import warn
from dcs_cli.errors import DataError
from dcs_cli.torchfile import load_torch_file
from dcs_cli.train.checkpoint import checkpoint_file

PREFIX = "module."


def read_checkpoint(path: str | Path) -> tuple[dict, dict | None]:
    """(backbone state_dict, saved config dict or None) of a `dcs train` checkpoint or a bare state_dict."""
    path = checkpoint_file(path, "--checkpoint")
    obj = load_torch_file(path, "checkpoint")
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    if "backbone" in obj:
        state, cfg = obj["backbone"], obj.get("config")
        if cfg is not None and not isinstance(cfg, dict):
            raise DataError(f"{path}: 'config' must be a plain dict of the resolved config")
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, cfg = obj, None  # a bare backbone state_dict (e.g. InsightFace's backbone.pth)
    else:
        raise DataError(f"{path}: no 'backbone' key (has: {_names(list(obj))}); not a dcs checkpoint "
                        "or a backbone state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: 'backbone' is not a state_dict of tensors")
    return state, cfg


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def strip_prefix(state: dict, strict: bool) -> tuple[dict, bool]:
    """Remove `module.` when every key has it; non-strict also removes it from the keys that have it."""
    keys = list(state)
    if keys and all(k.startswith(PREFIX) for k in keys):
        return {k[len(PREFIX):]: v for k, v in state.items()}, True
    if not strict and any(k.startswith(PREFIX) for k in keys):
        return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}, True
    return dict(state), False


MIN_LOADED_SHARE = 0.5


def load_backbone_weights(model: nn.Module, state: dict, strict: bool = True, where: str = "checkpoint") -> dict:
    """Copy `state` into `model`; returns {loaded, missing, unexpected, mismatched, stripped_prefix}."""
    state, stripped = strip_prefix(state, strict)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    mismatched = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if strict and (unexpected or missing or mismatched):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
        if mismatched:
            parts.append("shape differs " + _names([f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
                                                    for k in mismatched], 3))
        raise DataError(f"{where}: backbone keys do not match model.backbone ({'; '.join(parts)}); "
                        "check --config/--set model.*, or pass --no-strict to load only the matching keys")
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise DataError(f"{where}: none of the {len(state)} checkpoint keys matches model.backbone "
                        f"(e.g. {_names(list(state), 3)}); the config does not describe this checkpoint")
    if len(usable) < MIN_LOADED_SHARE * len(own):
        # --no-strict is for wrapper prefixes and extra classifier keys, not for another architecture:
        # features from a mostly random network would look valid and mean nothing.
        raise DataError(f"{where}: only {len(usable)} of the backbone's {len(own)} keys match the checkpoint; "
                        f"it was trained with another architecture — check --config/--set model.*")
    model.load_state_dict(usable, strict=False)
    if unexpected or mismatched:
        warn(f"skipped {len(unexpected) + len(mismatched)} checkpoint key(s) not in the backbone: "
             f"{_names(unexpected + mismatched)}")
    if missing:
        warn(f"{len(missing)} backbone key(s) absent from the checkpoint keep their initial values: {_names(missing)}")
    return {"loaded": len(usable), "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
            "stripped_prefix": stripped}
