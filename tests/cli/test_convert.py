import hashlib
import json

import pytest

from dcs_cli.cli.app import app
from dcs_cli.data.listfile import read_list
from dcs_cli.data.synthetic_rec import write_synthetic_rec


def test_convert_fixture_matches_expected_json(runner, mxnet_fixtures, tmp_path):
    out = tmp_path / "X"
    result = runner.invoke(app, ["convert", "--in-folder", str(mxnet_fixtures), "--out-folder", str(out)])
    assert result.exit_code == 0, result.output
    expected = json.loads((mxnet_fixtures / "expected.json").read_text())["rec"]
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["images"], meta["classes"], meta["counts"], meta["ranges"]) == (
        expected["images"], expected["classes"], expected["counts"], expected["ranges"])
    entries = read_list(out / "train_list.txt") + read_list(out / "val_list.txt")
    entries.sort(key=lambda e: int(e[0].split("/")[1].split(".")[0]))  # file names are record keys
    got = [{"label": label, "sha256": hashlib.sha256((out / "images" / rel).read_bytes()).hexdigest()}
           for rel, label in entries]
    assert got == expected["images_sha256"]
    assert "dcs convert" in result.output

    again = runner.invoke(app, ["convert", "--in-folder", str(mxnet_fixtures), "--out-folder", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    over = runner.invoke(app, ["convert", "-i", str(mxnet_fixtures), "-o", str(out), "--overwrite",
                               "--val-ratio", "0"])
    assert over.exit_code == 0, over.output
    assert (out / "val_list.txt").read_text() == ""


def test_round_trip_through_to_rec_and_bin(runner, tmp_path):
    write_synthetic_rec(tmp_path / "rec", 3, 4, image_size=16, seed=0, pairs=4)
    ok = runner.invoke(app, ["convert", "-i", str(tmp_path / "rec"), "-o", str(tmp_path / "imgs"),
                             "--val-ratio", "0.25", "--seed", "3", "--workers", "2"])
    assert ok.exit_code == 0, ok.output
    back = runner.invoke(app, ["convert", "--to-rec", "--list", str(tmp_path / "imgs" / "train_list.txt"),
                               "--root", str(tmp_path / "imgs" / "images"), "-o", str(tmp_path / "back")])
    assert back.exit_code == 0, back.output
    again = runner.invoke(app, ["convert", "-i", str(tmp_path / "back"), "-o", str(tmp_path / "imgs2"),
                                "--val-ratio", "0"])
    assert again.exit_code == 0, again.output
    assert len(read_list(tmp_path / "imgs2" / "train_list.txt")) == len(read_list(tmp_path / "imgs" / "train_list.txt"))
    pairs = runner.invoke(app, ["convert", "--bin", str(tmp_path / "rec" / "pairs.bin"), "-o", str(tmp_path / "p")])
    assert pairs.exit_code == 0, pairs.output
    assert len((tmp_path / "p" / "pairs.txt").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "args",
    [
        ["--bin", "x.bin", "--to-rec"],
        ["--in-folder", "d", "--bin", "x.bin"],
        ["--to-rec", "--list", "l.txt"],
        ["--in-folder", "d", "--list", "l.txt"],
        ["--bin", "x.bin", "--val-ratio", "0.1"],
        ["--in-folder", "d", "--val-ratio", "1.5"],
        [],
    ],
)
def test_contradictory_flags_are_usage_errors(runner, tmp_path, args):
    result = runner.invoke(app, ["convert", "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output


def test_corrupt_input_is_one_line_error(runner, tmp_path):
    write_synthetic_rec(tmp_path / "rec", 2, 2, image_size=16, seed=0)
    raw = bytearray((tmp_path / "rec" / "train.rec").read_bytes())
    raw[:4] = b"JUNK"
    (tmp_path / "rec" / "train.rec").write_bytes(bytes(raw))
    result = runner.invoke(app, ["convert", "-i", str(tmp_path / "rec"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "train.rec" in result.output and "bad magic" in result.output and "offset 0" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "meta.json").exists()
