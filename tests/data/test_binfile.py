import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.data.binfile import read_bin, write_bin
from dcs_cli.errors import DataError


def test_fixture_pairs_bin(mxnet_fixtures):
    images, issame = read_bin(mxnet_fixtures / "pairs.bin")
    assert len(images) == 24 and len(issame) == 12
    assert all(img[:3] == b"\xff\xd8\xff" for img in images)
    assert issame.dtype == bool and issame.tolist() == [True, False] * 6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=40), st.booleans()), max_size=10))
def test_round_trip(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("bin") / "p.bin"
    images = [b for a, b_, _ in pairs for b in (a, b_)]
    issame = [s for _, _, s in pairs]
    write_bin(path, images, issame)
    got_images, got_issame = read_bin(path)
    assert got_images == images and got_issame.tolist() == issame


def test_python2_pickle_with_str_payloads(tmp_path):
    # Hand-assembled protocol-2 pickle as Python 2 writes it: SHORT_BINSTRING payloads, NEWTRUE/NEWFALSE.
    raw = (b"\x80\x02" + b"]" + b"(" + b"U\x03\xff\xd8\xff" + b"U\x02\x00\x01" + b"e"
           + b"]" + b"\x88" + b"a" + b"\x86" + b".")
    (tmp_path / "py2.bin").write_bytes(raw)
    images, issame = read_bin(tmp_path / "py2.bin")
    assert images == [b"\xff\xd8\xff", b"\x00\x01"] and issame.tolist() == [True]


def test_py3_protocol2_and_text_payloads(tmp_path):
    (tmp_path / "p2.bin").write_bytes(pickle.dumps(([b"\xffa", b"b"], [False]), protocol=2))
    assert read_bin(tmp_path / "p2.bin")[0] == [b"\xffa", b"b"]
    (tmp_path / "str.bin").write_bytes(pickle.dumps((["\xffa", "b"], (True,)), protocol=0))
    assert read_bin(tmp_path / "str.bin")[0] == [b"\xffa", b"b"]


@pytest.mark.parametrize("protocol", [2, 4, 5])  # 5: numpy pickles arrays through numeric._frombuffer
def test_numpy_arrays_accepted(tmp_path, protocol):
    images = [b"a", np.frombuffer(b"bc", dtype=np.uint8), b"d", b"e"]
    (tmp_path / "np.bin").write_bytes(pickle.dumps((images, np.array([True, False])), protocol=protocol))
    loaded, issame = read_bin(tmp_path / "np.bin")
    assert issame.tolist() == [True, False] and loaded == [b"a", b"bc", b"d", b"e"]


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Evil(f"touch {marker}")], [True]), protocol=2))
    with pytest.raises(DataError, match=r"evil\.bin: refusing to load: the pickle asks for (posix|os)\.system"):
        read_bin(tmp_path / "evil.bin")
    assert not marker.exists()


def test_builtins_eval_refused(tmp_path):
    raw = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."
    (tmp_path / "eval.bin").write_bytes(raw)
    with pytest.raises(DataError, match="builtins.eval"):
        read_bin(tmp_path / "eval.bin")


def test_codecs_encode_only_for_latin1(tmp_path):
    raw = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R."
    (tmp_path / "c.bin").write_bytes(raw)
    with pytest.raises(DataError, match="refusing _codecs.encode"):
        read_bin(tmp_path / "c.bin")


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"a": 1}, "expected a pickled"),
        (([b"a"], [True]), "1 images for 1 pairs"),
        (([b"a", b"b"], ["yes"]), r"issame\[0\] = 'yes' is not a boolean"),
        (([1, b"b"], [True]), "image 0 is a int"),
    ],
)
def test_wrong_structure(tmp_path, obj, match):
    (tmp_path / "w.bin").write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(DataError, match=match):
        read_bin(tmp_path / "w.bin")


def test_truncated_pickle(tmp_path):
    raw = pickle.dumps(([b"a" * 100, b"b"], [True]), protocol=4)
    (tmp_path / "t.bin").write_bytes(raw[:50])
    with pytest.raises(DataError, match="not a readable .bin pickle"):
        read_bin(tmp_path / "t.bin")
