"""Shared-memory row transport for clients on the server's host (Linux `/dev/shm`).

A client creates a segment with `SharedSegment.create(reply_bytes, request_bytes)` and sends its name
and sizes in an ATTACH; the server maps it with `SharedSegment.open(name, reply_bytes, request_bytes)`;
the client then unlinks it at once (`unlink()`): both mappings live on and no file is left behind.

Over TCP a 10 MB array is copied four times (into the sender's kernel buffer, out of it, and once per
ZeroMQ side) and paced by the loopback stack. A client on the same host instead maps one file of
`/dev/shm` with the server: the server gathers GET_ROWS rows straight into the segment's reply region
and reads PUSH ids and gradients straight from its request region, so only the client's own copy in or
out remains; the small control messages (header, row ids of a GET) still travel over ZeroMQ. A request or
reply that uses the segment sets `FLAG_SHARED` and carries no array frames; its arrays lie in the region
in wire order, each at an offset rounded up to 64 bytes:

>>> push = [(np.dtype("<i8"), (3,)), (np.dtype("<f4"), (3, 4))]   # a PUSH of 3 rows of dim 4: ids, gradient
>>> layout(push)                                                   # offsets, sizes, bytes spanned
([0, 64], [24, 48], 128)

A client has one request in flight at a time, so one reply and one request region suffice. Only a file of
the server's own user, named `dcs-ps-<32 hex digits>`, mode 600 with a single link, is ever mapped. Its
contents are never trusted after a check: a PUSH's arrays are copied out of the request region before
they are validated, and the server never reads back what it wrote into the reply region (rows a GET sent
are kept for reuse only when they went as frames). (A process of the same user can still stop the server,
e.g. by truncating the file it mapped: a SIGBUS.)
"""

from __future__ import annotations

import math
import mmap
import os
import re
import secrets
import stat
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
NAME = re.compile(r"dcs-ps-[0-9a-f]{32}")
ALIGN = 64
MAX_SEGMENT_BYTES = 2 << 30  # two regions of at most one maximal message each


class SegmentError(Exception):
    """A segment that cannot be created or mapped; the caller falls back to frames or refuses ATTACH."""


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def nbytes(spec: tuple) -> int:
    dtype, shape = spec
    return np.dtype(dtype).itemsize * math.prod(shape)  # Python ints: a hostile header cannot overflow


def layout(specs: list[tuple]) -> tuple[list[int], list[int], int]:
    """Offsets and sizes of consecutive arrays `(dtype, shape)`, each 64-byte aligned, and the bytes they
    span."""
    offsets, sizes, end = [], [nbytes(spec) for spec in specs], 0
    for size in sizes:
        offsets.append(end)
        end += aligned(size)
    return offsets, sizes, end


def span(specs: list[tuple]) -> int:
    """Bytes a region needs for the arrays `specs`."""
    return layout(specs)[2]


class SharedSegment:
    """One mapped `/dev/shm` file: the reply region `[0, reply_bytes)`, then the request region."""

    def __init__(self, name: str, buf: mmap.mmap, reply_bytes: int, request_bytes: int):
        self.name, self.reply_bytes, self.request_bytes = name, reply_bytes, request_bytes
        self._buf = buf
        raw = np.frombuffer(buf, dtype=np.uint8)
        self.reply = raw[:reply_bytes]
        self.request = raw[reply_bytes : reply_bytes + request_bytes]

    @classmethod
    def create(cls, reply_bytes: int, request_bytes: int) -> SharedSegment:
        reply_bytes, request_bytes = aligned(reply_bytes), aligned(request_bytes)
        total = reply_bytes + request_bytes
        if total > MAX_SEGMENT_BYTES:
            raise SegmentError(f"{total} bytes exceed the {MAX_SEGMENT_BYTES}-byte segment limit")
        name = f"dcs-ps-{secrets.token_hex(16)}"
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise SegmentError(f"cannot create {path}: {exc.strerror}") from None
        try:
            # allocated now, not on first touch: a small /dev/shm (Docker's 64 MB) fails here with ENOSPC
            # instead of killing the process with SIGBUS in the middle of a step
            os.posix_fallocate(fd, 0, total)
            buf = mmap.mmap(fd, total)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise SegmentError(f"cannot allocate {total} bytes in {SHM_DIR}: {exc.strerror}") from None
        finally:
            os.close(fd)
        return cls(name, buf, reply_bytes, request_bytes)

    @classmethod
    def open(cls, name: str, reply_bytes: int, request_bytes: int) -> SharedSegment:
        """The server's side: map the segment a client created, after checking everything about it."""
        if not isinstance(name, str) or NAME.fullmatch(name) is None:
            raise SegmentError("segment name must be dcs-ps-<32 hex digits>")
        for what, size in (("reply_bytes", reply_bytes), ("request_bytes", request_bytes)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % ALIGN:
                raise SegmentError(f"{what} must be a positive multiple of {ALIGN}")
        total = reply_bytes + request_bytes
        if total > MAX_SEGMENT_BYTES:
            raise SegmentError(f"{total} bytes exceed the {MAX_SEGMENT_BYTES}-byte segment limit")
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise SegmentError(f"cannot open {path} ({exc.strerror}); is the client on this host?") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
                raise SegmentError(f"{path} is not a regular file of this server's user with one link")
            if st.st_mode & 0o077:
                raise SegmentError(f"{path} is open to other users (mode {st.st_mode & 0o777:o}); need 600")
            if st.st_size != total:
                raise SegmentError(f"{path} holds {st.st_size} bytes, ATTACH announced {total}")
            try:  # every page backed now (a no-op for a segment made by create()): no SIGBUS later
                os.posix_fallocate(fd, 0, total)
                buf = mmap.mmap(fd, total)
            except OSError as exc:
                raise SegmentError(f"cannot map {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)  # mapped: the name is no longer needed (the client unlinks it too)
        return cls(name, buf, reply_bytes, request_bytes)

    def unlink(self) -> None:
        """Remove the file; both mappings stay valid until dropped, and nothing is left if a side dies."""
        (SHM_DIR / self.name).unlink(missing_ok=True)

    def arrays(self, region: np.ndarray, specs: list[tuple[np.dtype, tuple[int, ...]]]) -> list[np.ndarray]:
        """Views of consecutive arrays `(dtype, shape)` in `region`; SegmentError if they do not fit."""
        offsets, sizes, end = layout(specs)
        if end > len(region):
            raise SegmentError(f"{end} bytes do not fit the {len(region)}-byte region")
        return [
            region[off : off + size].view(dt).reshape(shape)
            for off, size, (dt, shape) in zip(offsets, sizes, specs, strict=True)
        ]


def available() -> bool:
    """Whether this host offers `/dev/shm` (Linux); elsewhere rows always travel as frames."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


class RegionFrame:
    """A slice of a segment region in place of a ZeroMQ frame: the validators read `.buffer` alike."""

    __slots__ = ("buffer",)

    def __init__(self, view: np.ndarray):
        self.buffer = memoryview(view)


def region_frames(region: np.ndarray, specs: list[tuple]) -> list[RegionFrame]:
    """Frames holding private copies of the consecutive arrays `specs` in `region`: the client can rewrite
    its segment at any time, so what is validated must be what is applied. SegmentError if they do not fit."""
    offsets, sizes, end = layout(specs)
    if end > len(region):
        raise SegmentError(f"{end} bytes do not fit the {len(region)}-byte region")
    return [RegionFrame(region[off : off + size].copy()) for off, size in zip(offsets, sizes, strict=True)]
