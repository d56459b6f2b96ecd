"""`dcs bench convert`: dcs convert vs a straightforward Pillow decode-and-re-encode loop, same images.

    dcs bench convert --images 20000 --json convert.json

Both contenders start from the same synthetic InsightFace `.rec` (112×112 JPEGs) in a temporary folder
and write one file per image. The baseline is what converters that go through an image library do:
decode every JPEG and encode it again (lossy). By default both convert every image, so both pay the same
file-system costs; `--baseline-images N` times only the baseline's first N images (quicker, but then the
baseline writes less and the file system may favour it). `bytes_identical` checks every
written file against its record payload.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from PIL import Image

from dcs_cli.bench.common import peak_rss_mb, report
from dcs_cli.cli.options import JsonOpt
from dcs_cli.console import info, progress_bar
from dcs_cli.data.convert import rec_to_images
from dcs_cli.data.layout import ImageTable, read_table
from dcs_cli.data.listfile import read_list
from dcs_cli.data.synthetic_rec import write_synthetic_rec
from dcs_cli.errors import UsageError

_PER_IDENTITY = 20


def _baseline(table: ImageTable, out: Path, count: int, quality: int = 95) -> float:
    """Decode + re-encode + write `count` images; returns seconds."""
    start = time.perf_counter()
    with progress_bar("baseline: decode + re-encode", total=count, unit="images") as advance:
        for i in range(count):
            folder = out / str(table.labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.open(io.BytesIO(table.payload(i))).convert("RGB")
            img.save(folder / f"{table.keys[i]}.jpg", format="JPEG", quality=quality)
            advance(1)
    return time.perf_counter() - start


def _identical_share(table: ImageTable, images_dir: Path, rels: list[str], index_of_key: dict) -> float:
    same = 0
    for rel in rels:
        key = int(Path(rel).stem)
        same += (images_dir / rel).read_bytes() == table.payload(index_of_key[key])
    return same / max(1, len(rels))


def run_convert_bench(images: int, workers: int, baseline_images: int, json_path: Path | None,
                      workdir: Path | None = None) -> dict:
    identities = max(1, images // _PER_IDENTITY)
    images = identities * _PER_IDENTITY
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dcs-bench-convert-", dir=workdir) as tmp:
        tmp = Path(tmp)
        info(f"writing a synthetic .rec of {images:,} 112×112 JPEGs ({identities:,} identities)")
        write_synthetic_rec(tmp / "rec", identities, _PER_IDENTITY, 112, seed=0)
        rec_bytes = (tmp / "rec" / "train.rec").stat().st_size

        # Flush the freshly written .rec first, so neither contender pays for the other's dirty pages.
        os.sync()
        dcs = rec_to_images(tmp / "rec", tmp / "dcs", val_ratio=0.05, seed=0, workers=workers)
        table = read_table(tmp / "rec")
        n_base = min(baseline_images or len(table), len(table))
        os.sync()
        base_seconds = _baseline(table, tmp / "baseline", n_base)

        index_of_key = {int(k): i for i, k in enumerate(table.keys)}
        rels = [rel for rel, _ in read_list(tmp / "dcs" / "train_list.txt") + read_list(tmp / "dcs" / "val_list.txt")]
        dcs_same = _identical_share(table, tmp / "dcs" / "images", rels, index_of_key)
        base_rels = [f"{table.labels[i]}/{table.keys[i]}.jpg" for i in range(n_base)]
        base_same = _identical_share(table, tmp / "baseline", base_rels, index_of_key)

    base_rate = n_base / base_seconds
    rows = [
        {"name": f"dcs convert (workers={dcs['workers']})", "images": dcs["images"], "seconds": dcs["seconds"],
         "images_per_second": dcs["images_per_second"], "speedup": dcs["images_per_second"] / base_rate,
         "bytes_identical": dcs_same},
        {"name": "Pillow decode + re-encode loop", "images": n_base, "seconds": base_seconds,
         "images_per_second": base_rate, "speedup": 1.0, "bytes_identical": base_same},
    ]
    params = {"images": images, "image_size": 112, "identities": identities, "workers": dcs["workers"],
              "baseline_images": n_base, "rec_mb": round(rec_bytes / 2**20, 1), "peak_rss_mb": round(peak_rss_mb())}
    return report("convert", params, rows, json_path)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("convert")
    def convert(
        images: Annotated[int, typer.Option("--images", help="Synthetic 112×112 JPEGs in the .rec.")] = 20000,
        workers: Annotated[int, typer.Option("--workers", "-j", help="dcs convert writer threads; 0 = auto.")] = 0,
        baseline_images: Annotated[int, typer.Option(
            "--baseline-images", help="Images the (slow) baseline times; 0 = all, like dcs.")] = 0,
        workdir: Annotated[Optional[Path], typer.Option(
            "--workdir", help="Where the temporary data go (default: the system temp folder).",
            show_default=False)] = None,
        json_path: JsonOpt = None,
    ) -> None:
        """dcs convert vs a Pillow decode-and-re-encode loop on a synthetic .rec: images/s and the ratio."""
        if images < 1 or baseline_images < 0 or workers < 0:
            raise UsageError("--images must be >= 1, --baseline-images and --workers >= 0")
        run_convert_bench(images, workers, baseline_images, json_path, workdir)
