"""`dcs verify`: K-fold verification accuracy, VAL@FAR, AUC/EER/TAR and an ROC plot for pair sets.

    dcs verify --features feats/lfw.npy --bin data/lfw.bin --plot roc.png
    dcs verify --features-dir feats --bin-dir data --folds 10 --json verify.json

The work is `dcs_cli.eval.targets.verify_targets` (after `match_targets` for the folder form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import JsonOpt, output_file


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        features: Annotated[Optional[Path], typer.Option(help="Features .npy written by `dcs extract`.",
                                                         show_default=False)] = None,
        bin: Annotated[Optional[Path], typer.Option("--bin", help="The .bin pair set the features came from.",
                                                    show_default=False)] = None,
        features_dir: Annotated[Optional[Path], typer.Option(help="Folder of <name>.npy (verifies every one "
                                                             "with a <name>.bin in --bin-dir).",
                                                             show_default=False)] = None,
        bin_dir: Annotated[Optional[Path], typer.Option(help="Folder of <name>.bin pair sets.",
                                                        show_default=False)] = None,
        folds: Annotated[int, typer.Option(help="Cross-validation folds (file order, no shuffle).")] = 10,
        plot: Annotated[Optional[Path], typer.Option(help="Write the ROC curve(s) to this PNG.",
                                                     show_default=False, callback=output_file)] = None,
        json: JsonOpt = None,
    ) -> None:
        """Verification protocol of InsightFace: accuracy ± std, VAL@FAR=1e-3, AUC, EER, TAR@FAR."""
        from dcs_cli.errors import UsageError
        from dcs_cli.eval.targets import match_targets, verify_targets
        from dcs_cli.fsutil import check_outputs_apart

        single, many = (features, bin), (features_dir, bin_dir)
        if any(v is not None for v in single) and any(v is not None for v in many):
            raise UsageError("use either --features/--bin or --features-dir/--bin-dir, not both")
        if all(v is not None for v in single):
            targets = [(features.stem, features, bin)]
        elif all(v is not None for v in many):
            targets = match_targets(features_dir, bin_dir)
        else:
            raise UsageError("pass --features F.npy with --bin F.bin, or --features-dir D with --bin-dir B")
        check_outputs_apart({"--plot": plot, "--json": json},
                            [path for _, feats, pairs in targets for path in (feats, pairs)])
        verify_targets(targets, folds=folds, plot=plot, json_path=json)
