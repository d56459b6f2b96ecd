"""Backbone features of `.bin` pair sets and image lists: `extract(ExtractJob(...))` → `<out>/<name>.npy`.

    >>> import tempfile
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> from dcs_cli.torchfile import save_torch_file
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name)
    >>> cfg = load_config(overrides=["model.backbone=mobilefacenet", "model.width=8", "model.feature_dim=16",
    ...                              "data.image_size=16"])
    >>> net = build_backbone(cfg.model, (3, 16, 16))
    >>> _ = save_torch_file({"backbone": net.state_dict(), "config": to_dict(cfg)},   # as `dcs train` saves
    ...                     folder / "epoch_001.pt")
    >>> _ = write_synthetic_rec(folder / "data", 2, 1, image_size=16, pairs=3)       # data/pairs.bin
    >>> job = ExtractJob(checkpoint=folder / "epoch_001.pt", bins=[folder / "data" / "pairs.bin"],
    ...                  out_dir=folder / "feats")
    >>> summary = extract(job)
    >>> np.load(folder / "feats" / "pairs.npy").shape     # float32 (2·pairs × feature_dim), file order
    (6, 16)
    >>> sorted(p.name for p in (folder / "feats").iterdir())
    ['extract.json', 'pairs.npy']
    >>> tmp.cleanup()

The architecture comes from the config saved in the checkpoint (key "config"), overridden by `--config`
and `--set`. A checkpoint is either a `dcs train` dict (key "backbone") or a bare backbone state_dict.
With flip (the InsightFace protocol) each embedding is model(image) + model(mirrored image). From the
shell, with the checkpoint of a run:

    dcs extract --checkpoint runs/x/checkpoints/epoch_030.pt --bin data/lfw.bin --out-dir feats
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dcs_cli.config import Config, load_config, to_dict
from dcs_cli.console import info, progress_bar, warn
from dcs_cli.errors import ConfigError, DataError, OutputExistsError, UsageError
from dcs_cli.eval.targets import recorded_files
from dcs_cli.eval.weights import load_backbone_weights, read_checkpoint
from dcs_cli.fsutil import atomic_path, check_output_file, missing, write_json_atomic
from dcs_cli.models.backbones import backbone_input_kind, build_backbone
from dcs_cli.train.checkpoint import checkpoint_file


@dataclasses.dataclass
class ExtractJob:
    """What `dcs extract` does: `extract(ExtractJob(checkpoint, bins=[...], out_dir=...))`."""

    checkpoint: str | Path
    out_dir: str | Path
    bins: list = dataclasses.field(default_factory=list)
    lists: list = dataclasses.field(default_factory=list)  # (list_file, root) pairs
    config: str | Path | None = None
    overrides: list = dataclasses.field(default_factory=list)
    flip: bool = True
    strict: bool = True
    batch_size: int = 256
    overwrite: bool = False


def resolve_config(saved: dict | None, config_path, overrides, where: str) -> Config:
    """Checkpoint config ← --config file ← --set overrides; a bare state_dict needs --config."""
    if saved is None and config_path is None:
        raise ConfigError(f"{where} carries no config; pass --config with the model section it was trained with")
    return load_config(config_path, overrides, base=saved or {})


def pick_device() -> tuple[torch.device, int]:
    """All visible GPUs (DataParallel over them) or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.cuda.device_count()
    return torch.device("cpu"), 0


def _targets(job: ExtractJob) -> list[tuple[str, Path, Path | None]]:
    """(name, source, root) per output; names are file stems and must be unique."""
    targets = [(Path(b).stem, Path(b), None) for b in job.bins]
    targets += [(Path(lst).stem, Path(lst), Path(root)) for lst, root in job.lists]
    if not targets:
        raise UsageError("nothing to extract: pass --bin FILE (repeatable) or --list FILE --root DIR")
    files = [f for name, _, root in targets for f in _outputs(name, root)]
    dupes = sorted({f for f in files if files.count(f) > 1})
    if dupes:
        raise UsageError(f"two inputs would both write {dupes[0]}; give the inputs distinct file names")
    for _, source, root in targets:
        if not source.is_file():
            raise DataError(f"{source} {missing(source)}; pass a .bin file to --bin, a list file to --list")
        if root is not None and not root.is_dir():
            raise DataError(f"--root {root} {missing(root, folder=True)}: pass the folder the list's image paths "
                            "are relative to")
    return targets


@torch.inference_mode()
def embed_dataset(model: nn.Module, dataset: Dataset, batch_size: int, flip: bool, device: torch.device,
                  workers: int = 0, desc: str = "extracting") -> np.ndarray:
    """(len(dataset) × d) float32 embeddings in dataset order; with `flip`, emb(x) + emb(mirrored x)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    chunks = []
    with progress_bar(desc, total=len(dataset), unit="images") as advance:
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            emb = model(images)
            if flip:
                emb = emb + model(torch.flip(images, dims=[3]))
            chunks.append(emb.float().cpu().numpy())
            advance(images.shape[0])
    if not chunks:
        raise DataError(f"{desc}: no images to extract")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def save_npy_atomic(target: Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def build_model(job: ExtractJob) -> tuple[nn.Module, Config, dict]:
    """Backbone of the checkpoint's (or overridden) config with the checkpoint's weights, in eval mode."""
    state, saved_cfg = read_checkpoint(job.checkpoint)
    cfg = resolve_config(saved_cfg, job.config, job.overrides, str(job.checkpoint))
    if backbone_input_kind(cfg.model.backbone) != "image":
        raise ConfigError(f"model.backbone = {cfg.model.backbone!r} takes feature vectors, not images; "
                          "dcs extract needs an image backbone (iresnet*, mobilefacenet)")
    size = cfg.data.image_size
    model = build_backbone(cfg.model, (3, size, size))
    load_report = load_backbone_weights(model, state, strict=job.strict, where=str(job.checkpoint))
    return model.eval(), cfg, load_report


def _outputs(name: str, root: Path | None) -> list[str]:
    """The files one input writes: its features, and a list's labels."""
    return [f"{name}.npy"] if root is None else [f"{name}.npy", f"{name}.labels.npy"]


