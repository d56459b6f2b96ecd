import hashlib
import json
import re

import numpy as np
import pytest

from dcs_cli.data.images import encode_jpeg, encode_png
from dcs_cli.data.layout import read_table
from dcs_cli.data.recordio import RecordWriter, pack_image_record
from dcs_cli.errors import DataError

JPEG = encode_jpeg(np.full((8, 8, 3), 100, np.uint8))
PNG = encode_png(np.full((8, 8, 3), 50, np.uint8))


def write_insightface(folder, labels, header=None, ranges=None, payload=JPEG):
    """InsightFace layout for images with `labels` (grouped); header/ranges may be overridden to corrupt it."""
    labels = list(labels)
    n = len(labels)
    classes = max(labels) + 1
    a = n + 1
    if ranges is None:
        ranges, start = [], 1
        for c in range(classes):
            cnt = labels.count(c)
            ranges.append([start, start + cnt])
            start += cnt
    header = header or [a, a + len(ranges)]
    with RecordWriter(folder / "train.rec", folder / "train.idx") as w:
        w.write(0, pack_image_record(header, b""))
        for k, lab in enumerate(labels, 1):
            w.write(k, pack_image_record(lab, payload, id=k))
        for c, r in enumerate(ranges):
            w.write(a + c, pack_image_record(r, b""))
    return folder


def test_mxnet_fixture_matches_expected(mxnet_fixtures):
    expected = json.loads((mxnet_fixtures / "expected.json").read_text())["rec"]
    table = read_table(mxnet_fixtures)
    assert table.layout == "insightface" and len(table) == expected["images"]
    assert table.num_classes == expected["classes"]
    assert table.ranges.tolist() == expected["ranges"]
    assert np.bincount(table.labels).tolist() == expected["counts"]
    for i, item in enumerate(expected["images_sha256"]):
        assert table.labels[i] == item["label"]
        assert hashlib.sha256(table.payload(i)).hexdigest() == item["sha256"]


def test_the_rec_its_idx_and_their_folder_name_the_same_data(mxnet_fixtures, tmp_path):
    by_folder = read_table(mxnet_fixtures)
    for given in (mxnet_fixtures / "train.rec", mxnet_fixtures / "train.idx"):
        table = read_table(given)
        assert len(table) == len(by_folder) and table.labels.tolist() == by_folder.labels.tolist()
    (tmp_path / "lonely.idx").write_text("0\t0\n")
    with pytest.raises(DataError, match=r"lonely\.idx is an index; its records lonely\.rec are not beside it"):
        read_table(tmp_path / "lonely.idx")


def test_insightface_layout_round_trip(tmp_path):
    write_insightface(tmp_path, [0, 0, 1, 2, 2, 2])
    table = read_table(tmp_path / "train.rec")
    assert table.layout == "insightface"
    assert table.keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert table.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert table.payload(3) == JPEG


def test_plain_im2rec_with_vector_labels_and_png(tmp_path):
    with RecordWriter(tmp_path / "train.rec") as w:
        w.write(0, pack_image_record([4, 0.5, 9], PNG))
        w.write(1, pack_image_record(2, JPEG))
    table = read_table(tmp_path)
    assert table.layout == "im2rec"
    assert table.labels.tolist() == [4, 2]
    assert table.payload(0) == PNG and table.payload(1) == JPEG


def test_multipart_image_record(tmp_path):
    from dcs_cli.data.recordio import MAGIC_BYTES

    payload = JPEG + b"\0" * (-len(JPEG) % 4) + MAGIC_BYTES + b"tail"
    with RecordWriter(tmp_path / "train.rec") as w:
        w.write(0, pack_image_record(1, payload))
    table = read_table(tmp_path)
    assert table.payload(0) == payload and table.labels.tolist() == [1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"header": [20, 22]}, r"record key 0 says image records are keys 1\.\.19, but key 7 is not"),
        ({"header": [4, 3]}, r"record key 0: header label \[4\.0, 3\.0\] is not a valid"),
    ],
)
def test_a_header_that_misplaces_the_images_is_an_error(tmp_path, kwargs, match):
    write_insightface(tmp_path, [0, 0, 1, 1], **kwargs)
    with pytest.raises(DataError, match=match):
        read_table(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ranges": [[1, 3], [2, 4]]}, r"record key 6: identity range \[2, 4\) is inconsistent"),
        ({"ranges": [[1, 3], [3, 3]]}, r"record key 6: identity range \[3, 3\)"),
        ({"ranges": [[1, 2], [2, 5]]}, r"record key 2: label 0 disagrees with identity record 6"),
        ({"ranges": [[1, 3], [3, 4]]},
         r"record key 6: identity ranges cover image keys up to 3 but the header says they run to 4"),
        ({"header": [5, 5]}, r"record key 0: header label \[5, 5\] lists no identity records"),
        ({"header": [5, 8]}, r"record key 0 says identity records are keys 5\.\.7, but key 7 is not"),
    ],
)
def test_identity_records_that_disagree_leave_the_images_labels(tmp_path, capsys, kwargs, match):
    # they only repeat the images' labels, which InsightFace's own loader reads alone: a warning, not a refusal
    write_insightface(tmp_path, [0, 0, 1, 1], **kwargs)
    table = read_table(tmp_path)
    assert table.labels.tolist() == [0, 0, 1, 1] and table.ranges is None
    warned = " ".join(capsys.readouterr().err.split())
    assert re.search(match, warned) and "training uses each image record's own label" in warned


@pytest.mark.parametrize(("label", "what"), [(1.5, "1.5"), (-2, "-2.0"), (float("nan"), "nan"),
                                             (1e20, "1.00000002004087\\d*e\\+20"), (2.0**24, "16777216.0")])
def test_bad_labels(tmp_path, label, what):
    with RecordWriter(tmp_path / "train.rec") as w:
        w.write(0, pack_image_record(0, JPEG))
        w.write(1, pack_image_record(label, JPEG))
    with pytest.raises(DataError, match=rf"train\.rec: record key 1: label {what} is not an integer in 0\.\.16,777"):
        read_table(tmp_path)


def test_record_too_short_for_a_header(tmp_path):
    with RecordWriter(tmp_path / "train.rec") as w:
        w.write(0, pack_image_record(0, JPEG))
        w.write(1, b"tiny")
    with pytest.raises(DataError, match=r"record key 1 at offset \d+: 4 bytes is too short"):
        read_table(tmp_path)


def test_truncated_image_record(tmp_path):
    write_insightface(tmp_path, [0, 1])
    raw = (tmp_path / "train.rec").read_bytes()
    # cut inside the last identity record: the .idx still points at it
    (tmp_path / "train.rec").write_bytes(raw[:-8])
    with pytest.raises(DataError, match=r"record key 4 at offset \d+: truncated record"):
        read_table(tmp_path)


def test_idx_past_end(tmp_path):
    write_insightface(tmp_path, [0, 1])
    with open(tmp_path / "train.idx", "a") as fh:
        fh.write("99\t123456\n")
    with pytest.raises(DataError, match=r"train\.idx: record key 99 at offset 123456 lies past the end"):
        read_table(tmp_path)


def test_missing_rec(tmp_path):
    with pytest.raises(DataError, match="no train.rec in this folder"):
        read_table(tmp_path)
