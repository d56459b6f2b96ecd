"""Image files + a list file → InsightFace-layout train.rec/train.idx (the way back from `dcs convert`).

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.convert import rec_to_images
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name)
    >>> _ = write_synthetic_rec(folder / "faces", 2, 3, image_size=16)
    >>> _ = rec_to_images(folder / "faces", folder / "out", val_ratio=0.0)     # images + train_list.txt
    >>> summary = list_to_rec(folder / "out" / "train_list.txt", folder / "out" / "images", folder / "repacked")
    >>> summary["images"], summary["classes"], sorted(p.name for p in (folder / "repacked").glob("train.*"))
    (6, 2, ['train.idx', 'train.rec'])
    >>> tmp.cleanup()

Images are stored as their file bytes (no re-encode). Records are grouped by label, as the InsightFace
layout requires (identity i owns one contiguous key range), so labels must be 0..C-1 without gaps.
From the shell:

    dcs convert --to-rec --list LIST --root ROOT --out-folder OUT
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dcs_cli.console import progress_bar
from dcs_cli.data.images import image_ext
from dcs_cli.data.listfile import read_list
from dcs_cli.data.outfolder import default_workers, finish_output, prepare_output
from dcs_cli.data.recordio import MAX_EXACT_KEY, RecordWriter, pack_image_record
from dcs_cli.errors import DataError

_WINDOW = 2048


def _read(path: Path) -> bytes | OSError:
    """The file's bytes, or the OSError, so the caller can name the list entry that points at it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


def list_to_rec(list_path: str | os.PathLike, root: str | os.PathLike, out_folder: str | os.PathLike,
                workers: int = 0, overwrite: bool = False) -> dict:
    """Pack the list's images into OUT/train.rec + train.idx (InsightFace layout); returns the summary."""
    start = time.perf_counter()
    list_path, root = Path(list_path), Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: --root must be the folder the list's paths are relative to")
    entries = read_list(list_path)
    if not entries:
        raise DataError(f"{list_path}: the list is empty; nothing to pack")
    labels = np.asarray([label for _, label in entries], dtype=np.int64)
    if labels.max() >= MAX_EXACT_KEY:
        raise DataError(f"{list_path}: label {labels.max()} exceeds {MAX_EXACT_KEY - 1:,}, the largest a "
                        "RecordIO float32 label holds exactly")
    counts = np.bincount(labels)
    if len(entries) + len(counts) >= MAX_EXACT_KEY:  # the keys of the last identity's record and its range
        raise DataError(f"{list_path}: {len(entries):,} images and {len(counts):,} identities need record keys "
                        f"past {MAX_EXACT_KEY - 1:,}, the largest the InsightFace header's float32 ranges hold "
                        "exactly; train from the list itself (data.source: list), which has no such limit")
    if (counts == 0).any():
        gap = int(np.nonzero(counts == 0)[0][0])
        raise DataError(f"{list_path}: label {gap} has no images, but the InsightFace layout needs labels "
                        f"0..{len(counts) - 1} without gaps; renumber the labels")
    order = np.argsort(labels, kind="stable")
    out = prepare_output(out_folder, overwrite, ["train.rec", "train.idx"], inputs=[list_path, root])
    n, classes = len(entries), len(counts)
    first_identity_key = n + 1
    paths = [root / entries[i][0] for i in order]
    pool = ThreadPoolExecutor(max_workers=default_workers(workers), thread_name_prefix="dcs-to-rec")
    try:
        with RecordWriter(out / "train.rec", out / "train.idx") as writer, \
                progress_bar("packing images", total=n, unit="images") as advance:
            writer.write(0, pack_image_record([first_identity_key, first_identity_key + classes], b""))
            key = 1
            for w in range(0, n, _WINDOW):
                # Read a window of files in parallel (order kept), write them sequentially.
                for j, payload in enumerate(pool.map(_read, paths[w:w + _WINDOW])):
                    if isinstance(payload, OSError):
                        entry = int(order[w + j])
                        raise DataError(f"{list_path}: entry {entry + 1} ({entries[entry][0]}): cannot read "
                                        f"{paths[w + j]} ({payload.strerror}); fix the list or --root")
                    try:
                        image_ext(payload)
                    except DataError as exc:
                        raise DataError(f"{paths[w + j]}: {exc}") from None
                    writer.write(key, pack_image_record(float(labels[order[w + j]]), payload, id=key))
                    key += 1
                advance(min(_WINDOW, n - w))
            ends = 1 + np.cumsum(counts)
            for c in range(classes):
                writer.write(first_identity_key + c, pack_image_record([int(ends[c] - counts[c]), int(ends[c])], b""))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    finish_output(out, {
        "kind": "list-to-rec", "images": n, "classes": classes, "counts": counts.tolist(),
        "source": {"list": str(list_path), "root": str(root)}, "rec": "train.rec", "idx": "train.idx",
    })
    return {"output": str(out), "layout": "insightface", "images": n, "classes": classes,
            "seconds": seconds, "images_per_second": n / seconds if seconds > 0 else 0.0}
