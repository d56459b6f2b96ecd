"""`dcs demo`: the whole pipeline on built-in synthetic data.

    dcs demo --out-folder demo_out
    dcs demo --identities 100 --epochs 1 --large-classes 0 --keep -o demo_small

The work is `dcs_cli.demo.run_demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out_folder: Annotated[Path, typer.Option("--out-folder", "-o", help="Folder for every artifact.")] = Path(
        "demo_out"),
    identities: Annotated[int, typer.Option(help="Synthetic identities (classes).")] = 500,
    images_per_identity: Annotated[int, typer.Option(help="Training images per identity.")] = 10,
    epochs: Annotated[int, typer.Option(help="Training epochs per mode.")] = 3,
    sample_num: Annotated[int, typer.Option(help="Active classes per step in the sampled (ivf) run.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    pairs: Annotated[int, typer.Option(help="Held-out verification pairs.")] = 600,
    large_classes: Annotated[int, typer.Option(help="Classes of the large-class speed stage; 0 skips it.")] = 100_000,
    large_sample_num: Annotated[int, typer.Option(help="Active classes per step in the large-class stage.")] = 5_000,
    overwrite: Annotated[bool, typer.Option("--overwrite/--keep", help="Replace an earlier demo's folder.")] = True,
) -> None:
    """Synthesize face-like data, convert, train sampled (ivf) and full softmax, extract, verify; then time the
    classifier step of both at 100k classes; compare."""
    from dcs_cli.demo import DemoSpec, run_demo

    spec = DemoSpec(identities=identities, images_per_identity=images_per_identity, epochs=epochs,
                    sample_num=sample_num, batch_size=batch_size, pairs=pairs, large_classes=large_classes,
                    large_sample_num=large_sample_num)
    run_demo(out_folder, spec, overwrite=overwrite)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
