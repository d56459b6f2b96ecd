import hashlib
import json

import numpy as np
import pytest

import dcs_cli.data.convert as convert_mod
from dcs_cli.data.bin_images import bin_to_images
from dcs_cli.data.convert import rec_to_images, split_per_identity
from dcs_cli.data.layout import read_table
from dcs_cli.data.listfile import read_list, write_list
from dcs_cli.data.synthetic_rec import write_synthetic_rec
from dcs_cli.data.to_rec import list_to_rec
from dcs_cli.errors import DataError, OutputExistsError, UsageError


def test_split_keeps_a_training_image_per_identity_and_is_deterministic():
    labels = np.repeat(np.arange(50), np.arange(1, 51))
    a = split_per_identity(labels, 0.3, seed=1)
    assert np.array_equal(a, split_per_identity(labels, 0.3, seed=1))
    assert not np.array_equal(a, split_per_identity(labels, 0.3, seed=2))
    for c in range(50):
        assert (~a[labels == c]).sum() >= 1
    assert abs(a.mean() - 0.3) < 0.05
    assert not split_per_identity(labels, 0.0, seed=1).any()
    assert not split_per_identity(np.arange(10), 0.9, seed=0).any()  # singletons stay in training
    with pytest.raises(UsageError):
        split_per_identity(labels, 1.0, seed=0)


def test_fixture_convert_matches_expected(mxnet_fixtures, tmp_path):
    expected = json.loads((mxnet_fixtures / "expected.json").read_text())["rec"]
    summary = rec_to_images(mxnet_fixtures, tmp_path / "out", val_ratio=0.3, seed=0, workers=2)
    out = tmp_path / "out"
    meta = json.loads((out / "meta.json").read_text())
    assert summary["images"] == meta["images"] == expected["images"]
    assert meta["classes"] == expected["classes"] and meta["counts"] == expected["counts"]
    assert meta["ranges"] == expected["ranges"]
    entries = read_list(out / "train_list.txt") + read_list(out / "val_list.txt")
    entries.sort(key=lambda e: int(e[0].split("/")[1].split(".")[0]))
    got = [{"label": label, "sha256": hashlib.sha256((out / "images" / rel).read_bytes()).hexdigest()}
           for rel, label in entries]
    assert got == expected["images_sha256"]
    assert not (out / ".dcs-convert-partial").exists()


def test_interrupted_run_leaves_no_lists_or_meta_and_can_resume(tmp_path, monkeypatch):
    write_synthetic_rec(tmp_path / "rec", 3, 3, image_size=16, seed=0)
    real = convert_mod.write_list
    calls = []

    def failing(path, entries):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(path, entries)

    monkeypatch.setattr(convert_mod, "write_list", failing)
    with pytest.raises(KeyboardInterrupt):
        rec_to_images(tmp_path / "rec", tmp_path / "out")
    out = tmp_path / "out"
    assert not (out / "meta.json").exists() and not (out / "val_list.txt").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(convert_mod, "write_list", real)
    rec_to_images(tmp_path / "rec", tmp_path / "out")  # leftovers of an unfinished run are replaced
    assert (out / "meta.json").exists()
    with pytest.raises(OutputExistsError, match="finished output"):
        rec_to_images(tmp_path / "rec", tmp_path / "out")
    rec_to_images(tmp_path / "rec", tmp_path / "out", overwrite=True)


def test_foreign_files_need_overwrite(tmp_path):
    write_synthetic_rec(tmp_path / "rec", 2, 2, image_size=16, seed=0)
    (tmp_path / "out" / "images").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="did not write"):
        rec_to_images(tmp_path / "rec", tmp_path / "out")


def test_overwrite_never_deletes_a_users_files(tmp_path):
    """--overwrite replaces earlier outputs only in a folder dcs made: a user's images/ and lists in a folder
    of their own are refused, not deleted."""
    write_synthetic_rec(tmp_path / "rec", 2, 2, image_size=16, seed=0)
    out = tmp_path / "mine"
    (out / "images" / "7").mkdir(parents=True)
    (out / "images" / "7" / "precious.jpg").write_bytes(b"mine")
    (out / "train_list.txt").write_text("7/precious.jpg 0\n")
    with pytest.raises(OutputExistsError, match=r"holds images that dcs did not write, in a folder dcs did not make"):
        rec_to_images(tmp_path / "rec", out, overwrite=True)
    assert (out / "images" / "7" / "precious.jpg").read_bytes() == b"mine"
    assert (out / "train_list.txt").read_text() == "7/precious.jpg 0\n"
    made = tmp_path / "made"
    rec_to_images(tmp_path / "rec", made)  # a folder dcs made: --overwrite replaces its outputs
    (made / "meta.json").unlink()  # (as if a user removed the marker: the outputs are still dcs's)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        rec_to_images(tmp_path / "rec", made)
    rec_to_images(tmp_path / "rec", made, overwrite=True)
    assert (made / "meta.json").exists()


