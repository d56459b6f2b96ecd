"""A seeded synthetic face-like dataset in real InsightFace layout: train.rec/train.idx (+ pairs.bin).

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name) / "synth"
    >>> info = write_synthetic_rec(folder, num_identities=4, images_per_identity=3,
    ...                            image_size=32, seed=0, pairs=6)
    >>> info["images"], info["identities"], info["pairs"]
    (12, 4, 6)
    >>> sorted(p.name for p in folder.iterdir())
    ['pairs.bin', 'train.idx', 'train.rec']
    >>> tmp.cleanup()

Each identity owns a smooth colour pattern (a random low-resolution grid upsampled bicubically, plus a
few identity-specific bars); each image shifts it a few pixels, jitters brightness and contrast and adds
noise, then is JPEG-encoded. Identities are therefore learnable — a small CNN verifies them well above
chance — while no two images are equal. `pairs.bin` holds held-out images (fresh jitter, never in the
.rec) of the same identities: half same-identity pairs, half different.

Look-alike families (`family_size` > 1): identities come in families that share most of one pattern and
differ in a weaker identity-specific layer (the hard negatives a random subset of classes rarely holds).
Held-out identities (`held_out` > 0): the pairs come from that many further identities (whole families of
their own) that never appear in the .rec, half of the different-identity pairs being family-mates; the
summary's `family_pairs` lists their indices in pairs.bin.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dcs_cli.console import progress_bar
from dcs_cli.data.binfile import write_bin
from dcs_cli.data.images import encode_jpeg
from dcs_cli.data.recordio import RecordWriter, pack_image_record
from dcs_cli.errors import DataError

_GRID = 5
_NOISE_BANK = 8
_OWN_SHARE = 0.45  # weight of an identity's own grid against its family's (family_size > 1)


class _Painter:
    """Identity patterns and per-image jitter; one numpy Generator drives everything, so a seed fixes all."""

    def __init__(self, image_size: int, seed: int):
        self.size = image_size
        self.rng = np.random.default_rng(seed)
        # Reusing a small bank of noise fields (at random offsets) keeps per-image cost to a few array ops.
        self.noise = self.rng.normal(0, 10, (_NOISE_BANK, 2 * image_size, 2 * image_size, 3)).astype(np.int16)
        self.shift = max(1, image_size // 16)

    def pattern(self, identity: int, seed: int, family_size: int = 1) -> np.ndarray:
        rng = np.random.default_rng([seed, identity])
        grid = rng.integers(30, 226, (_GRID, _GRID, 3), dtype=np.uint8)
        if family_size > 1:  # the family's grid, with this identity's own grid mixed in weakly
            family = np.random.default_rng([seed, 1 << 40, identity // family_size])
            shared = family.integers(30, 226, (_GRID, _GRID, 3))
            grid = ((1 - _OWN_SHARE) * shared + _OWN_SHARE * grid).astype(np.uint8)
        base = np.asarray(Image.fromarray(grid, "RGB").resize((self.size, self.size), Image.BICUBIC),
                          dtype=np.int16)
        for _ in range(3):  # a few sharp bars give the pattern high-frequency identity cues too
            colour = rng.integers(0, 256, 3)
            if rng.random() < 0.5:
                r0 = int(rng.integers(0, self.size - self.size // 8))
                base[r0:r0 + self.size // 10] = colour
            else:
                c0 = int(rng.integers(0, self.size - self.size // 8))
                base[:, c0:c0 + self.size // 10] = colour
        return base

    def jitter(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        dy, dx = rng.integers(-self.shift, self.shift + 1, 2)
        img = np.roll(base, (int(dy), int(dx)), axis=(0, 1))
        k = int(rng.integers(_NOISE_BANK))
        oy, ox = rng.integers(0, self.size, 2)
        noise = self.noise[k, oy:oy + self.size, ox:ox + self.size]
        contrast = rng.uniform(0.8, 1.2)
        bright = rng.uniform(-20, 20)
        img = (img - 128) * contrast + 128 + bright + noise
        return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic_rec(folder: str | os.PathLike, num_identities: int, images_per_identity: int,
                        image_size: int = 112, seed: int = 0, pairs: int = 0, quality: int = 90,
                        family_size: int = 1, held_out: int = 0) -> dict:
    """Write train.rec/train.idx (InsightFace layout) and, if `pairs` > 0, pairs.bin; returns a summary."""
    if num_identities < 1 or images_per_identity < 1:
        raise DataError("synthetic data needs at least 1 identity and 1 image per identity")
    if family_size < 1 or held_out < 0:
        raise DataError("synthetic data needs family_size >= 1 and held_out >= 0")
    if pairs and (held_out or num_identities) < 2:
        raise DataError("synthetic pairs need at least 2 identities (half the pairs are different people)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    painter = _Painter(image_size, seed)
    n_images = num_identities * images_per_identity
    first_identity_key = 1 + n_images
    end_key = first_identity_key + num_identities
    rng = np.random.default_rng([seed, 1])
    with RecordWriter(folder / "train.rec", folder / "train.idx") as writer, \
            progress_bar("synthesizing", total=n_images, unit="images") as advance:
        writer.write(0, pack_image_record([first_identity_key, end_key], b""))
        key = 1
        for identity in range(num_identities):
            base = painter.pattern(identity, seed, family_size)
            for _ in range(images_per_identity):
                jpeg = encode_jpeg(painter.jitter(base, rng), quality)
                writer.write(key, pack_image_record(float(identity), jpeg, id=key))
                key += 1
            advance(images_per_identity)
        for identity in range(num_identities):
            start = 1 + identity * images_per_identity
            writer.write(first_identity_key + identity,
                         pack_image_record([start, start + images_per_identity], b""))
    info = {"rec": str(folder / "train.rec"), "idx": str(folder / "train.idx"), "images": n_images,
            "identities": num_identities, "image_size": image_size, "seed": seed, "family_size": family_size,
            "held_out": held_out}
    if pairs:
        # Held-out identities start at the next whole family, so no family straddles train and pairs.
        first = -(-num_identities // family_size) * family_size if held_out else 0
        pool = (first, held_out) if held_out else (0, num_identities)
        path, family_pairs = _write_pairs(folder / "pairs.bin", painter, pool, pairs, seed, quality, family_size)
        info["pairs_bin"], info["pairs"], info["family_pairs"] = str(path), pairs, family_pairs
    return info


def _write_pairs(path: Path, painter: _Painter, pool: tuple[int, int], pairs: int, seed: int, quality: int,
                 family_size: int) -> tuple[Path, list[int]]:
    """Pairs over identities first .. first+count-1 (`pool`); with families, every other different pair
    is two family-mates (the look-alikes verification must tell apart). Returns the path and the indices
    of the family-mate pairs."""
    first, count = pool
    rng = np.random.default_rng([seed, 2])  # a stream of its own: held-out images never repeat training ones
    images: list[bytes] = []
    issame: list[bool] = []
    family_pairs: list[int] = []
    for k in range(pairs):
        same = k % 2 == 0
        a = int(rng.integers(count))
        if same:
            b = a
        elif family_size > 1 and k % 4 == 1 and min(family_size, count - a // family_size * family_size) > 1:
            mates = min(family_size, count - a // family_size * family_size)
            b = a // family_size * family_size + int((a % family_size + rng.integers(1, mates)) % mates)
            family_pairs.append(k)
        else:
            b = int((a + rng.integers(1, count)) % count)
        for ident in (first + a, first + b):
            images.append(encode_jpeg(painter.jitter(painter.pattern(ident, seed, family_size), rng), quality))
        issame.append(same)
    write_bin(path, images, issame)
    return path, family_pairs
