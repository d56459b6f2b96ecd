"""`dcs extract`: backbone features of .bin pair sets (or a list of images) → .npy.

    dcs extract --checkpoint runs/x/checkpoints/epoch_030.pt --bin data/lfw.bin --bin data/cfp_fp.bin -o feats
    dcs extract --checkpoint backbone.pth --config configs/face_original.yaml --list LIST --root DIR -o feats

The work is `dcs_cli.eval.extract.extract(ExtractJob(...))`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import ConfigOpt, SetOpt


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract(
        checkpoint: Annotated[Path, typer.Option(help="Checkpoint of `dcs train`, or its run folder (the newest "
                                                 "checkpoint), or a bare backbone state_dict with --config.",
                                                 show_default=False)],
        out_dir: Annotated[Path, typer.Option("--out-dir", "--out-folder", "-o",
                                              help="Folder for <name>.npy (and extract.json).",
                                              show_default=False)],
        bin: Annotated[Optional[list[Path]], typer.Option("--bin", help="A .bin pair set (repeatable).",
                                                          show_default=False)] = None,
        list_file: Annotated[Optional[Path], typer.Option("--list", help="A list file (`path label` lines) of "
                                                          "your own images; writes <name>.npy + <name>.labels.npy.",
                                                          show_default=False)] = None,
        root: Annotated[Optional[Path], typer.Option(help="Folder the --list paths are relative to.",
                                                     show_default=False)] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Add the mirrored image's embedding "
                                           "(InsightFace protocol).")] = True,
        strict: Annotated[bool, typer.Option("--strict/--no-strict", help="Refuse checkpoints whose backbone "
                                             "keys differ; --no-strict loads the matching keys and lists "
                                             "the rest.")] = True,
        batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing <name>.npy files.")] = False,
    ) -> None:
        """Embeddings of every image, file order: D/<name>.npy float32 (2·pairs × feature_dim)."""
        from dcs_cli.errors import UsageError
        from dcs_cli.eval.extract import ExtractJob
        from dcs_cli.eval.extract import extract as run_extract

        if (list_file is None) != (root is None):
            raise UsageError("--list and --root go together: the list's paths are relative to --root")
        job = ExtractJob(checkpoint=checkpoint, out_dir=out_dir, bins=list(bin or []),
                         lists=[(list_file, root)] if list_file is not None else [], config=config,
                         overrides=list(set_ or []), flip=flip, strict=strict, batch_size=batch_size,
                         overwrite=overwrite)
        run_extract(job)
