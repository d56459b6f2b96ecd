"""A `.bin` verification set → its pair images as files plus `pairs.txt`.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name)
    >>> _ = write_synthetic_rec(folder / "data", 2, 1, image_size=16, pairs=2)   # data/pairs.bin: 2 pairs
    >>> summary = bin_to_images(folder / "data" / "pairs.bin", folder / "lfw")
    >>> summary["pairs"], summary["images"], summary["same"]
    (2, 4, 1)
    >>> (folder / "lfw" / "pairs.txt").read_text().splitlines()
    ['0.jpg 1.jpg 1', '2.jpg 3.jpg 0']
    >>> tmp.cleanup()

Writes OUT/images/<i>.<ext> (i = position in the .bin, bytes unchanged), OUT/pairs.txt with one
`path_a path_b issame` line per pair (paths relative to OUT/images, issame 1 or 0) and OUT/meta.json last.
From the shell:

    dcs convert --bin FILE --out-folder OUT
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dcs_cli.console import progress_bar
from dcs_cli.data.binfile import read_bin
from dcs_cli.data.images import image_ext
from dcs_cli.data.outfolder import finish_output, prepare_output, write_file
from dcs_cli.errors import DataError
from dcs_cli.fsutil import write_text_atomic


def bin_to_images(bin_path: str | os.PathLike, out_folder: str | os.PathLike, overwrite: bool = False) -> dict:
    start = time.perf_counter()
    bin_path = Path(bin_path)
    images, issame = read_bin(bin_path)
    out = prepare_output(out_folder, overwrite, ["images", "pairs.txt"], inputs=[bin_path])
    (out / "images").mkdir()
    rels = []
    with progress_bar("writing pair images", total=len(images), unit="images") as advance:
        for i, payload in enumerate(images):
            try:
                ext = image_ext(payload)
            except DataError as exc:
                raise DataError(f"{bin_path}: image {i}: {exc}") from None
            rel = f"{i}.{ext}"
            write_file(str(out / "images" / rel), payload)
            rels.append(rel)
            advance(1)
    lines = [f"{rels[2 * k]} {rels[2 * k + 1]} {int(same)}\n" for k, same in enumerate(issame)]
    write_text_atomic(out / "pairs.txt", "".join(lines))
    finish_output(out, {"kind": "bin-to-images", "pairs": len(issame), "images": len(images),
                        "same_pairs": int(issame.sum()), "source": {"bin": str(bin_path)},
                        "images_dir": "images", "pairs_file": "pairs.txt"})
    seconds = time.perf_counter() - start
    return {"output": str(out), "pairs": len(issame), "images": len(images), "same": int(issame.sum()),
            "seconds": seconds, "images_per_second": len(images) / seconds if seconds > 0 else 0.0}
