"""The layouts of image `.rec` files, all read into one (key, label, payload) table.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from dcs_cli.data.synthetic_rec import write_synthetic_rec
    >>> tmp = tempfile.TemporaryDirectory(); folder = Path(tmp.name) / "faces"
    >>> _ = write_synthetic_rec(folder, num_identities=2, images_per_identity=3, image_size=16)
    >>> table = read_table(folder)             # folder with train.rec/train.idx, or the .rec itself
    >>> table.layout, len(table), table.num_classes
    ('insightface', 6, 2)
    >>> table.keys.tolist(), table.labels.tolist()         # int64 arrays, one entry per image
    ([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1])
    >>> table.payload(0)[:2] == bytes([0xFF, 0xD8])         # encoded bytes exactly as stored: a JPEG
    True
    >>> table.reader.close(); tmp.cleanup()

Layouts: InsightFace (record 0 has flag > 0 and label [A, B]; images are keys 1..A-1; identity records
A..B-1 carry [start, end) of their image keys) and plain im2rec (every record is an image). Image labels
may be scalar or a vector whose first element is the identity. Headers are read vectorised straight from
the mmap, so a table of millions of records builds in seconds; everything inconsistent is a DataError
naming the file, the record key and the problem, except identity records that are absent or disagree with
the images' labels: they only repeat those labels, which InsightFace's own loader reads alone, so that is a
warning and the images' labels stand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcs_cli.console import warn
from dcs_cli.data.recordio import MAX_EXACT_KEY, RecordReader, unpack_image_record
from dcs_cli.errors import DataError

_IR_BYTES = 24


@dataclass
class ImageTable:
    """`table.payload(i)` is image i's encoded bytes; `table.labels[i]` its identity; `table.keys[i]` its key."""

    reader: RecordReader
    layout: str
    keys: np.ndarray
    labels: np.ndarray
    # Byte span of each image inside the .rec, or -1 for the rare multi-part record (read the slow way).
    data_start: np.ndarray
    data_end: np.ndarray
    ranges: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def payload(self, i: int) -> bytes:
        start = int(self.data_start[i])
        if start >= 0:
            return bytes(self.reader.buffer[start:int(self.data_end[i])])
        return unpack_image_record(self.reader.read(int(self.keys[i])))[1]


def resolve_rec(folder_or_rec: str | os.PathLike) -> tuple[Path, Path]:
    """(rec, idx) paths for a folder holding train.rec/train.idx, a `.rec` path, or its `.idx`."""
    path = Path(folder_or_rec)
    if path.is_dir():
        rec = path / "train.rec"
        if not rec.is_file():
            raise DataError(f"{path}: no train.rec in this folder; pass the folder holding train.rec/train.idx")
        return rec, path / "train.idx"
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix == ".idx":  # the index named instead of its records: the .rec beside it
        rec = path.with_suffix(".rec")
        if not rec.is_file():
            raise DataError(f"{path} is an index; its records {rec.name} are not beside it: pass the .rec or its "
                            "folder")
        return rec, path
    return path, path.with_suffix(".idx")


