"""`dcs demo`: the whole pipeline on built-in synthetic data, a few minutes on a laptop CPU.

    summary = run_demo("demo_out")

synthesize (InsightFace .rec + held-out pairs.bin) → convert (images + lists) → train `hf` and `full`
→ extract pair features → verify → one comparison table, plots and `summary.json`, all under one folder:

    demo_out/data/            train.rec, train.idx, pairs.bin          (the "user's" data)
    demo_out/converted/       images/<label>/<key>.jpg, train_list.txt, val_list.txt, meta.json
    demo_out/runs/<mode>/     config.yaml, metrics.jsonl, curves.png, checkpoints/, summary.json
    demo_out/features/<mode>/ pairs.npy                                 (2 × pairs × feature_dim)
    demo_out/roc.png, demo_out/summary.json
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dcs_cli import console
from dcs_cli.errors import UsageError
from dcs_cli.fsutil import guard_output_folder, write_json_atomic

MARKER = "summary.json"


@dataclasses.dataclass
class DemoSpec:
    """Sizes of the demo; the defaults finish in a few minutes on 2 CPU cores."""

    identities: int = 500
    images_per_identity: int = 10
    image_size: int = 32
    pairs: int = 600
    epochs: int = 3
    batch_size: int = 64
    sample_num: int = 100  # 20% of the classes: the sampled run trains a tenth of the classifier per step
    modes: tuple[str, ...] = ("hf", "full")
    seed: int = 0

    def validate(self) -> None:
        if self.identities < 2 or self.images_per_identity < 2:
            raise UsageError("the demo needs at least 2 identities with 2 images each")
        if not self.batch_size <= self.sample_num <= self.identities:
            raise UsageError(f"--sample-num must lie between the batch size ({self.batch_size}) and the number "
                             f"of identities ({self.identities})")


def _train_config(spec: DemoSpec, converted: Path, run_dir: Path, mode: str):
    from dcs_cli.config import load_config

    base = {
        "data": {"source": "list", "train_list": str(converted / "train_list.txt"),
                 "train_root": str(converted / "images"), "val_list": str(converted / "val_list.txt"),
                 "image_size": spec.image_size, "batch_size": spec.batch_size, "workers": 0},
        "model": {"backbone": "iresnet18", "feature_dim": 64, "width": 16},
        "head": {"type": "cosface", "scale": 32.0, "margin": 0.2},
        "selection": {"mode": mode, "sample_num": spec.sample_num, "interval": 20, "ntrees": 8,
                      "seed": spec.seed},
        "optim": {"lr": 0.1, "sampled_lr": 0.1, "epochs": spec.epochs, "schedule": "cosine",
                  "warmup_epochs": 0.5, "seed": spec.seed},
        "output": {"dir": str(run_dir), "print_freq": 50, "keep_checkpoints": 1},
    }
    return load_config(None, [], base=base)


def run_demo(out_folder: str | Path, spec: DemoSpec | None = None, overwrite: bool = False) -> dict:
    """Run every stage of the pipeline; returns (and writes) the comparison summary."""
    from dcs_cli.data.convert import rec_to_images
    from dcs_cli.data.synthetic_rec import write_synthetic_rec
    from dcs_cli.eval.extract import ExtractJob, extract
    from dcs_cli.eval.targets import verify_targets
    from dcs_cli.train.checkpoint import list_checkpoints
    from dcs_cli.train.runner import run_train

    spec = spec or DemoSpec()
    spec.validate()
    out = guard_output_folder(out_folder, overwrite, MARKER)
    start = time.perf_counter()

    console.info(f"[bold]1/5 synthesize[/bold] {spec.identities} identities × {spec.images_per_identity} images "
                 f"({spec.image_size}px) + {spec.pairs} held-out pairs")
    data = write_synthetic_rec(out / "data", spec.identities, spec.images_per_identity, spec.image_size,
                               seed=spec.seed, pairs=spec.pairs)
    console.info("[bold]2/5 convert[/bold] .rec → images + train/val lists")
    converted = out / "converted"
    meta = rec_to_images(out / "data", converted, val_ratio=0.1, seed=spec.seed, overwrite=True)

    rows, targets = [], []
    for mode in spec.modes:
        console.info(f"[bold]3/5 train[/bold] --mode {mode} ({spec.epochs} epochs)")
        run_dir = out / "runs" / mode
        summary = run_train(_train_config(spec, converted, run_dir, mode), overwrite=True)
        checkpoint = list_checkpoints(run_dir)[-1]
        console.info(f"[bold]3/5 extract[/bold] pairs.bin features with {checkpoint}")
        features_dir = out / "features" / mode
        extract(ExtractJob(checkpoint=checkpoint, out_dir=features_dir, bins=[data["pairs_bin"]], overwrite=True))
        targets.append((mode, features_dir / "pairs.npy", Path(data["pairs_bin"])))
        steps = summary.get("steps") or 0
        speed = summary.get("samples_per_s") or float("nan")
        rows.append({"mode": mode, "steps": steps, "train s/step": spec.batch_size / speed, "samples/s": speed,
                     "val top-1 %": 100 * (summary.get("val_top1") or 0.0), "run wall s": summary["wall_seconds"]})

    console.info("[bold]4/5 verify[/bold] held-out pairs (10-fold)")
    verified = verify_targets(targets, folds=10, plot=out / "roc.png", json_path=out / "verify.json")
    for row in rows:
        result = verified[row["mode"]]
        row["verif. acc %"] = 100 * result["accuracy"]
        row["AUC"] = result["auc"]
    console.info("[bold]5/5 compare[/bold]")
    console.print_table("dcs demo: sampled (hf) vs full softmax", rows)
    summary = {"spec": dataclasses.asdict(spec), "data": data, "convert": {k: meta[k] for k in
               ("images", "classes", "train", "val")}, "rows": rows,
               "seconds": time.perf_counter() - start, "out_folder": str(out)}
    write_json_atomic(out / MARKER, summary)
    console.info(f"all artifacts under {out}/ (roc.png, runs/<mode>/curves.png, summary.json)")
    return summary
