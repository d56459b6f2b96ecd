import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.data.recordio import (
    MAGIC,
    MAGIC_BYTES,
    RecordReader,
    RecordWriter,
    encode_record,
    pack_image_record,
    unpack_image_record,
    write_records,
)
from dcs_cli.errors import DataError


@st.composite
def payloads(draw):
    """Byte strings of any length, often holding the magic word (aligned or not) to force multi-part."""
    parts = draw(st.lists(st.one_of(st.binary(max_size=13), st.just(MAGIC_BYTES)), max_size=8))
    return b"".join(parts)


@settings(max_examples=60, deadline=None)
@given(st.lists(payloads(), min_size=1, max_size=12))
def test_written_records_read_back_identically(tmp_path_factory, items):
    folder = tmp_path_factory.mktemp("rec")
    keys = [3 * i + 1 for i in range(len(items))]
    write_records(folder / "t.rec", items, keys)
    reader = RecordReader(folder / "t.rec")
    assert not reader.rebuilt_index
    assert [reader.read(k) for k in keys] == items
    assert [payload for _, payload in reader.scan()] == items


def test_aligned_magic_is_split_like_dmlc():
    payload = b"abcd" + MAGIC_BYTES + b"xy"
    chunks = encode_record(payload)
    assert len(chunks) == 2
    (m1, l1), (m2, l2) = struct.unpack("<II", chunks[0][:8]), struct.unpack("<II", chunks[1][:8])
    assert m1 == m2 == MAGIC
    assert (l1 >> 29, l1 & 0x1FFFFFFF) == (1, 4)
    assert (l2 >> 29, l2 & 0x1FFFFFFF) == (3, 2)
    assert len(chunks[1]) % 4 == 0
    # an unaligned magic word stays inside a whole record
    assert len(encode_record(b"ab" + MAGIC_BYTES + b"cd")) == 1


def test_empty_and_odd_payloads(tmp_path):
    items = [b"", b"a", b"abcde", MAGIC_BYTES, MAGIC_BYTES * 3]
    write_records(tmp_path / "t.rec", items)
    reader = RecordReader(tmp_path / "t.rec")
    assert [reader.read(i) for i in range(len(items))] == items


def test_image_record_scalar_and_vector_labels():
    header, image = unpack_image_record(pack_image_record(7, b"\xff\xd8\xffjpeg", id=3))
    assert (header.flag, header.label, header.id, image) == (0, 7.0, 3, b"\xff\xd8\xffjpeg")
    header, image = unpack_image_record(pack_image_record([5, 2.5], b"png"))
    assert header.flag == 2 and header.label == (5.0, 2.5) and image == b"png"


def test_missing_idx_is_rebuilt_with_a_warning(tmp_path, capsys):
    write_records(tmp_path / "t.rec", [b"one", b"two" + MAGIC_BYTES + b"!"])
    (tmp_path / "t.idx").unlink()
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.rebuilt_index
    assert reader.read(1) == b"two" + MAGIC_BYTES + b"!"
    assert "rebuilding the index" in capsys.readouterr().err


def test_inconsistent_idx_is_rebuilt_not_trusted(tmp_path, capsys):
    write_records(tmp_path / "t.rec", [b"first", b"second"])
    (tmp_path / "t.idx").write_text("0\t0\n1\t4\n")  # 4 is inside record 0
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.rebuilt_index and reader.read(1) == b"second"
    assert "inconsistent" in capsys.readouterr().err


def test_cut_off_idx_is_rebuilt_not_trusted(tmp_path, capsys):
    """An .idx whose lines are all good but stop early would silently drop the records past its last one."""
    write_records(tmp_path / "t.rec", [b"first", b"second", b"third"])
    lines = (tmp_path / "t.idx").read_text().splitlines(keepends=True)
    (tmp_path / "t.idx").write_text("".join(lines[:2]))
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.rebuilt_index and len(reader) == 3 and reader.read(2) == b"third"
    assert "after the record of key 1 hold records it does not list" in capsys.readouterr().err


def test_idx_missing_a_middle_record_is_rebuilt_not_trusted(tmp_path, capsys):
    write_records(tmp_path / "t.rec", [b"first", b"second", b"third", b"fourth" + MAGIC_BYTES])
    lines = (tmp_path / "t.idx").read_text().splitlines(keepends=True)
    (tmp_path / "t.idx").write_text(lines[0] + lines[2] + lines[3])  # key 1's line deleted
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.rebuilt_index and len(reader) == 4 and reader.read(1) == b"second"
    assert "after the record of key 0 hold records it does not list" in capsys.readouterr().err


