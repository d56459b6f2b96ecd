import pytest

from dcs_cli.data.listfile import read_list, write_list
from dcs_cli.errors import DataError


def test_round_trip_with_spaces(tmp_path):
    entries = [("0/1.jpg", 0), ("a b/c d.png", 12)]
    write_list(tmp_path / "l.txt", entries)
    assert read_list(tmp_path / "l.txt") == entries


def test_empty_list(tmp_path):
    write_list(tmp_path / "l.txt", [])
    assert (tmp_path / "l.txt").read_text() == "" and read_list(tmp_path / "l.txt") == []


@pytest.mark.parametrize(("line", "match"), [("x.jpg one", "label 'one' is not an integer"),
                                             ("x.jpg -1", "label -1 is negative"),
                                             ("lonely", "expected `path label`")])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
    (tmp_path / "l.txt").write_text(f"ok.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=rf"l\.txt:2: {match}"):
        read_list(tmp_path / "l.txt")
