"""Encoded-image helpers: format by magic bytes, Pillow decode to RGB, and the model's input tensor.

    >>> rgb = np.full((8, 8, 3), 200, np.uint8)
    >>> payload = encode_jpeg(rgb)                            # encode_png(rgb) for lossless
    >>> image_ext(payload), image_ext(encode_png(rgb))
    ('jpg', 'png')
    >>> decode_rgb(payload, image_size=16).shape              # (H, W, 3) uint8, resized to a square
    (16, 16, 3)
    >>> x = to_input_tensor(decode_rgb(payload))              # (3, H, W) float in [-1, 1]
    >>> tuple(x.shape), round(float(x.mean()), 1)             # (200 - 127.5) / 127.5
    ((3, 8, 8), 0.6)
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from dcs_cli.errors import DataError

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


def image_ext(payload: bytes) -> str:
    """"jpg" or "png" from the leading magic bytes; anything else is a DataError."""
    head = bytes(payload[:8])
    if head.startswith(_JPEG):
        return "jpg"
    if head.startswith(_PNG):
        return "png"
    if not head:
        raise DataError("empty image payload")
    raise DataError(f"payload is neither JPEG nor PNG (starts with {head.hex()})")


def decode_rgb(payload: bytes, image_size: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes to an (H, W, 3) uint8 array, resized (bilinear) to a square `image_size`; a
    16-bit greyscale PNG keeps its high byte (as OpenCV's colour read does)."""
    try:
        with Image.open(io.BytesIO(payload)) as img:
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey: convert() would clip it at 255
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            img = img.convert("RGB")
            if image_size and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image ({len(payload)} bytes): {exc}") from None


def to_input_tensor(rgb: np.ndarray, flip: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32 normalised to [-1, 1] ((x - 127.5) / 127.5, as InsightFace)."""
    if flip:
        rgb = rgb[:, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    return x.sub_(127.5).div_(127.5)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 → JPEG bytes (used by the synthetic writer and tests)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()
