"""InsightFace `.bin` verification sets: a pickle of (encoded images, issame), two images per pair.

    >>> import os, pickle, tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.images import encode_jpeg
    >>> tmp = tempfile.TemporaryDirectory(); path = Path(tmp.name) / "pairs.bin"
    >>> jpeg = encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    >>> write_bin(path, [jpeg] * 4, [True, False])     # two images per pair, atomically
    >>> images, issame = read_bin(path)                 # list[bytes] (2 per pair), np.ndarray[bool]
    >>> len(images), images[0] == jpeg, issame.tolist()
    (4, True, [True, False])
    >>> _ = path.write_bytes(pickle.dumps(([os.getcwd], [True])))   # a pickle that names a function
    >>> read_bin(path)
    Traceback (most recent call last):
    ...
    dcs_cli.errors.DataError: ...pairs.bin: refusing to load: the pickle asks for ...getcwd, which a .bin ...
    >>> tmp.cleanup()

Files come from Python 2 and 3, so payloads may be `str` (py2 read with encoding="bytes" gives bytes;
py3 protocol-2 pickles store bytes as `_codecs.encode(text, "latin1")`). A pickle can run arbitrary code,
so the unpickler here admits only the handful of constructors these files use; anything else
(`os.system`, `builtins.eval`, ...) is refused with a DataError before it can be called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from dcs_cli.errors import DataError
from dcs_cli.fsutil import atomic_path, missing


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """Stand-in for `_codecs.encode` that only does what py3 protocol-2 pickles of bytes need."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise DataError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}) in a .bin pickle")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    # Some writers pickle issame as a numpy bool array; reconstructing one calls no user code.
    # Protocol 5 (pickle's highest since Python 3.8) pickles an array as numeric._frombuffer(bytes, dtype, shape,
    # order), a view of plain bytes (an object dtype is refused by numpy there).
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric

    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` knows only the globals a `.bin` legitimately needs."""

    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="bytes")
        self.path = path
        self.allowed = {("_codecs", "encode"): _latin1_encode, **_numpy_globals()}

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(f"{self.path}: refusing to load: the pickle asks for {module}.{name}, which a .bin "
                            "of images never needs (the file may be malicious)")
        return found

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: refusing to load: the pickle uses persistent ids")


def _as_bytes(item, path: Path, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, str):  # a py2 str unpickled as text: its code points are the bytes
        try:
            return item.encode("latin1")
        except UnicodeEncodeError:
            raise DataError(f"{path}: image {i} is text, not image bytes") from None
    raise DataError(f"{path}: image {i} is a {type(item).__name__}, expected encoded image bytes")


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """(images, issame) of a verification `.bin`; validated: 2 images per pair, issame all booleans."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f".bin file {path} {missing(path)}")
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path}: not a readable .bin pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, found {type(obj).__name__}")
    raw_images, raw_issame = obj
    if not isinstance(raw_images, (list, tuple)):
        raise DataError(f"{path}: images must be a list, found {type(raw_images).__name__}")
    images = [_as_bytes(item, path, i) for i, item in enumerate(raw_images)]
    issame = _as_bools(raw_issame, path)
    if len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images for {len(issame)} pairs; a .bin holds two images per pair")
    return images, issame


def _as_bools(raw, path: Path) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        values = raw.ravel().tolist()
    elif isinstance(raw, (list, tuple)):
        values = list(raw)
    else:
        raise DataError(f"{path}: issame must be a list of booleans, found {type(raw).__name__}")
    for i, v in enumerate(values):
        if not (isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1))):
            raise DataError(f"{path}: issame[{i}] = {v!r} is not a boolean")
    return np.asarray(values, dtype=bool)


def write_bin(path: str | os.PathLike, images: list[bytes], issame) -> None:
    """Write a `.bin` readable by dcs and by InsightFace's loaders (pickle protocol 4), atomically."""
    issame = [bool(v) for v in np.asarray(issame, dtype=bool).ravel()]
    images = [bytes(b) for b in images]
    if len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images for {len(issame)} pairs; need two images per pair")
    buf = io.BytesIO()
    pickle.dump((images, issame), buf, protocol=4)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
