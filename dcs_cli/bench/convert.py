"""`dcs bench convert`: dcs convert vs a straightforward Pillow decode-and-re-encode loop, same images.

    dcs bench convert --images 20000 --rounds 3 --json convert.json

Every contender starts from the same synthetic InsightFace `.rec` (112×112 JPEGs) in a temporary folder
and writes one file per image into the same file system:
- `dcs convert` itself (`rec_to_images`: images, lists, meta.json);
- the baseline, what converters that go through an image library do: decode every JPEG and encode it
  again (lossy) with Pillow, one image after another;
- a write-only floor: the record bytes written one file at a time by the plainest loop (one thread, no
  lists, no checks). It is not a converter; it shows what creating the files costs on this file system,
  which bounds every converter's speed there.

A file system's speed at creating files drifts (on ext4 it depends on how many files were deleted in the
last minutes), so the contenders run in `--rounds` interleaved rounds, each into fresh folders, nothing
deleted until the end; the order rotates every round. Each figure is the median over rounds, and the
speedup is the median of the per-round ratios, so both sides of a ratio saw the same conditions.
`bytes_identical` is the share of the first round's files equal to their record payload.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from dcs_cli.bench.common import peak_rss_mb, report
from dcs_cli.console import info, progress_bar
from dcs_cli.data.convert import rec_to_images
from dcs_cli.data.images import image_ext
from dcs_cli.data.layout import ImageTable, read_table
from dcs_cli.data.listfile import read_list
from dcs_cli.data.outfolder import default_workers
from dcs_cli.data.synthetic_rec import write_synthetic_rec
from dcs_cli.errors import UsageError

_PER_IDENTITY = 20
DCS, BASELINE, FLOOR = "dcs convert", "Pillow decode + re-encode loop", "write-only floor (1 thread)"


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


def _floor(table: ImageTable, out: Path) -> float:
    """The same files as dcs writes, by the plainest loop (mkdir per label, open/write/close); seconds."""
    start = time.perf_counter()
    made: set[int] = set()
    labels, keys = table.labels.tolist(), table.keys.tolist()
    for i, (label, key) in enumerate(zip(labels, keys, strict=True)):
        if label not in made:
            os.makedirs(out / str(label), exist_ok=True)
            made.add(label)
        payload = table.payload(i)
        with open(out / str(label) / f"{key}.{image_ext(payload)}", "wb") as fh:
            fh.write(payload)
    return time.perf_counter() - start


def _identical_share(table: ImageTable, images_dir: Path, rels: list[str], index_of_key: dict) -> float:
    same = 0
    for rel in rels:
        key = int(Path(rel).stem)
        same += (images_dir / rel).read_bytes() == table.payload(index_of_key[key])
    return same / max(1, len(rels))


def filesystem_of(path: Path) -> str:
    """"ext4 on /" for the mount holding `path` (from /proc/self/mounts; "unknown" elsewhere)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target = str(path.resolve())
    best = ("", "unknown")
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return f"{best[1]} on {best[0]}" if best[0] else "unknown"


def run_convert_bench(images: int, workers: int, baseline_images: int, json_path: Path | None,
                      workdir: Path | None = None, rounds: int = 3) -> dict:
    if images < 1 or baseline_images < 0 or workers < 0 or rounds < 1:
        raise UsageError("--images and --rounds must be >= 1, --baseline-images and --workers >= 0")
    identities = max(1, images // _PER_IDENTITY)
    images = identities * _PER_IDENTITY
    if workdir is not None:
        if workdir.exists() and not workdir.is_dir():
            raise UsageError(f"--workdir {workdir} is a file; give a folder for the temporary data")
        workdir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, list[float]] = {DCS: [], BASELINE: [], FLOOR: []}
    with tempfile.TemporaryDirectory(prefix="dcs-bench-convert-", dir=workdir) as tmp:
        tmp = Path(tmp)
        filesystem = filesystem_of(tmp)
        info(f"writing a synthetic .rec of {images:,} 112×112 JPEGs ({identities:,} identities) on {filesystem}")
        write_synthetic_rec(tmp / "rec", identities, _PER_IDENTITY, 112, seed=0)
        rec_bytes = (tmp / "rec" / "train.rec").stat().st_size
        table = read_table(tmp / "rec")
        n_base = min(baseline_images or len(table), len(table))
        os.sync()  # the fresh .rec's dirty pages are nobody's cost

        def run_dcs(r: int) -> float:
            return rec_to_images(tmp / "rec", tmp / f"dcs{r}", val_ratio=0.05, seed=0, workers=workers)["seconds"]

        contenders = {DCS: run_dcs, BASELINE: lambda r: _baseline(table, tmp / f"baseline{r}", n_base),
                      FLOOR: lambda r: _floor(table, tmp / f"floor{r}")}
        order = list(contenders)
        for r in range(rounds):
            info(f"round {r + 1}/{rounds}: " + ", then ".join(order))
            for name in order:
                seconds[name].append(contenders[name](r))
            order = order[1:] + order[:1]

        index_of_key = {int(k): i for i, k in enumerate(table.keys)}
        rels = [rel for rel, _ in read_list(tmp / "dcs0" / "train_list.txt") + read_list(tmp / "dcs0" / "val_list.txt")]
        dcs_same = _identical_share(table, tmp / "dcs0" / "images", rels, index_of_key)
        base_rels = [f"{table.labels[i]}/{table.keys[i]}.jpg" for i in range(n_base)]
        base_same = _identical_share(table, tmp / "baseline0", base_rels, index_of_key)
        info("removing the temporary files")

    workers = default_workers(workers)
    counts = {DCS: images, BASELINE: n_base, FLOOR: images}
    rates = {name: [counts[name] / s for s in secs] for name, secs in seconds.items()}
    rows = []
    for name, label in ((DCS, f"dcs convert (workers={workers})"), (BASELINE, BASELINE), (FLOOR, FLOOR)):
        ratios = [mine / base for mine, base in zip(rates[name], rates[BASELINE], strict=True)]
        rows.append({
            "name": label, "images": counts[name], "seconds": statistics.median(seconds[name]),
            "images_per_second": statistics.median(rates[name]), "speedup": statistics.median(ratios),
            "speedup_min": min(ratios), "speedup_max": max(ratios),
            "round_seconds": [round(x, 3) for x in seconds[name]],
            "bytes_identical": {DCS: dcs_same, BASELINE: base_same, FLOOR: None}[name],
        })
    params = {"images": images, "image_size": 112, "identities": identities, "workers": workers,
              "baseline_images": n_base, "rounds": rounds, "filesystem": filesystem,
              "rec_mb": round(rec_bytes / 2**20, 1), "peak_rss_mb": round(peak_rss_mb())}
    return report("convert", params, rows, json_path, cpu_only=True)

