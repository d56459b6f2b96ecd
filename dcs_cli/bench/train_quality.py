"""`dcs bench train-quality`: accuracy of every selection mode through `dcs train`'s own code path.

    dcs bench train-quality --quick --json train_quality.json

Seeded image-level synthetic identities in look-alike families (family-mates share most of their pattern:
the hard negatives a random subset of classes rarely holds) are written as an InsightFace .rec, converted
with `dcs convert` (90/10 train/val split) and trained by `run_train` — backbone, head, class store and
selector exactly as `dcs train` builds them — once per mode and head, same seed, same data order, same
schedule per head (`warmup_epochs`). The held-out identities (whole families never trained on) give the
verification pairs, half of the different-identity pairs being family-mates. Figures per row:
  val_top1         top-1 over all classes on the validation images (argmax over the whole classifier)
  verify_acc       10-fold verification accuracy on the held-out pairs (features extracted with flip)
  tar_at_far_1e-3  true-accept rate at a false-accept rate of 1e-3 on the same pairs (ROC over all pairs; with
                   under 1,000 different-identity pairs, the TAR at zero false accepts)
  family_far       % of the family-mate pairs (the look-alikes) accepted as one identity, and
  frr              % of the same-identity pairs rejected: which kinds of pair verification gets wrong
                   (on all pairs at the folds' mean threshold, so they explain verify_acc's errors without
                   adding up to them exactly)
  wall_s           training wall seconds; samples_per_s the mean training throughput
  active           classes trained per step (all of them in full mode): the budget
  rows_read        rows read per step, % of all classes: the active ones plus, with the tail estimate (margin
                   heads), each sample's near classes and the uniform draws (`selection.tail_near`, `tail_samples`)
                   that only enter the rows' denominator; at these small sizes the near classes' union is a
                   large share of the classes (at most B × tail_near rows at any size)
With `--runs R` each contender trains R times, with training seeds seed, seed + 1, ... (initialisation,
data order, selection draws; the data stay those of `--seed`): the figures are the runs' means, with the
runs' standard deviations (`val_top1_sd`, `verify_acc_sd`) and, in the JSON, each run's values
(`val_top1_runs`, `verify_acc_runs`). Single CosFace runs of this size spread by up to ±10 pt from seed to seed,
so with R ≥ 2 every row beside a full (or random) row of its head also gets its difference from it, paired
by training seed: `val_top1_vs_full` and `verify_acc_vs_full` (mean over the seeds, in points) with their
standard errors (`…_vs_full_se`; likewise `_vs_random`), printed as a second table — the figures the
targets (hf ≥ full − 0.5, hf ≥ random + 3) are read from.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

from dcs_cli.bench.common import report
from dcs_cli.console import info, print_table
from dcs_cli.errors import ConfigError, UsageError
from dcs_cli.fsutil import write_json_atomic

MODES = ("full", "hf", "ivf", "hnsw", "random", "exact")
HEADS = ("softmax", "cosface")
PAIRED_KEYS = ("val_top1", "verify_acc")  # the figures of the targets, compared seed by seed
REFERENCES = ("full", "random")  # the modes every other mode of the same head is compared with


@dataclasses.dataclass
class TrainQualitySpec:
    """Sizes of the bench; the defaults fit 15 minutes on 2 CPU cores, `quick()` 4 minutes."""

    identities: int = 2000
    family_size: int = 5
    images_per_identity: int = 6
    held_out: int = 200
    pairs: int = 1200
    image_size: int = 16
    width: int = 8
    feature_dim: int = 64
    batch_size: int = 32
    sample_num: int = 100  # 5% of the classes
    epochs: int = 4
    modes: tuple[str, ...] = MODES
    heads: tuple[str, ...] = HEADS
    seed: int = 0
    runs: int = 1  # trainings per contender, training seeds seed .. seed + runs - 1
    overrides: tuple[str, ...] = ()  # KEY=VALUE config overrides applied to every contender (--set)

    @classmethod
    def quick(cls) -> TrainQualitySpec:
        return cls(identities=1000, held_out=100, pairs=600, sample_num=50, epochs=3)

    @classmethod
    def from_options(cls, quick: bool = False, identities: int = 0, sample_num: int = 0, epochs: int = 0,
                     modes=None, heads=None, seed: int = 0, runs: int = 1, overrides=None) -> TrainQualitySpec:
        """The spec of `dcs bench train-quality`'s options: `quick()` or the defaults, then each option
        given (0 / empty = the size's default; `identities` alone sets sample_num to 5% of them)."""
        spec = cls.quick() if quick else cls()
        if identities:
            spec.identities = identities
            spec.sample_num = max(spec.batch_size, identities // 20)  # 5%
        if sample_num:
            spec.sample_num = sample_num
        if epochs:
            spec.epochs = epochs
        if modes:
            spec.modes = tuple(modes)
        if heads:
            spec.heads = tuple(heads)
        spec.seed, spec.runs = seed, runs
        spec.overrides = tuple(overrides or ())
        return spec

    def validate(self) -> None:
        for name in ("identities", "family_size", "images_per_identity", "held_out", "pairs", "epochs", "runs"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
        if self.identities < self.batch_size:
            raise UsageError(f"--identities must be >= the batch size ({self.batch_size}), got {self.identities}")
        if not self.batch_size <= self.sample_num <= self.identities:
            raise UsageError(f"--sample-num must lie between the batch size ({self.batch_size}) and the number "
                             f"of identities ({self.identities})")
        for mode in self.modes:
            if mode not in MODES:
                raise UsageError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
        for head in self.heads:
            if head not in ("softmax", "cosface", "arcface"):
                raise UsageError(f"--head {head!r} is not one of softmax, cosface, arcface")


# What --set may not change, whatever key or section it goes through: which contender a row is, the shared data
# and run folders (data.workers aside), and under --runs the seeds that tell the runs apart
BENCH_KEYS = ("selection.mode", "head.type", "data", "output")
SEED_KEYS = ("optim.seed", "selection.seed")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def check_overrides(spec: TrainQualitySpec, cfg, plain, row: str) -> None:
    """UsageError when --set changed a setting in BENCH_KEYS (or, with several runs, SEED_KEYS) of `row`'s
    config `cfg` against the bench's own `plain` one, or turned on a setting `row`'s mode cannot use."""
    from dcs_cli.config import to_dict
    from dcs_cli.selection import check_adaptive

    given, bench = _flat(to_dict(cfg)), _flat(to_dict(plain))
    fixed = BENCH_KEYS + (SEED_KEYS if spec.runs > 1 else ())
    changed = [key for key in given if given[key] != bench[key] and key != "data.workers"
               and any(key == f or key.startswith(f + ".") for f in fixed)]
    if changed:
        key = changed[0]
        if key in SEED_KEYS:
            raise UsageError(f"--set {key} with --runs {spec.runs}: run r trains with seed --seed + r; give "
                             f"--seed instead, or one run with --set {key}=S")
        raise UsageError(f"--set: {key} is the bench's to set (each row's mode and head, the shared data and "
                         "run folders); use --mode, --head and the bench's own options")
    try:
        check_adaptive(cfg.selection)
    except ConfigError as exc:
        raise UsageError(f"--set: row {row}: {exc} (--mode picks the rows)") from None


HEAD_SETTINGS = {  # InsightFace's margins; s = 32 suits a 64-d embedding (s = 64 is for 512-d)
    "softmax": {"type": "softmax"},
    "cosface": {"type": "cosface", "scale": 32.0, "margin": 0.35},
    "arcface": {"type": "arcface", "scale": 32.0, "margin": 0.5},
}


def warmup_epochs(head: str, epochs: int) -> float:
    """The LR warm-up of a run with `head`: half an epoch for softmax; two epochs (at most half the run) for the
    margin heads, which from scratch stall in a narrow cone when the LR peaks early (full/cosface at the
    default size: 27.0 val top-1 on ten seeds after half an epoch, 49.1 after two; README)."""
    return 0.5 if head == "softmax" else min(2.0, epochs / 2)


def train_config(spec: TrainQualitySpec, converted: Path, run_dir: Path, mode: str, head: str, run: int = 0):
    """The `dcs train` config of one contender's run `run`: everything but mode and head is shared, and the
    training seed is spec.seed + run."""
    from dcs_cli.config import load_config

    base = {
        "data": {"source": "list", "train_list": str(converted / "train_list.txt"),
                 "train_root": str(converted / "images"), "val_list": str(converted / "val_list.txt"),
                 "image_size": spec.image_size, "batch_size": spec.batch_size, "workers": 0},
        "model": {"backbone": "iresnet18", "feature_dim": spec.feature_dim, "width": spec.width},
        "head": HEAD_SETTINGS[head],
        "selection": {"mode": mode, "sample_num": spec.sample_num, "interval": 20, "seed": spec.seed + run,
                      "background": False},
        "optim": {"lr": 0.1, "epochs": spec.epochs, "schedule": "cosine",
                  "warmup_epochs": warmup_epochs(head, spec.epochs), "seed": spec.seed + run},
        "dist": {"threads": 1},  # every contender alike; two threads thrash on a shared 2-core machine
        "output": {"dir": str(run_dir), "print_freq": 10_000, "keep_checkpoints": 1},
    }
    cfg = load_config(None, list(spec.overrides), base=base)
    check_overrides(spec, cfg, load_config(None, [], base=base), f"{mode}/{head}")
    return cfg


def run_train_quality(spec: TrainQualitySpec, json_path: str | None = None) -> dict:
    """Synthesize, convert, then train + extract + verify every (mode, head); returns the report."""
    from dcs_cli.data.convert import rec_to_images
    from dcs_cli.data.synthetic_rec import write_synthetic_rec
    from dcs_cli.eval.extract import ExtractJob, extract
    from dcs_cli.eval.targets import load_features, load_issame
    from dcs_cli.eval.verify import evaluate
    from dcs_cli.train.checkpoint import list_checkpoints
    from dcs_cli.train.runner import run_train

    spec.validate()
    for head in spec.heads:  # a bad --set fails here, before any work
        for mode in spec.modes:
            train_config(spec, Path("converted"), Path("run"), mode, head)
    rows, per_run = [], {}
    with tempfile.TemporaryDirectory(prefix="dcs-train-quality-") as tmp:
        tmp = Path(tmp)
        info(f"train-quality: {spec.identities} identities in families of {spec.family_size}, "
             f"{spec.images_per_identity} images each, {spec.held_out} held-out identities, {spec.pairs} pairs")
        data = write_synthetic_rec(tmp / "rec", spec.identities, spec.images_per_identity, spec.image_size,
                                   seed=spec.seed, pairs=spec.pairs, family_size=spec.family_size,
                                   held_out=spec.held_out)
        converted = tmp / "converted"
        rec_to_images(tmp / "rec", converted, val_ratio=0.1, seed=spec.seed, overwrite=True)
        issame = load_issame(data["pairs_bin"])
        for head in spec.heads:
            for mode in spec.modes:
                name = f"{mode}/{head}"
                runs = []
                for run in range(spec.runs):
                    info(f"train-quality: {name}" + (f" (run {run + 1}/{spec.runs})" if spec.runs > 1 else ""))
                    where = tmp / "runs" / mode / head / str(run)
                    start = time.perf_counter()
                    summary = run_train(train_config(spec, converted, where / "run", mode, head, run), overwrite=True)
                    wall = time.perf_counter() - start
                    extract(ExtractJob(checkpoint=list_checkpoints(where / "run")[-1], out_dir=where / "features",
                                       bins=[data["pairs_bin"]], overwrite=True))
                    features = load_features(where / "features" / "pairs.npy")
                    result, _ = evaluate(features, issame, folds=10, where=name)
                    family_far, frr = error_rates(features, issame, data["family_pairs"], result.threshold)
                    runs.append({"val_top1": 100 * (summary["val_top1"] or 0.0), "verify_acc": 100 * result.accuracy,
                                 "tar_at_far_1e-3": 100 * result.tar_at_far["0.001"], "family_far": family_far,
                                 "frr": frr, "wall_s": wall, "samples_per_s": summary["samples_per_s"] or 0.0,
                                 "rows_read": rows_read_pct(where / "run", spec.identities)})
                rows.append(_row(name, mode, head, runs, spec))
                per_run[name] = runs
    params = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("modes", "heads")}
    result = report("train-quality", params, rows)  # the figures' table; the paired differences get their own
    differences = paired_differences(rows, per_run)
    if differences:
        print_table(f"paired by training seed over {spec.runs} runs: mean difference ± standard error, points",
                    differences, list(dict.fromkeys(key for row in differences for key in row)))
    if json_path:
        write_json_atomic(json_path, result)
    return result


def _row(name: str, mode: str, head: str, runs: list[dict], spec: TrainQualitySpec) -> dict:
    """One contender's row: each figure's mean over its runs; with several runs, the spread and the runs."""
    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    row = {"name": name, "mode": mode, "head": head,
           "val_top1": round(mean("val_top1"), 2), "verify_acc": round(mean("verify_acc"), 2),
           "tar_at_far_1e-3": round(mean("tar_at_far_1e-3"), 2), "family_far": round(mean("family_far"), 2),
           "frr": round(mean("frr"), 2), "wall_s": round(mean("wall_s"), 1),
           "samples_per_s": round(mean("samples_per_s"), 1),
           "active": spec.identities if mode == "full" else spec.sample_num,
           "rows_read": round(mean("rows_read"), 1)}
    if len(runs) > 1:
        for key in ("val_top1", "verify_acc"):
            row[f"{key}_sd"] = round(statistics.stdev(r[key] for r in runs), 2)
            row[f"{key}_runs"] = [round(r[key], 2) for r in runs]
    return row


def paired_differences(rows: list[dict], per_run: dict[str, list[dict]]) -> list[dict]:
    """Add to each row (in place) its differences from the full and random rows of its head, run by run
    (the same training seeds): `<figure>_vs_<mode>` the mean, `<figure>_vs_<mode>_se` its standard error;
    returns them as printable rows ("+1.23 ± 0.45"); none without several runs or a reference row."""
    printable = []
    for row in rows:
        shown = {"name": row["name"]}
        for ref in REFERENCES:
            base = per_run.get(f"{ref}/{row['head']}")
            mine = per_run[row["name"]]
            if row["mode"] == ref or base is None or len(mine) < 2:
                continue
            for key in PAIRED_KEYS:
                diffs = [a[key] - b[key] for a, b in zip(mine, base, strict=True)]
                mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
                row[f"{key}_vs_{ref}"], row[f"{key}_vs_{ref}_se"] = round(mean, 2), round(se, 2)
                shown[f"{key} − {ref}"] = f"{mean:+.2f} ± {se:.2f}"
        if len(shown) > 1:
            printable.append(shown)
    return printable


def rows_read_pct(run_dir: Path, classes: int) -> float:
    """Rows a training step of the run in `run_dir` read, as % of `classes`: the logged per-step means of the
    active classes and the tail rows past them (full mode logs none: it reads every row)."""
    from dcs_cli.train.metrics import read_metrics

    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train" and "active" in r]
    if not train:
        return 100.0
    return 100 * statistics.fmean(r["active"] + r.get("tail", 0) for r in train) / classes


def error_rates(features, issame, family_pairs: list[int], threshold: float) -> tuple[float, float]:
    """(% of the family-mate pairs `family_pairs` accepted, % of the same-identity pairs rejected) when a
    pair is accepted below `threshold` (squared distance of the normalised embeddings, as `evaluate`); the
    first is NaN (JSON null) without family-mate pairs."""
    import numpy as np

    from dcs_cli.eval.verify import pair_distances

    accept = pair_distances(features) < threshold
    same = np.asarray(issame, dtype=bool)
    family_far = 100 * float(accept[family_pairs].mean()) if len(family_pairs) else float("nan")
    return family_far, 100 * float((~accept[same]).mean())
