"""`.rec` → image files + train/val lists, without re-encoding a single image.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name)
    >>> _ = write_synthetic_rec(folder / "faces", num_identities=3, images_per_identity=4, image_size=16)
    >>> summary = rec_to_images(folder / "faces", folder / "images", val_ratio=0.25, seed=0, workers=1)
    >>> summary["layout"], summary["images"], summary["train"], summary["val"]
    ('insightface', 12, 9, 3)
    >>> (folder / "images" / "val_list.txt").read_text().splitlines()   # `path label`, per identity
    ['0/1.jpg 0', '1/6.jpg 1', '2/9.jpg 2']
    >>> tmp.cleanup()

Writes OUT/images/<label>/<key>.<ext> (the record payload byte for byte; <key> is the record key, so every
file traces back to its record), OUT/train_list.txt and OUT/val_list.txt (`path label`, paths relative to
OUT/images) and finally OUT/meta.json, the marker of a finished folder. The split is per identity and
deterministic for a seed; every identity keeps at least one training image. From the shell:

    dcs convert --in-folder DIR --out-folder OUT --val-ratio 0.05 --seed 0
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from dcs_cli.console import progress_bar
from dcs_cli.data.images import image_ext
from dcs_cli.data.layout import ImageTable, read_table
from dcs_cli.data.listfile import write_list
from dcs_cli.data.outfolder import default_workers, finish_output, prepare_output, write_file
from dcs_cli.errors import DataError, UsageError

_CHUNK = 512


def split_per_identity(labels: np.ndarray, val_ratio: float, seed: int) -> np.ndarray:
    """Boolean mask of validation images: about `val_ratio` of each identity, never its last image.

    Each identity of n images gives floor(n * val_ratio + u) images to validation (u uniform in [0, 1):
    unbiased rounding, so small identities still contribute on average), capped at n - 1; which images
    go is a seeded random choice. Vectorised, so millions of images split in well under a second.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise UsageError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    n = len(labels)
    is_val = np.zeros(n, dtype=bool)
    if n == 0 or val_ratio == 0:
        return is_val
    rng = np.random.default_rng(seed)
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_val = np.minimum(counts - 1, np.floor(counts * val_ratio + rng.random(len(uniq))).astype(np.int64))
    order = np.lexsort((rng.random(n), inverse))  # by identity, random within it
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(first, counts)
    is_val = rank < n_val[inverse]
    return is_val


def _write_chunk(table: ImageTable, images_fd: int, indices: range) -> list[str]:
    """Write images `indices` (label folders made on first use); their relative paths back."""
    rels = []
    lo, hi = indices.start, indices.stop
    keys, labels = table.keys[lo:hi].tolist(), table.labels[lo:hi].tolist()
    starts, ends = table.data_start[lo:hi].tolist(), table.data_end[lo:hi].tolist()
    view = memoryview(table.reader.buffer)
    dir_fds: dict[int, int] = {}
    try:
        for i, key, label, start, end in zip(indices, keys, labels, starts, ends, strict=True):
            # straight from the mapped .rec (no copy); the rare multi-part record is assembled first
            payload = view[start:end] if start >= 0 else table.payload(i)
            try:
                ext = image_ext(payload)
            except DataError as exc:
                raise DataError(f"{table.reader.rec_path}: record key {key}: {exc}") from None
            dir_fd = dir_fds.get(label)
            if dir_fd is None:
                dir_fd = dir_fds[label] = _open_label_dir(images_fd, str(label))
            name = f"{key}.{ext}"
            write_file(name, payload, dir_fd=dir_fd)
            rels.append(f"{label}/{name}")
    finally:
        for fd in dir_fds.values():
            os.close(fd)
        view.release()
    return rels


def _open_label_dir(images_fd: int, name: str) -> int:
    """Create images/<label> (another worker may be creating it too) and open it."""
    try:
        os.mkdir(name, 0o755, dir_fd=images_fd)
    except FileExistsError:
        pass
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=images_fd)


def write_images(table: ImageTable, out_images: Path, workers: int) -> list[str]:
    """Write every payload to out_images/<label>/<key>.<ext> with `workers` threads; relative paths back.

    The workers also create the label folders as they reach them, so making 10^5 folders overlaps the
    writing instead of preceding it.
    """
    out_images.mkdir(parents=True, exist_ok=True)
    chunks = [range(s, min(s + _CHUNK, len(table))) for s in range(0, len(table), _CHUNK)]
    rels: list[list[str] | None] = [None] * len(chunks)
    images_fd = os.open(out_images, os.O_RDONLY | os.O_DIRECTORY)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dcs-convert")
    try:
        with progress_bar("writing images", total=len(table), unit="images") as advance:
            futures = {pool.submit(_write_chunk, table, images_fd, c): j for j, c in enumerate(chunks)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for fut in done:
                    rels[futures[fut]] = fut.result()  # re-raises a worker's DataError here
                    advance(len(chunks[futures[fut]]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.close(images_fd)
    return [rel for chunk in rels for rel in chunk]


def rec_to_images(in_folder: str | os.PathLike, out_folder: str | os.PathLike, val_ratio: float = 0.05,
                  seed: int = 0, workers: int = 0, overwrite: bool = False) -> dict:
    """Convert a `.rec` (any layout `read_table` knows) into image files and lists; returns the summary."""
    start = time.perf_counter()
    if not 0.0 <= val_ratio < 1.0:
        raise UsageError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    table = read_table(in_folder)
    out = prepare_output(out_folder, overwrite, ["images", "train_list.txt", "val_list.txt"],
                         inputs=[in_folder])
    workers = default_workers(workers)
    rels = write_images(table, out / "images", workers)
    is_val = split_per_identity(table.labels, val_ratio, seed)
    labels = table.labels.tolist()
    write_list(out / "train_list.txt", [(r, lab) for r, lab, v in zip(rels, labels, is_val, strict=True) if not v])
    write_list(out / "val_list.txt", [(r, lab) for r, lab, v in zip(rels, labels, is_val, strict=True) if v])
    counts = np.bincount(table.labels, minlength=table.num_classes)
    seconds = time.perf_counter() - start
    meta = {
        "kind": "rec-to-images",
        "images": len(table),
        "classes": int(np.count_nonzero(counts)),
        "num_classes": table.num_classes,
        "train_images": int(len(table) - is_val.sum()),
        "val_images": int(is_val.sum()),
        "val_ratio": val_ratio,
        "seed": seed,
        "layout": table.layout,
        "counts": counts.tolist(),
        "ranges": table.ranges.tolist() if table.ranges is not None else None,
        "source": table.source,
        "images_dir": "images",
        "train_list": "train_list.txt",
        "val_list": "val_list.txt",
    }
    finish_output(out, meta)
    return {"output": str(out), "layout": table.layout, "images": len(table), "classes": meta["classes"],
            "train": meta["train_images"], "val": meta["val_images"], "workers": workers,
            "seconds": seconds, "images_per_second": len(table) / seconds if seconds > 0 else 0.0}
