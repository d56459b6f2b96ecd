import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.paramserver.protocol import (
    HEADER,
    DType,
    Header,
    Op,
    ProtocolError,
    array_from_frame,
    decode_header,
    parse_json,
)


def test_header_roundtrip_with_and_without_token():
    h = Header(
        op=Op.PUSH,
        matrix=3,
        request_id=2**40,
        client_id=7,
        step=-1,
        rows=10,
        cols=256,
        dtype=DType.FLOAT32,
        flags=1,
    )
    assert HEADER.size == 72
    for token in (None, b"secret-token"):
        assert decode_header(h.pack(token), token) == h


def test_wrong_token_magic_version_and_size_are_refused():
    packed = Header(op=Op.STATS).pack(b"right-token")
    with pytest.raises(ProtocolError, match="authentication"):
        decode_header(packed, b"wrong-token")
    with pytest.raises(ProtocolError, match="authentication"):
        decode_header(Header(op=Op.STATS).pack(None), b"right-token")
    with pytest.raises(ProtocolError, match="magic"):
        decode_header(b"XXXX" + packed[4:], None)
    with pytest.raises(ProtocolError, match="version"):
        decode_header(packed[:4] + bytes([9]) + packed[5:], None)
    with pytest.raises(ProtocolError, match="72"):
        decode_header(packed[:40], None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_random_headers_never_raise_anything_but_protocol_error(data):
    try:
        decode_header(data, b"token-1234")
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_json_frames_are_protocol_errors(data):
    try:
        assert isinstance(parse_json(data), dict)
    except ProtocolError:
        pass


def test_array_frame_sizes_must_match_exactly():
    buf = memoryview(np.arange(6, dtype="<f4").tobytes())
    assert array_from_frame(buf, np.dtype("<f4"), (2, 3), "x").shape == (2, 3)
    with pytest.raises(ProtocolError, match="expected 28 for"):
        array_from_frame(buf, np.dtype("<f4"), (7,), "x")
    huge = (2**40, 2**30)
    with pytest.raises(ProtocolError):
        array_from_frame(buf, np.dtype("<f4"), huge, "x")