def test_non_image_payload_names_the_record(tmp_path):
    from dcs_cli.data.recordio import RecordWriter, pack_image_record

    with RecordWriter(tmp_path / "rec" / "train.rec") as w:
        w.write(0, pack_image_record(0, b"\xff\xd8\xff..."))
        w.write(1, pack_image_record(0, b"GIF89a"))
    with pytest.raises(DataError, match=r"record key 1: payload is neither JPEG nor PNG"):
        rec_to_images(tmp_path / "rec", tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_list_to_rec_round_trip(tmp_path):
    write_synthetic_rec(tmp_path / "rec", 4, 3, image_size=16, seed=0)
    rec_to_images(tmp_path / "rec", tmp_path / "imgs", val_ratio=0.0)
    entries = read_list(tmp_path / "imgs" / "train_list.txt")
    write_list(tmp_path / "shuffled.txt", entries[::-1])  # labels need not arrive grouped
    list_to_rec(tmp_path / "shuffled.txt", tmp_path / "imgs" / "images", tmp_path / "back")
    original, back = read_table(tmp_path / "rec"), read_table(tmp_path / "back")
    assert back.layout == "insightface"
    assert back.labels.tolist() == original.labels.tolist()
    assert sorted(back.payload(i) for i in range(len(back))) == sorted(
        original.payload(i) for i in range(len(original)))


def test_list_to_rec_rejects_label_gaps_and_missing_files(tmp_path):
    write_synthetic_rec(tmp_path / "rec", 3, 1, image_size=16, seed=0)
    rec_to_images(tmp_path / "rec", tmp_path / "imgs", val_ratio=0.0)
    entries = read_list(tmp_path / "imgs" / "train_list.txt")
    write_list(tmp_path / "gap.txt", [e for e in entries if e[1] != 1])
    with pytest.raises(DataError, match="label 1 has no images"):
        list_to_rec(tmp_path / "gap.txt", tmp_path / "imgs" / "images", tmp_path / "o1")
    write_list(tmp_path / "missing.txt", entries + [("nope.jpg", 0)])
    with pytest.raises(DataError, match=r"missing\.txt: entry 4 \(nope\.jpg\): cannot read .*nope\.jpg"):
        list_to_rec(tmp_path / "missing.txt", tmp_path / "imgs" / "images", tmp_path / "o2")
    assert not (tmp_path / "o2" / "train.rec").exists() and not (tmp_path / "o2" / "meta.json").exists()


def test_list_to_rec_refuses_record_keys_a_float32_header_cannot_hold(tmp_path, monkeypatch):
    """The header's identity ranges are float32 record keys: exact up to 2^24 (here lowered to 8: 6 images
    and 3 identities need keys up to 10)."""
    from dcs_cli.data import to_rec

    write_synthetic_rec(tmp_path / "rec", 3, 2, image_size=16, seed=0)
    rec_to_images(tmp_path / "rec", tmp_path / "imgs", val_ratio=0.0)
    monkeypatch.setattr(to_rec, "MAX_EXACT_KEY", 8)
    with pytest.raises(DataError, match=r"6 images and 3 identities need record keys past 7.*data\.source: list"):
        list_to_rec(tmp_path / "imgs" / "train_list.txt", tmp_path / "imgs" / "images", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bin_to_images(mxnet_fixtures, tmp_path):
    summary = bin_to_images(mxnet_fixtures / "pairs.bin", tmp_path / "out")
    assert summary["pairs"] == 12
    lines = (tmp_path / "out" / "pairs.txt").read_text().splitlines()
    assert lines[0] == "0.jpg 1.jpg 1" and lines[1] == "2.jpg 3.jpg 0" and len(lines) == 12
    assert len(list((tmp_path / "out" / "images").iterdir())) == 24
