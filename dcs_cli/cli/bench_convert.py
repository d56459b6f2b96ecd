"""`dcs bench convert`: the command's options; the work is `dcs_cli.bench.convert.run_convert_bench`.

    dcs bench convert --images 20000 --rounds 3 --json convert.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.cli.options import JsonOpt


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("convert")
    def convert(
        images: Annotated[int, typer.Option("--images", help="Synthetic 112×112 JPEGs in the .rec.")] = 20000,
        workers: Annotated[int, typer.Option("--workers", "-j", help="dcs convert writer threads; 0 = auto.")] = 0,
        rounds: Annotated[int, typer.Option(
            "--rounds", help="Interleaved rounds of all contenders; figures are medians over rounds.")] = 3,
        baseline_images: Annotated[int, typer.Option(
            "--baseline-images", help="Images the (slow) baseline times; 0 = all, like dcs.")] = 0,
        workdir: Annotated[Optional[Path], typer.Option(
            "--workdir", help="Where the temporary data go (default: the system temp folder); its file "
            "system decides the figures.", show_default=False)] = None,
        json_path: JsonOpt = None,
    ) -> None:
        """dcs convert vs a Pillow decode-and-re-encode loop (and the file system's floor): images/s, ratios."""
        from dcs_cli.bench.convert import run_convert_bench

        run_convert_bench(images, workers, baseline_images, json_path, workdir, rounds)