def read_table(folder_or_rec: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> ImageTable:
    """Read any supported `.rec` layout into an ImageTable (see the module docstring)."""
    rec, idx = resolve_rec(folder_or_rec)
    reader = RecordReader(rec, idx_path or idx)
    source = {"rec": str(rec), "idx": str(reader.idx_path), "rec_bytes": reader.size,
              "index_rebuilt": reader.rebuilt_index}
    if len(reader) == 0:
        raise DataError(f"{rec}: holds no records")
    if 0 in reader:
        head = _headers(reader, np.array([0]), np.array([reader.offset(0)]), check_labels=False)
        if head.flag[0] > 0 and 0 <= head.data_start[0] == head.data_end[0]:
            return _insightface(reader, head, source)
    order = np.argsort(reader.keys, kind="stable")
    keys, offsets = reader.keys[order], reader.offsets[order]
    h = _headers(reader, keys, offsets)
    return ImageTable(reader, "im2rec", keys, h.labels, h.data_start, h.data_end, None, source)


@dataclass
class _Headers:
    flag: np.ndarray
    labels: np.ndarray      # int64 identity (first label element)
    values: np.ndarray      # float32 first two label values (for header/identity records)
    data_start: np.ndarray
    data_end: np.ndarray


def _headers(reader: RecordReader, keys: np.ndarray, offsets: np.ndarray, check_labels: bool = True) -> _Headers:
    """IRHeaders of the records at `offsets`, read as whole arrays from the mmap."""
    rec = reader.rec_path
    size = reader.size
    words = np.frombuffer(reader.buffer, dtype="<u4", count=size // 4)
    n = len(offsets)
    w = offsets // 4
    lrec = words[w + 1]
    cflag = lrec >> 29
    length = (lrec & ((1 << 29) - 1)).astype(np.int64)
    whole = cflag == 0
    trunc = np.nonzero(whole & (offsets + 8 + length > size))[0]
    if len(trunc):
        i = int(trunc[0])
        raise DataError(f"{rec}: record key {keys[i]} at offset {offsets[i]}: truncated record "
                        f"({length[i]} bytes announced, {size - offsets[i] - 8} left in the file)")
    short = np.nonzero(whole & (length < _IR_BYTES))[0]
    if len(short):
        i = int(short[0])
        raise DataError(f"{rec}: record key {keys[i]} at offset {offsets[i]}: {length[i]} bytes is too short "
                        f"for an image header ({_IR_BYTES} bytes); not an image record")
    flag = np.zeros(n, np.int64)
    values = np.zeros((n, 2), np.float32)
    data_start = np.full(n, -1, np.int64)
    data_end = np.full(n, -1, np.int64)
    if whole.any():
        wi = w[whole]
        flag[whole] = words[wi + 2]
        big = np.nonzero(whole & (_IR_BYTES + 4 * flag > length))[0]
        if len(big):
            i = int(big[0])
            raise DataError(f"{rec}: record key {keys[i]} at offset {offsets[i]}: header announces {flag[i]} "
                            f"labels but the record holds only {length[i]} bytes")
        scalar = words[wi + 3].view("<f4")
        fl = flag[whole]
        first = np.where(fl > 0, words[np.minimum(wi + 8, len(words) - 1)].view("<f4"), scalar)
        second = np.where(fl > 1, words[np.minimum(wi + 9, len(words) - 1)].view("<f4"), 0)
        values[whole, 0] = first
        values[whole, 1] = second
        data_start[whole] = offsets[whole] + 8 + _IR_BYTES + 4 * fl
        data_end[whole] = offsets[whole] + 8 + length[whole]
    for i in np.nonzero(~whole)[0]:  # multi-part records: rare, read the slow way
        header, _ = unpack_image_record(reader.read_at(int(offsets[i]), key=int(keys[i])))
        flag[i] = header.flag
        label = header.label if header.flag > 0 else (header.label,)
        values[i, 0] = label[0]
        values[i, 1] = label[1] if len(label) > 1 else 0
    if check_labels:
        _check_labels(rec, keys, values[:, 0])
    labels = np.where(np.isfinite(values[:, 0]), values[:, 0], -1).astype(np.int64)
    return _Headers(flag, labels, values, data_start, data_end)


def _check_labels(rec: Path, keys: np.ndarray, values: np.ndarray) -> None:
    bad = np.nonzero(~np.isfinite(values) | (values < 0) | (values != np.floor(values))
                     | (values >= MAX_EXACT_KEY))[0]
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{rec}: record key {keys[i]}: label {float(values[i])} is not an integer in 0.."
                        f"{MAX_EXACT_KEY - 1:,} (image labels must be identity numbers 0, 1, 2, ..., which a "
                        "float32 label holds exactly up to 2^24)")


def _insightface(reader: RecordReader, head: _Headers, source: dict) -> ImageTable:
    rec = reader.rec_path
    a_f, b_f = float(head.values[0, 0]), float(head.values[0, 1])
    if head.flag[0] < 2 or not (a_f.is_integer() and b_f.is_integer()) or not (1 <= a_f <= b_f):
        raise DataError(f"{rec}: record key 0: header label [{a_f}, {b_f}] is not a valid InsightFace "
                        "[first identity key, end] pair (integers with 1 <= A <= B)")
    a, b = int(a_f), int(b_f)
    if a == 1:
        raise DataError(f"{rec}: record key 0: header label [{a}, {b}] leaves no image records")
    image_keys = np.arange(1, a, dtype=np.int64)
    missing = image_keys[~np.isin(image_keys, reader.keys)]
    if len(missing):
        raise DataError(f"{rec}: record key 0 says image records are keys 1..{a - 1}, but key {missing[0]} is "
                        f"not in {reader.idx_path.name}")
    imgs = _headers(reader, image_keys, _offsets(reader, image_keys))
    ranges, problem = _identity_ranges(reader, a, b, imgs.labels)
    if problem:  # redundant with the images' own labels, which InsightFace's loader reads alone
        warn(f"{rec}: {problem}; training uses each image record's own label, as InsightFace's loader does")
    return ImageTable(reader, "insightface", image_keys, imgs.labels, imgs.data_start, imgs.data_end,
                      ranges, source)


def _identity_ranges(reader: RecordReader, a: int, b: int, labels: np.ndarray) -> tuple[np.ndarray | None, str]:
    """`(ranges, "")`: the identity records A..B-1's [start, end) image-key ranges, checked against the image
    records 1..A-1 and their `labels`; `(None, what is wrong)` when they are absent or disagree."""
    if b == a:
        return None, f"record key 0: header label [{a}, {b}] lists no identity records"
    ident_keys = np.arange(a, b, dtype=np.int64)
    missing = ident_keys[~np.isin(ident_keys, reader.keys)]
    if len(missing):
        return None, (f"record key 0 says identity records are keys {a}..{b - 1}, but key {missing[0]} is not "
                      f"in {reader.idx_path.name}")
    ident = _headers(reader, ident_keys, _offsets(reader, ident_keys), check_labels=False)
    ranges = ident.values.astype(np.float64)
    nonint = np.nonzero((ident.flag < 2) | (ranges != np.floor(ranges)).any(axis=1))[0]
    if len(nonint):
        i = int(nonint[0])
        return None, (f"record key {ident_keys[i]}: identity record needs an integer [start, end) label, found "
                      f"flag {ident.flag[i]} label {ranges[i].tolist()}")
    ranges = ranges.astype(np.int64)
    expected_start = np.concatenate([[1], ranges[:-1, 1]])
    bad = np.nonzero((ranges[:, 0] != expected_start) | (ranges[:, 1] <= ranges[:, 0]) | (ranges[:, 1] > a))[0]
    if len(bad):
        i = int(bad[0])
        return None, (f"record key {ident_keys[i]}: identity range [{ranges[i, 0]}, {ranges[i, 1]}) is "
                      f"inconsistent with the records (expected to start at {expected_start[i]}, be non-empty "
                      f"and end by {a})")
    if ranges[-1, 1] != a:
        return None, (f"record key {ident_keys[-1]}: identity ranges cover image keys up to {ranges[-1, 1] - 1} "
                      f"but the header says they run to {a - 1}; keys {ranges[-1, 1]}..{a - 1} have no identity")
    owner = np.repeat(np.arange(len(ranges), dtype=np.int64), ranges[:, 1] - ranges[:, 0])
    wrong = np.nonzero(labels != owner)[0]
    if len(wrong):
        i = int(wrong[0])
        return None, (f"record key {i + 1}: label {labels[i]} disagrees with identity record {a + owner[i]}, "
                      f"whose range [{ranges[owner[i], 0]}, {ranges[owner[i], 1]}) makes it identity {owner[i]}")
    return ranges, ""


def _offsets(reader: RecordReader, keys: np.ndarray) -> np.ndarray:
    return reader.offsets_of(keys)
