"""The paramserver wire format: one fixed binary header frame, then raw array frames (no pickle, no eval).

>>> frame = Header(op=Op.GET_ROWS, matrix=0, request_id=7, client_id=3).pack(b"a shared secret")
>>> len(frame), decode_header(frame, b"a shared secret").request_id
(72, 7)
>>> decode_header(frame, b"another secret")        # anything malformed or forged is a ProtocolError
Traceback (most recent call last):
...
dcs_cli.paramserver.protocol.ProtocolError: authentication failed: wrong or missing token (see --token-file)

A message is a ZeroMQ multipart message (DEALER → ROUTER). Frame 0 is the 72-byte little-endian header

    offset size field       meaning
    0      4    magic       b"DCSP"
    4      1    version     PROTOCOL_VERSION; a different version is refused
    5      1    op          Op below; replies repeat the request's op
    6      1    flags       FLAG_MOMENTUM: rows travel with their momentum; FLAG_SHARED: the arrays lie
                            in the client's shared-memory segment instead of frames (see shm.py);
                            FLAG_CURRENT (GET_ROWS): rows that sat out steps catch them up first
    7      1    status      replies: 0 ok, 1 error (frame 1 is then {"error": "..."} as JSON)
    8      1    dtype       dtype of the array frames: 0 none, 1 float32, 2 int64, 3 json
    9      3    (padding)
    12     4    matrix      matrix id returned by CREATE
    16     8    request_id  echoed in the reply so a client can drop late answers
    24     8    client_id   who is speaking (barrier membership, heartbeats)
    32     8    step        PUSH: the step the gradient belongs to; replies: the matrix's step
    40     8    rows        rows in the array frames (S)
    48     8    cols        columns of 2-D frames (d)
    56     16   auth        HMAC-SHA256(token, label + bytes 0..55)[:16], label b"dcs request\0" or
                            b"dcs reply\0", so a reply never authenticates as a request; zeros when
                            the server has no token, and on the error reply to a header that failed
                            to decode or authenticate (the server will not vouch for what it can't read)

The frames after the header are raw C-contiguous little-endian arrays whose sizes must match rows/cols
exactly, or one small UTF-8 JSON object (control data such as a CREATE spec, optimiser params, stats).
The token itself never travels: a server with a token recomputes the MAC of each header. A request
must carry status 0; anything else is refused.

ATTACH (frame: {"name", "reply_bytes", "request_bytes"}) maps a registered client's `/dev/shm` segment on
the server; afterwards GET_ROWS and PUSH with FLAG_SHARED move their arrays through it (shm.py).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"DCSP"
PROTOCOL_VERSION = 2  # 2: the MAC covers a request/reply label
HEADER = struct.Struct("<4sBBBBB3xIQQqQQ16s")
MAC_SIZE = 16
MAX_JSON_BYTES = 64 * 1024
FLAG_MOMENTUM = 1
FLAG_SHARED = 2
FLAG_CURRENT = 4
STATUS_OK = 0
STATUS_ERROR = 1
NO_AUTH = b"\0" * MAC_SIZE
MAC_LABELS = {False: b"dcs request\0", True: b"dcs reply\0"}  # keyed by `reply`


class Op(enum.IntEnum):
    REGISTER = 1
    UNREGISTER = 2
    CREATE = 3
    GET_ROWS = 4
    PUSH = 5
    SET_ROWS = 6
    GET_OPTIM = 7
    SET_OPTIM = 8
    SNAPSHOT = 9
    STATS = 10
    SHUTDOWN = 11
    HEARTBEAT = 12
    SET_STEP = 13
    ATTACH = 14


class DType(enum.IntEnum):
    NONE = 0
    FLOAT32 = 1
    INT64 = 2
    JSON = 3


NUMPY_DTYPES = {DType.FLOAT32: np.dtype("<f4"), DType.INT64: np.dtype("<i8")}


class ProtocolError(Exception):
    """A malformed or refused request; the server answers it with an error reply and carries on."""


@dataclass
class Header:
    """One message header: `Header(op=Op.PUSH, matrix=0, step=t, rows=S, cols=d, dtype=DType.FLOAT32)`."""

    op: int
    matrix: int = 0
    request_id: int = 0
    client_id: int = 0
    step: int = 0
    rows: int = 0
    cols: int = 0
    dtype: int = DType.NONE
    flags: int = 0
    status: int = STATUS_OK
    version: int = PROTOCOL_VERSION

    def pack(self, token: bytes | None, reply: bool = False) -> bytes:
        """The 72-byte frame; `reply=True` for the server's answers (they are MAC'd under another label)."""
        body = HEADER.pack(
            MAGIC,
            self.version,
            self.op,
            self.flags,
            self.status,
            self.dtype,
            self.matrix,
            self.request_id,
            self.client_id,
            self.step,
            self.rows,
            self.cols,
            NO_AUTH,
        )
        return body[:-MAC_SIZE] + mac(body[:-MAC_SIZE], token, reply)


def mac(body: bytes, token: bytes | None, reply: bool = False) -> bytes:
    if not token:
        return NO_AUTH
    return hmac.new(token, MAC_LABELS[reply] + body, hashlib.sha256).digest()[:MAC_SIZE]


def decode_header(buf, token: bytes | None, reply: bool = False) -> Header:
    """Parse and authenticate frame 0 of a request (or, with `reply=True`, of a reply); every way it can
    be wrong is a ProtocolError."""
    data = bytes(buf) if len(buf) == HEADER.size else None
    if data is None:
        raise ProtocolError(f"header frame has {len(buf)} bytes, expected {HEADER.size}")
    magic, version, op, flags, status, dtype, matrix, rid, cid, step, rows, cols, auth = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("bad magic; not a dcs paramserver message")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version} not supported (server speaks {PROTOCOL_VERSION})")
    if token and not hmac.compare_digest(auth, mac(data[:-MAC_SIZE], token, reply)):
        raise ProtocolError("authentication failed: wrong or missing token (see --token-file)")
    if not reply and status != STATUS_OK:
        raise ProtocolError(f"a request must carry status 0, not {status}")
    return Header(
        op=op,
        matrix=matrix,
        request_id=rid,
        client_id=cid,
        step=step,
        rows=rows,
        cols=cols,
        dtype=dtype,
        flags=flags,
        status=status,
        version=version,
    )


def peek_request_id(buf) -> tuple[int, int]:
    """(op, request_id) of a header that failed to decode, best effort, so the error reply can be matched."""
    if len(buf) >= 24:
        raw = bytes(buf[:24])
        return raw[5], int.from_bytes(raw[16:24], "little")
    return 0, 0


def json_frame(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_json(buf) -> dict:
    if len(buf) > MAX_JSON_BYTES:
        raise ProtocolError(f"JSON frame of {len(buf)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        obj = json.loads(bytes(buf).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"JSON frame is not valid UTF-8 JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise ProtocolError("JSON frame nests too deeply; control messages are flat objects") from None
    if not isinstance(obj, dict):
        raise ProtocolError("JSON frame must hold an object")
    return obj


def row_arrays(kind: str, rows: int, dim: int, bias: bool, momentum: bool = False) -> list[tuple]:
    """(dtype, shape) of the arrays of a GET_ROWS reply (`kind="reply"`) or a PUSH request (`"push"`),
    in wire order: (ids), weight rows, (momentum), (bias), (bias momentum)."""
    f32 = NUMPY_DTYPES[DType.FLOAT32]
    arrays = [(f32, (rows, dim))] * (1 + momentum) + [(f32, (rows,))] * ((1 + momentum) * bias)
    return [(NUMPY_DTYPES[DType.INT64], (rows,))] + arrays if kind == "push" else arrays


def array_from_frame(buf, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A zero-copy view of `buf` as an array of `shape`; the byte count must match exactly."""
    expected = dtype.itemsize
    for n in shape:
        expected *= n
    if len(buf) != expected:
        raise ProtocolError(f"{what}: frame has {len(buf)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)
