"""`dcs demo`: the whole pipeline on built-in synthetic data, a few minutes on a laptop CPU.

    dcs demo --out-folder demo_out
    dcs demo --identities 100 --epochs 1 --large-classes 0 --out-folder demo_small   # a quicker look

The command calls `run_demo(out_folder, DemoSpec(...))`, which runs: synthesize (InsightFace .rec +
held-out pairs.bin) → convert (images + lists) → train the sampled mode (`ivf`) and `full` → extract pair
features → verify → a large-class stage (the classifier step alone at 100,000 classes, where it dominates
the cost: full vs the sampled mode, same run) → one comparison table, plots and `summary.json`, all under
one folder:

    demo_out/data/            train.rec, train.idx, pairs.bin          (the "user's" data)
    demo_out/converted/       images/<label>/<key>.jpg, train_list.txt, val_list.txt, meta.json
    demo_out/runs/<mode>/     config.yaml, metrics.jsonl, curves.png, checkpoints/, summary.json
    demo_out/features/<mode>/ pairs.npy, extract.json                   (pairs.npy: 2·pairs × feature_dim)
    demo_out/roc.png, demo_out/verify.json, demo_out/summary.json
                              (summary rows: mode, verify_acc, ...; large_class: speedup, recall)

It trains for minutes, so no test runs it as a doctest; `tests/cli/test_demo.py` runs it at toy sizes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dcs_cli import console
from dcs_cli.errors import UsageError
from dcs_cli.fsutil import guard_output_folder, write_json_atomic

MARKER = "summary.json"
LARGE_BATCH = 256  # the large-class stage's batch (features fixed, as in `dcs bench select-speed`)


@dataclasses.dataclass
class DemoSpec:
    """Sizes of the demo; the defaults finish in a few minutes on 2 CPU cores."""

    identities: int = 500
    images_per_identity: int = 10
    image_size: int = 32
    pairs: int = 600
    epochs: int = 3
    batch_size: int = 64
    sample_num: int = 100  # 20% of the classes
    modes: tuple[str, ...] = ("ivf", "full")
    large_classes: int = 100_000  # the large-class stage; 0 skips it
    large_sample_num: int = 5_000  # 5% of large_classes
    seed: int = 0

    def validate(self) -> None:
        if self.identities < 2 or self.images_per_identity < 2:
            raise UsageError("the demo needs at least 2 identities with 2 images each")
        for flag, value, least in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 2),
                                   ("--pairs", self.pairs, 10)):  # 10: one pair per verification fold
            if value < least:
                raise UsageError(f"{flag} {value}: must be at least {least}")
        if not self.batch_size <= self.sample_num <= self.identities:
            raise UsageError(f"--sample-num must lie between the batch size ({self.batch_size}) and the number "
                             f"of identities ({self.identities})")
        if self.large_classes and self.large_classes < max(LARGE_BATCH, self.large_sample_num):
            raise UsageError(f"--large-classes {self.large_classes} must be 0 (skip) or at least "
                             f"{max(LARGE_BATCH, self.large_sample_num)}")
        if self.large_classes and self.large_sample_num < LARGE_BATCH:
            raise UsageError(f"--large-sample-num {self.large_sample_num} must be at least the large-class "
                             f"stage's batch ({LARGE_BATCH})")


def _train_config(spec: DemoSpec, converted: Path, run_dir: Path, mode: str):
    from dcs_cli.config import load_config

    base = {
        "data": {"source": "list", "train_list": str(converted / "train_list.txt"),
                 "train_root": str(converted / "images"), "val_list": str(converted / "val_list.txt"),
                 "image_size": spec.image_size, "batch_size": spec.batch_size, "workers": 0},
        "model": {"backbone": "iresnet18", "feature_dim": 64, "width": 16},
        # The softmax head: where hard-negative selection beats full softmax here; margin heads do not (README).
        "head": {"type": "softmax"},
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

    console.info(f"[bold]1/6 synthesize[/bold] {spec.identities} identities × {spec.images_per_identity} images "
                 f"({spec.image_size}px) + {spec.pairs} held-out pairs")
    data = write_synthetic_rec(out / "data", spec.identities, spec.images_per_identity, spec.image_size,
                               seed=spec.seed, pairs=spec.pairs)
    console.info("[bold]2/6 convert[/bold] .rec → images + train/val lists")
    converted = out / "converted"
    meta = rec_to_images(out / "data", converted, val_ratio=0.1, seed=spec.seed, overwrite=True)

    rows, targets = [], []
    for mode in spec.modes:
        console.info(f"[bold]3/6 train[/bold] --mode {mode} ({spec.epochs} epochs)")
        run_dir = out / "runs" / mode
        summary = run_train(_train_config(spec, converted, run_dir, mode), overwrite=True)
        checkpoint = list_checkpoints(run_dir)[-1]
        console.info(f"[bold]3/6 extract[/bold] pairs.bin features with {checkpoint}")
        features_dir = out / "features" / mode
        extract(ExtractJob(checkpoint=checkpoint, out_dir=features_dir, bins=[data["pairs_bin"]], overwrite=True))
        targets.append((mode, features_dir / "pairs.npy", Path(data["pairs_bin"])))
        steps = summary.get("steps") or 0
        speed = summary.get("samples_per_s") or float("nan")
        rows.append({"mode": mode, "steps": steps, "train s/step": spec.batch_size / speed, "samples/s": speed,
                     "val_top1": 100 * (summary.get("val_top1") or 0.0), "run wall s": summary["wall_seconds"]})

    console.info("[bold]4/6 verify[/bold] held-out pairs (10-fold)")
    verified = verify_targets(targets, folds=10, plot=out / "roc.png", json_path=out / "verify.json")
    for row in rows:
        result = verified[row["mode"]]
        row["verify_acc"] = 100 * result["accuracy"]
        row["AUC"] = result["auc"]
    large = _large_class_stage(spec) if spec.large_classes else None
    console.info("[bold]6/6 compare[/bold]")
    sampled = spec.modes[0]
    console.print_table(f"dcs demo: sampled ({sampled}) vs full softmax, {spec.identities} identities", rows)
    if large is not None:
        console.print_table(f"classifier step at {spec.large_classes:,} classes (d={LARGE_DIM}, batch {LARGE_BATCH}, "
                            f"{spec.large_sample_num:,} active)", large["rows"])
        console.info(f"speed-up of {sampled} over full softmax at {spec.large_classes:,} classes: "
                     f"{large['speedup']:.1f}x (recall of the true top-k confusers {large['recall']:.3f})")
    summary = {"spec": dataclasses.asdict(spec), "data": data, "convert": {k: meta[k] for k in
               ("images", "classes", "train", "val")}, "rows": rows, "large_class": large,
               "seconds": time.perf_counter() - start, "out_folder": str(out)}
    write_json_atomic(out / MARKER, summary)
    console.info(f"all artifacts under {out}/ (roc.png, runs/<mode>/curves.png, summary.json)")
    return summary


LARGE_DIM = 256


def _large_class_stage(spec: DemoSpec) -> dict:
    """The classifier step (selection, gather, head, loss, backward, update, refreshes amortized) of full
    softmax and the sampled mode at `large_classes`, side by side: `dcs bench select-speed`'s code."""
    from dcs_cli.bench.select_speed import default_params, run_select_speed

    sampled = spec.modes[0]
    console.info(f"[bold]5/6 large-class stage[/bold] classifier step at {spec.large_classes:,} classes: full vs "
                 f"{sampled}")
    params = default_params(classes=spec.large_classes, sample_num=spec.large_sample_num, batch=LARGE_BATCH,
                            dim=LARGE_DIM, interval=50, steps=51, full_steps=3)
    result = run_select_speed(params, contenders=("full", sampled), quiet_table=True)
    by_name = {r["name"]: r for r in result["rows"]}
    rows = [{"mode": name, "step_s": r["step_s"], "amortized_s": r["amortized_s"], "recall": r["recall"],
             "speedup": r["speedup"]} for name, r in by_name.items()]
    return {"classes": spec.large_classes, "sample_num": spec.large_sample_num, "rows": rows,
            "speedup": by_name[sampled]["speedup"], "recall": by_name[sampled]["recall"]}
