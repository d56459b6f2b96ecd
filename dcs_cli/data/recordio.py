r"""MXNet RecordIO, read and written natively (no mxnet): `.rec` records plus a `.idx` of `key\toffset`.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory(); rec = Path(tmp.name) / "train.rec"
    >>> with RecordWriter(rec, rec.with_suffix(".idx")) as writer:      # files appear when the block ends
    ...     _ = writer.write(0, pack_image_record(3.0, b"jpeg bytes"))
    >>> reader = RecordReader(rec)          # train.idx beside it; rebuilt by a scan if missing/bad
    >>> header, image = unpack_image_record(reader.read(0))
    >>> header.label, image
    (3.0, b'jpeg bytes')
    >>> reader.close(); tmp.cleanup()

Format (little-endian): magic 0xced7230a (u32), lrec (u32: top 3 bits continuation flag 0 whole /
1 first / 2 middle / 3 last, low 29 bits length), payload, zero padding to 4 bytes. A payload holding the
magic word at a 4-byte-aligned position is split there (the word itself dropped) exactly as dmlc-core
does, so a scanner that resynchronises on the magic word never mistakes payload bytes for a record start.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dcs_cli.console import warn
from dcs_cli.errors import DataError
from dcs_cli.fsutil import temp_path

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
MAX_PART = _LEN_MASK
MAX_EXACT_KEY = 1 << 24  # a header's float32 label holds every integer (identity, record key) up to 2^24 exactly
_HEAD = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")


class IRHeader(NamedTuple):
    """Image-record header: `flag` > 0 means `label` is a vector of `flag` float32 values."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_image_record(label, payload: bytes, id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + (vector label) + encoded image, as mxnet.recordio.pack writes it."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(label), id, id2) + bytes(payload)
    values = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(len(values), 0.0, id, id2) + values.tobytes() + bytes(payload)


def unpack_image_record(buf: bytes) -> tuple[IRHeader, bytes]:
    """Split an image record into its header (vector label as a tuple) and the encoded image bytes."""
    if len(buf) < _IR.size:
        raise DataError(f"image record of {len(buf)} bytes is shorter than its {_IR.size}-byte header")
    flag, label, id_, id2 = _IR.unpack_from(buf, 0)
    start = _IR.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(buf):
            raise DataError(f"image record header announces {flag} labels but the record has {len(buf)} bytes")
        label = tuple(float(v) for v in np.frombuffer(buf, dtype="<f4", count=flag, offset=start))
        start = end
    return IRHeader(flag, label, id_, id2), bytes(buf[start:])


def default_idx_path(rec_path: str | os.PathLike) -> Path:
    return Path(rec_path).with_suffix(".idx")