def test_idx_listing_every_record_is_trusted(tmp_path):
    payloads = [b"a", b"bbbb" + MAGIC_BYTES + b"cc", b"ddd" * 100]  # an aligned magic: the second is in parts
    assert len(encode_record(payloads[1])) > 1
    write_records(tmp_path / "t.rec", payloads, keys=[5, 9, 7])
    reader = RecordReader(tmp_path / "t.rec")
    assert not reader.rebuilt_index and [reader.read(k) for k in (5, 9, 7)] == payloads


def test_a_last_record_without_its_pad_bytes_is_trusted(tmp_path):
    write_records(tmp_path / "t.rec", [b"first", b"odd"], keys=[3, 8])  # 3 bytes: one pad byte at the end
    raw = (tmp_path / "t.rec").read_bytes()
    (tmp_path / "t.rec").write_bytes(raw[:-1])
    reader = RecordReader(tmp_path / "t.rec")
    assert not reader.rebuilt_index and reader.read(8) == b"odd"


def test_idx_with_a_number_past_64_bits_is_rebuilt(tmp_path, capsys):
    write_records(tmp_path / "t.rec", [b"first", b"second"])
    (tmp_path / "t.idx").write_text("0\t0\n99\t99999999999999999999\n")
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.rebuilt_index and reader.read(1) == b"second"
    assert "does not fit in 64 bits" in capsys.readouterr().err


def test_idx_that_is_not_text_is_rebuilt(tmp_path, capsys):
    write_records(tmp_path / "t.rec", [b"first", b"second"])
    (tmp_path / "t.idx").write_bytes(b"\xff\xfe\x00garbage\n")
    reader = RecordReader(tmp_path / "t.rec")
    assert reader.rebuilt_index and reader.read(1) == b"second"
    assert "line 1 is not `key<TAB>offset`" in capsys.readouterr().err


def test_idx_offset_past_end_is_an_error(tmp_path):
    write_records(tmp_path / "t.rec", [b"first", b"second"])
    (tmp_path / "t.idx").write_text("0\t0\n1\t16\n2\t999\n")
    with pytest.raises(DataError, match=r"key 2 at offset 999 lies past the end"):
        RecordReader(tmp_path / "t.rec")


def test_bad_magic_names_file_and_offset(tmp_path):
    write_records(tmp_path / "t.rec", [b"first", b"second"])
    raw = bytearray((tmp_path / "t.rec").read_bytes())
    raw[16:20] = b"XXXX"  # magic of record 1 (record 0 = 8 + 8 bytes)
    (tmp_path / "t.rec").write_bytes(bytes(raw))
    (tmp_path / "t.idx").unlink()
    with pytest.raises(DataError, match=r"t\.rec: record at offset 16: bad magic"):
        RecordReader(tmp_path / "t.rec")


def test_truncated_record(tmp_path):
    write_records(tmp_path / "t.rec", [b"first", b"second record"])
    raw = (tmp_path / "t.rec").read_bytes()
    (tmp_path / "t.rec").write_bytes(raw[:-6])
    with pytest.raises(DataError, match=r"record key 1 at offset 16: truncated record"):
        RecordReader(tmp_path / "t.rec")  # found on opening: the .idx's last record is read to its end


def test_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordWriter(tmp_path / "t.rec", tmp_path / "t.idx") as writer:
            writer.write(0, b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_key_refused(tmp_path):
    with pytest.raises(DataError, match="key 0 written twice"):
        with RecordWriter(tmp_path / "t.rec") as writer:
            writer.write(0, b"a")
            writer.write(0, b"b")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_an_aborted_write_on_a_full_disk_leaves_no_temporary_files(tmp_path):
    # closing flushes the buffered tail, which fails again on a full disk: the files must go anyway, and the
    # error that stopped the write is the one reported
    with pytest.raises(ValueError, match="the reason the write stopped"):
        with RecordWriter(tmp_path / "train.rec") as writer:
            writer._rec.close()
            writer._rec = open("/dev/full", "wb", buffering=1 << 20)  # noqa: SIM115 - the writer closes it
            writer.write(0, b"x" * 1000)
            raise ValueError("the reason the write stopped")
    assert list(tmp_path.iterdir()) == []
