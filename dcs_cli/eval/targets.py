"""Verify one or many targets (features `.npy` + the `.bin` they came from) into a table, JSON and ROC PNG.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name)
    >>> _ = write_synthetic_rec(folder / "data", 2, 1, image_size=16, pairs=20)   # data/pairs.bin
    >>> (folder / "feats").mkdir()
    >>> np.save(folder / "feats" / "pairs.npy", np.random.default_rng(0).standard_normal((40, 8)))
    >>> targets = match_targets(folder / "feats", folder / "data")   # every feats/<name>.npy with a data/<name>.bin
    >>> [name for name, _, _ in targets]
    ['pairs']
    >>> figures = verify_targets(targets, folds=2, plot=folder / "roc.png", json_path=folder / "verify.json")
    dcs verify (2-fold, squared L2 of normalised features)
    ...
    >>> figures["pairs"]["pairs"], sorted(p.name for p in folder.glob("*.*"))
    (20, ['roc.png', 'verify.json'])
    >>> tmp.cleanup()

`dcs verify --features F.npy --bin F.bin` verifies one target, `--features-dir D --bin-dir B` every
match; the table has metrics down and targets across, so several targets fit an 80-column terminal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcs_cli.console import print_table, warn
from dcs_cli.errors import DataError
from dcs_cli.eval.verify import check_pair_kinds, evaluate
from dcs_cli.fsutil import missing, write_json_atomic

NPY_MAGIC = b"\x93NUMPY"


def load_features(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        hint = "pass a folder of them with --features-dir" if path.is_dir() else "run `dcs extract` first"
        raise DataError(f"features file {path} {missing(path)}; {hint}")
    with open(path, "rb") as fh:
        magic = fh.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:  # np.load would call any other file "pickled data"
        raise DataError(f"{path}: not a .npy file (it does not start with the NumPy header); pass the "
                        "features that `dcs extract` wrote")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def load_issame(path: str | Path) -> np.ndarray:
    from dcs_cli.data.binfile import read_bin

    _, issame = read_bin(path)
    if issame.size == 0:
        raise DataError(f"{path}: the .bin holds no pairs; verification needs a .bin with issame labels")
    check_pair_kinds(issame, str(path))
    return issame


def match_targets(features_dir: str | Path, bin_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, features, bin) for every `<features_dir>/<name>.npy` that has a `<bin_dir>/<name>.bin`."""
    features_dir, bin_dir = Path(features_dir), Path(bin_dir)
    for folder, flag in ((features_dir, "--features-dir"), (bin_dir, "--bin-dir")):
        if not folder.is_dir():
            raise DataError(f"{flag} {folder} {missing(folder, folder=True)}; pass a folder")
    found, unmatched = [], []
    for npy in sorted(features_dir.glob("*.npy")):
        if npy.name.endswith(".labels.npy"):
            continue
        bin_path = bin_dir / f"{npy.stem}.bin"
        if bin_path.is_file():
            found.append((npy.stem, npy, bin_path))
        elif not npy.with_name(f"{npy.stem}.labels.npy").exists():  # a --list's features have no pairs
            unmatched.append(npy.name)
    if not found:
        raise DataError(f"no <name>.npy in {features_dir} has a matching <name>.bin in {bin_dir}; "
                        "extract with `dcs extract --bin <bin-dir>/<name>.bin --out-dir <features-dir>`")
    if unmatched:
        warn(f"{features_dir}: {', '.join(unmatched)} not verified: no .bin of the same name in {bin_dir}")
    recorded = _recorded_names(features_dir)
    unrecorded = [npy.name for _, npy, _ in found if npy.name not in recorded]
    if unrecorded:
        warn(f"{features_dir}: {', '.join(unrecorded)} not recorded in its extract.json (left by another "
             "extraction or copied in?); their figures may come from another checkpoint")
    return found


def recorded_files(folder: Path, targets: dict) -> list[Path]:
    """The files of `folder` that an extract.json's `targets` says dcs wrote there: <name>.npy and a list's
    <name>.labels.npy; a name that is not a plain file name is skipped."""
    files = []
    for name, entry in targets.items():
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            continue
        names = [f"{name}.npy"]
        if isinstance(entry, dict) and entry.get("labels") == f"{name}.labels.npy":
            names.append(entry["labels"])
        files += [folder / f for f in names if (folder / f).is_file()]
    return files


def _recorded_names(features_dir: Path) -> set[str]:
    """The names of the files the folder's extract.json records; every .npy there when it has none."""
    try:
        record = json.loads((features_dir / "extract.json").read_text())
    except (OSError, ValueError):
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("targets"), dict)):
        return {npy.name for npy in features_dir.glob("*.npy")}
    return {path.name for path in recorded_files(features_dir, record["targets"])}


def result_column(result) -> dict[str, str]:
    """One target's figures as table cells: percentages with their std over folds."""
    cells = {"pairs": str(result.pairs),
             "accuracy %": f"{100 * result.accuracy:.2f} ± {100 * result.accuracy_std:.2f}",
             "best threshold": f"{result.threshold:.3f}",
             "VAL@FAR=1e-3 %": f"{100 * result.val:.2f} ± {100 * result.val_std:.2f}",
             "FAR at VAL threshold": f"{result.far:.2e}",
             "AUC": f"{result.auc:.4f}", "EER %": f"{100 * result.eer:.2f}"}
    cells.update({f"TAR@FAR={far}": f"{tar:.4f}" for far, tar in result.tar_at_far.items()})
    return cells


def table_rows(columns: dict[str, dict[str, str]]) -> list[dict]:
    """Metrics down, targets across: several targets still fit an 80-column terminal."""
    metrics = next(iter(columns.values())).keys()
    return [{"metric": m, **{name: cells[m] for name, cells in columns.items()}} for m in metrics]


def verify_targets(targets: list[tuple[str, Path, Path]], folds: int = 10, plot: str | Path | None = None,
                   json_path: str | Path | None = None) -> dict[str, dict]:
    """Evaluate each target, print one table, write JSON and one ROC PNG with a curve per target.

    Returns {name: figures} as written to JSON (features, bin and every field of `VerifyResult`)."""
    columns, curves, details = {}, {}, {}
    for name, features_path, bin_path in targets:
        features = load_features(features_path)
        issame = load_issame(bin_path)
        result, (fpr, tpr) = evaluate(features, issame, folds, where=str(features_path))
        if result.pairs < 10 * folds:
            warn(f"{name}: only {result.pairs} pairs over {folds} folds; the figures are noisy")
        columns[name] = result_column(result)
        curves[name] = (fpr, tpr)
        details[name] = {"features": str(features_path), "bin": str(bin_path), **result.to_dict()}
    rows = table_rows(columns)
    print_table(f"dcs verify ({folds}-fold, squared L2 of normalised features)", rows)
    if plot:
        from dcs_cli.eval.roc_plot import plot_roc

        plot_roc(curves, plot, title="ROC: " + ", ".join(curves))
    if json_path:
        write_json_atomic(json_path, {"folds": folds, "targets": details})
    return details