class RecordWriter:
    """`with RecordWriter(rec, idx) as w: w.write(key, payload)` — files appear under their names on success.

    Both files are written under temporary names and renamed only when the block ends without an error,
    so an interrupted write never leaves a `.rec` that looks finished.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else default_idx_path(rec_path)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_rec, self._tmp_idx = temp_path(self.rec_path), temp_path(self.idx_path)
        self._rec = open(self._tmp_rec, "wb", buffering=1 << 20)
        self._idx = open(self._tmp_idx, "w", buffering=1 << 16)
        self._offset = 0
        self._keys: set[int] = set()

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under `key`; returns its offset in the `.rec`."""
        key = int(key)
        if key in self._keys:
            raise DataError(f"{self.rec_path}: key {key} written twice")
        self._keys.add(key)
        offset = self._offset
        self._idx.write(f"{key}\t{offset}\n")
        for part in encode_record(payload):
            self._rec.write(part)
            self._offset += len(part)
        return offset

    def close(self) -> None:
        """Finish both files and move them to their final names."""
        if self._rec.closed:
            return
        for fh in (self._rec, self._idx):  # on disk before the names say so (a crash leaves no short .rec)
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Drop the temporary files (after an error; closing may fail again on a full disk: they go anyway)."""
        for fh in (self._rec, self._idx):
            with contextlib.suppress(OSError):
                fh.close()
        for tmp in (self._tmp_rec, self._tmp_idx):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encode_record(payload: bytes) -> list[bytes]:
    """The on-disk chunks of one record (dmlc-core's split at aligned magic words, then padding)."""
    payload = bytes(payload)
    n = len(payload)
    if n > MAX_PART:
        raise DataError(f"record of {n} bytes exceeds RecordIO's 2^29-byte limit")
    chunks: list[bytes] = []
    start = 0
    pos = payload.find(MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            cflag = 1 if start == 0 else 2
            chunks.append(_HEAD.pack(MAGIC, (cflag << 29) | (pos - start)) + payload[start:pos])
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    cflag = 3 if start else 0
    tail = payload[start:]
    chunks.append(_HEAD.pack(MAGIC, (cflag << 29) | len(tail)) + tail + b"\0" * (-len(tail) % 4))
    return chunks


class RecordReader:
    """`reader = RecordReader("train.rec"); reader.read(key)`; `for offset, payload in reader.scan(): ...`.

    Reads through an mmap. The `.idx` is checked (every offset inside the file, pointing at the start of a
    record); a missing or inconsistent one is rebuilt by scanning the `.rec`, with a warning. An offset past
    the end of the `.rec` is an error, since it means the `.rec` lost records the index knows about.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else default_idx_path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: no such RecordIO file")
        self.size = self.rec_path.stat().st_size
        self._mm: mmap.mmap | None = None
        self.rebuilt_index = False
        self.keys, self.offsets = self._load_index()
        # Sorted copies answer key → offset by binary search: a dict would cost ~100 bytes per record.
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_offsets = self.offsets[order]

    # -- memory map (dropped when pickled, so DataLoader workers reopen it) -------------------------
    @property
    def buffer(self) -> mmap.mmap | bytes:
        if self._mm is None:
            if self.size == 0:
                return b""
            with open(self.rec_path, "rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        i = int(np.searchsorted(self._sorted_keys, key))
        return i < len(self._sorted_keys) and self._sorted_keys[i] == key

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Offsets of many keys at once; a DataError names the first key the index lacks."""
        keys = np.asarray(keys, dtype=np.int64)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos_c = np.minimum(pos, max(len(self._sorted_keys) - 1, 0))
        missing = np.nonzero((pos >= len(self._sorted_keys)) | (self._sorted_keys[pos_c] != keys))[0]
        if len(missing):
            raise DataError(f"{self.idx_path}: no record with key {keys[missing[0]]}")
        return self._sorted_offsets[pos_c]

    def offset(self, key: int) -> int:
        return int(self.offsets_of(np.array([key]))[0])

    def read(self, key: int) -> bytes:
        """The payload of record `key` (multi-part records reassembled)."""
        return self.read_at(self.offset(key), key=key)

    def read_at(self, offset: int, key: int | None = None) -> bytes:
        payload, _ = self._read_record(offset, key)
        return payload

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Every record in file order as `(offset, payload)`, independent of the `.idx`."""
        offset = 0
        while offset < self.size:
            payload, offset_next = self._read_record(offset, None)
            yield offset, payload
            offset = offset_next

    # -- internals --------------------------------------------------------------------------------
    def _where(self, offset: int, key: int | None) -> str:
        what = f"record key {key} at offset {offset}" if key is not None else f"record at offset {offset}"
        return f"{self.rec_path}: {what}"

    def _part(self, offset: int, key: int | None) -> tuple[int, int, int]:
        """(cflag, length, payload start) of the part starting at `offset`, validated."""
        buf = self.buffer
        if offset + 8 > self.size:
            raise DataError(f"{self._where(offset, key)}: truncated record header; the file ends at {self.size}")
        magic, lrec = _HEAD.unpack_from(buf, offset)
        if magic != MAGIC:
            raise DataError(f"{self._where(offset, key)}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}); "
                            "the file is not RecordIO or is corrupt")
        length = lrec & _LEN_MASK
        if offset + 8 + length > self.size:
            raise DataError(f"{self._where(offset, key)}: truncated record ({length} bytes announced, "
                            f"{self.size - offset - 8} left in the file)")
        return lrec >> 29, length, offset + 8

    def _read_record(self, offset: int, key: int | None) -> tuple[bytes, int]:
        buf = self.buffer
        cflag, length, start = self._part(offset, key)
        nxt = start + length + (-length % 4)
        if cflag == 0:
            return bytes(buf[start:start + length]), nxt
        if cflag != 1:
            raise DataError(f"{self._where(offset, key)}: continuation flag {cflag} where a record must start")
        pieces = [buf[start:start + length]]
        while True:
            cflag, length, start = self._part(nxt, key)
            if cflag not in (2, 3):
                raise DataError(f"{self._where(offset, key)}: multi-part record broken at offset {nxt} "
                                f"(continuation flag {cflag})")
            pieces.append(MAGIC_BYTES)
            pieces.append(buf[start:start + length])
            nxt = start + length + (-length % 4)
            if cflag == 3:
                return b"".join(pieces), nxt

    def record_starts(self) -> list[int]:
        """Offsets of every record start, by walking the headers (payloads are not copied)."""
        starts = []
        offset = 0
        in_record = False
        while offset < self.size:
            cflag, length, start = self._part(offset, None)
            if cflag in (0, 1):
                if in_record:
                    raise DataError(f"{self._where(offset, None)}: a new record starts inside a multi-part one")
                starts.append(offset)
                in_record = cflag == 1
            elif not in_record:
                raise DataError(f"{self._where(offset, None)}: continuation flag {cflag} outside a record")
            elif cflag == 3:
                in_record = False
            offset = start + length + (-length % 4)
        if in_record:
            raise DataError(f"{self.rec_path}: truncated multi-part record at the end of the file")
        return starts

    def _load_index(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.idx_path.is_file():
            return self._rebuild(f"{self.idx_path} is missing")
        keys, offsets, problem = _parse_idx(self.idx_path)
        if problem is None:
            past = np.nonzero(offsets >= self.size)[0] if len(offsets) else []
            if len(past):
                i = int(past[0])
                raise DataError(f"{self.idx_path}: record key {keys[i]} at offset {offsets[i]} lies past the end "
                                f"of {self.rec_path} ({self.size} bytes); the .rec is truncated or the .idx "
                                "belongs to another file")
            problem = self._check_starts(keys, offsets)
        if problem is not None:
            return self._rebuild(f"{self.idx_path} is inconsistent with {self.rec_path.name} ({problem})")
        return keys, offsets

    def _check_starts(self, keys: np.ndarray, offsets: np.ndarray) -> str | None:
        """Vectorised check that every offset holds a magic word and a whole-or-first continuation flag."""
        if len(offsets) == 0:
            return "it lists no records" if self.size else None
        if np.any(offsets + 8 > self.size):
            i = int(np.nonzero(offsets + 8 > self.size)[0][0])
            return f"key {keys[i]} at offset {offsets[i]} has no room for a record header"
        if np.any(offsets % 4):
            i = int(np.nonzero(offsets % 4)[0][0])
            return f"key {keys[i]} at offset {offsets[i]} is not 4-byte aligned"
        words = np.frombuffer(self.buffer, dtype="<u4", count=self.size // 4)
        magic = words[offsets // 4]
        cflag = words[offsets // 4 + 1] >> 29
        bad = np.nonzero((magic != MAGIC) | (cflag > 1))[0]
        if len(bad):
            i = int(bad[0])
            return f"key {keys[i]} at offset {offsets[i]} is not the start of a record"
        if len(np.unique(offsets)) != len(offsets):
            return "two keys share an offset"
        # the listed records must tile the file: a cut-off or edited .idx lists good offsets but not every record
        order = np.argsort(offsets)
        starts = offsets[order]
        lengths = (words[starts // 4 + 1] & _LEN_MASK).astype(np.int64)
        ends = starts + 8 + lengths + (-lengths % 4)
        for i in {*np.nonzero(cflag[order] == 1)[0].tolist(), len(starts) - 1}:  # multi-part records, and the
            ends[i] = self._read_record(int(starts[i]), int(keys[order[i]]))[1]  # last one (a cut-off .rec)
        if starts[0] > 0:
            return f"bytes 0..{starts[0]} before its first record (key {keys[order[0]]}) are not listed"
        following = np.append(starts[1:], self.size)
        if 0 < ends[-1] - self.size < 4:  # the last record's pad bytes left out (other writers): still whole
            ends[-1] = self.size
        gap = np.nonzero(ends != following)[0]
        if len(gap):
            i = int(gap[0])
            key = keys[order[i]]
            if ends[i] > following[i]:
                return f"the record of key {key} runs past the next listed offset {following[i]}"
            return f"bytes {ends[i]}..{following[i]} after the record of key {key} hold records it does not list"
        return None

    def _rebuild(self, why: str) -> tuple[np.ndarray, np.ndarray]:
        warn(f"{why}; rebuilding the index by scanning the .rec (keys numbered 0.. in file order)")
        self.rebuilt_index = True
        starts = np.asarray(self.record_starts(), dtype=np.int64)
        return np.arange(len(starts), dtype=np.int64), starts


def _parse_idx(path: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    keys: list[int] = []
    offsets: list[int] = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                keys.append(int(fields[0]))
                offsets.append(int(fields[1]))
            except ValueError:  # int() of bytes that are not ASCII digits too
                return np.zeros(0, np.int64), np.zeros(0, np.int64), f"line {lineno} is not `key<TAB>offset`"
    try:
        k = np.asarray(keys, dtype=np.int64)
        o = np.asarray(offsets, dtype=np.int64)
    except OverflowError:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), "a key or offset does not fit in 64 bits"
    if len(k) and (len(np.unique(k)) != len(k)):
        return k, o, "duplicate keys"
    if len(o) and o.min() < 0:
        return k, o, "negative offset"
    return k, o, None


def write_records(rec_path: str | os.PathLike, payloads: Sequence[bytes], keys: Sequence[int] | None = None) -> None:
    """Write `payloads` under `keys` (default 0..n-1) in one go — a convenience for tests and tools."""
    keys = range(len(payloads)) if keys is None else keys
    with RecordWriter(rec_path) as writer:
        for key, payload in zip(keys, payloads, strict=True):
            writer.write(key, payload)
