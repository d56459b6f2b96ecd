"""`dcs convert`: .rec/.idx → images + train/val lists; images + list → .rec/.idx; .bin → pair images.

    dcs convert --in-folder data/faces_emore --out-folder data/emore --val-ratio 0.05 --workers 8
    dcs convert --to-rec --list data/emore/train_list.txt --root data/emore/images --out-folder data/repacked
    dcs convert --bin data/lfw.bin --out-folder data/lfw_images

Exactly one of --in-folder, --to-rec or --bin; the work is `rec_to_images`, `list_to_rec` or
`bin_to_images` (`dcs_cli.data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import OverwriteOpt, seed_value
from dcs_cli.console import print_table
from dcs_cli.errors import UsageError

_PathOpt = Optional[Path]


def _mode(in_folder, to_rec, list_file, root, bin_path, val_ratio) -> str:
    """Which of the three conversions the flags ask for; contradictions are UsageErrors."""
    chosen = [name for name, on in (("--in-folder", in_folder), ("--to-rec", to_rec), ("--bin", bin_path)) if on]
    if not chosen and (list_file or root):
        raise UsageError("--list/--root pack images into a .rec only with --to-rec: add --to-rec")
    if len(chosen) != 1:
        raise UsageError("choose exactly one of --in-folder DIR (rec → images), --to-rec --list LIST --root "
                         f"ROOT (images → rec) or --bin FILE (.bin → images); got {', '.join(chosen) or 'none'}")
    mode = chosen[0]
    if mode != "--to-rec" and (list_file or root):
        raise UsageError(f"--list/--root only go with --to-rec, not with {mode}")
    if mode == "--to-rec" and not (list_file and root):
        raise UsageError("--to-rec needs --list LIST and --root ROOT (the folder the list's paths start from)")
    if mode != "--in-folder" and val_ratio is not None:
        raise UsageError(f"--val-ratio only applies to --in-folder, not to {mode}")
    if val_ratio is not None and not 0.0 <= val_ratio < 1.0:
        raise UsageError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    return mode


def convert(
    out_folder: Annotated[Path, typer.Option("--out-folder", "-o", help="Folder to write.", show_default=False)],
    in_folder: Annotated[_PathOpt, typer.Option("--in-folder", "-i", show_default=False,
                                                help="Folder with train.rec/train.idx (or its .rec or .idx).")] = None,
    val_ratio: Annotated[Optional[float], typer.Option(
        "--val-ratio", help="Share of each identity's images for val_list.txt (default 0.05).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/val split.", callback=seed_value)] = 0,
    workers: Annotated[int, typer.Option(
        "--workers", "-j", help="Writer threads; 0 = 2 per core (max 16); more on NFS/Lustre.")] = 0,
    to_rec: Annotated[bool, typer.Option("--to-rec", help="Pack images + a list file into train.rec/.idx.")] = False,
    list_file: Annotated[_PathOpt, typer.Option("--list", help="List file (`path label`) for --to-rec.",
                                                show_default=False)] = None,
    root: Annotated[_PathOpt, typer.Option("--root", help="Folder the list's paths are relative to.",
                                           show_default=False)] = None,
    bin_path: Annotated[_PathOpt, typer.Option("--bin", help="Verification .bin to unpack into pair images.",
                                               show_default=False)] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert between InsightFace .rec/.idx, image folders with list files, and .bin pair sets.

    Images are copied byte for byte, never re-encoded. OUT/meta.json marks a finished folder.
    """
    if workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    mode = _mode(in_folder, to_rec, list_file, root, bin_path, val_ratio)
    if mode == "--in-folder":
        from dcs_cli.data.convert import rec_to_images

        row = rec_to_images(in_folder, out_folder, 0.05 if val_ratio is None else val_ratio, seed, workers,
                            overwrite)
    elif mode == "--to-rec":
        from dcs_cli.data.to_rec import list_to_rec

        row = list_to_rec(list_file, root, out_folder, workers, overwrite)
    else:
        from dcs_cli.data.bin_images import bin_to_images

        row = bin_to_images(bin_path, out_folder, overwrite)
    # One field per line: the output path makes a one-row table too wide for most terminals.
    print_table("dcs convert", [{"field": k, "value": v} for k, v in row.items()])


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