def _earlier_targets(record: Path, header: dict, overwrite: bool) -> tuple[dict, list[Path]]:
    """The targets an earlier extraction with the same checkpoint and settings recorded in `record`, kept
    beside the new ones; a record of another checkpoint's, or a file dcs did not write, needs --overwrite.
    Second: the files of a record that --overwrite drops, to be removed so they are not mixed with the new."""
    if not record.exists():
        return {}, []
    try:
        earlier = json.loads(record.read_text())
    except (OSError, ValueError):
        earlier = None
    ours = isinstance(earlier, dict) and isinstance(earlier.get("targets"), dict)
    if ours and all(earlier.get(key) == header[key] for key in ("checkpoint", "flip", "strict", "image_size")):
        return earlier["targets"], []
    if overwrite:
        return {}, recorded_files(record.parent, earlier["targets"]) if ours else []
    if not ours:
        raise OutputExistsError(f"{record} exists and is not one dcs extract wrote; pass --overwrite to replace it")
    raise OutputExistsError(f"{record} records features of another checkpoint or settings; pass --overwrite "
                            "to replace them or choose another --out-dir")


def extract(job: ExtractJob) -> dict:
    """Run `job`: one `<name>.npy` per input plus `extract.json`; returns the summary written there."""
    from dcs_cli.data.datasets import BinDataset, ListDataset

    if job.batch_size <= 0:
        raise UsageError(f"--batch-size {job.batch_size}: must be > 0")
    targets = _targets(job)
    # a run folder means its newest checkpoint: the file is what extract.json records and compares
    job = dataclasses.replace(job, checkpoint=checkpoint_file(job.checkpoint, "--checkpoint"))
    out_dir = Path(job.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out-dir {out_dir} exists and is not a folder")
    files = [out_dir / f for name, _, root in targets for f in _outputs(name, root)]
    for path in [*files, out_dir / "extract.json"]:
        check_output_file(path)
    taken = [path for path in files if path.exists()]
    if taken and not job.overwrite:
        raise OutputExistsError(f"{taken[0]} exists; pass --overwrite to replace it or choose another --out-dir")
    model, cfg, load_report = build_model(job)
    device, gpus = pick_device()
    model = model.to(device)
    if gpus > 1:
        model = nn.DataParallel(model)
    info(f"backbone {cfg.model.backbone} ({cfg.model.feature_dim}-d, {cfg.data.image_size}px) on "
         f"{f'{gpus} GPU(s)' if gpus else 'cpu'}; flip={'on' if job.flip else 'off'}")
    summary = {"checkpoint": str(job.checkpoint), "flip": job.flip, "strict": job.strict,
               "image_size": cfg.data.image_size, "model": to_dict(cfg.model), "weights": load_report}
    summary["targets"], dropped = _earlier_targets(out_dir / "extract.json", summary, job.overwrite)
    # every input is opened (a list's images listed) before the first output is written: a missing or malformed
    # second input leaves nothing behind; an image that fails to decode stops the run with the targets before
    # it written and recorded in extract.json
    datasets = [BinDataset(source, cfg.data.image_size) if root is None else
                ListDataset(source, root, cfg.data.image_size) for _, source, root in targets]
    for dataset in datasets:
        if isinstance(dataset, ListDataset):
            dataset.check_images_exist()
    if dropped:  # the folder now holds the new checkpoint's features only: none of the earlier one's is mixed in
        write_json_atomic(out_dir / "extract.json", summary)
        for path in dropped:
            path.unlink(missing_ok=True)
        info(f"--overwrite: removed {', '.join(p.name for p in dropped)} of the earlier extraction")
    for (name, source, root), dataset in zip(targets, datasets, strict=True):
        start = time.perf_counter()
        feats = embed_dataset(model, dataset, job.batch_size, job.flip, device, cfg.data.workers, desc=name)
        if not np.isfinite(feats).all():
            warn(f"{name}: some features are NaN or inf (a diverged checkpoint?); dcs verify will refuse them")
        save_npy_atomic(out_dir / f"{name}.npy", feats)
        entry = {"source": str(source), "rows": int(feats.shape[0]), "dim": int(feats.shape[1]),
                 "seconds": round(time.perf_counter() - start, 3)}
        if root is None:
            entry["pairs"] = int(len(dataset.issame))
        else:
            save_npy_atomic(out_dir / f"{name}.labels.npy", dataset.labels.astype(np.int64))
            entry["labels"] = f"{name}.labels.npy"
        summary["targets"][name] = entry
        write_json_atomic(out_dir / "extract.json", summary)  # after each target: it records what is there
        info(f"{name}: {feats.shape[0]} × {feats.shape[1]} → {out_dir / (name + '.npy')}")
    return summary
