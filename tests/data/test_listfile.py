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
                                             ("lonely", "expected `path label`"),
                                             ("x.jpg 99999999999999999999", "label 99999999999999999999 is past "
                                                                            "2,147,483,647")])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
    (tmp_path / "l.txt").write_text(f"ok.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=rf"l\.txt:2: {match}"):
        read_list(tmp_path / "l.txt")


def test_default_root_is_where_the_first_image_is(tmp_path):
    from dcs_cli.data.listfile import default_root

    write_list(tmp_path / "l.txt", [("0/a.jpg", 0)])
    assert default_root(tmp_path / "l.txt") == tmp_path  # image nowhere: the list's folder (the error names it)
    (tmp_path / "images" / "0").mkdir(parents=True)
    (tmp_path / "images" / "0" / "a.jpg").write_bytes(b"x")
    assert default_root(tmp_path / "l.txt") == tmp_path / "images"  # `dcs convert`'s layout
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.jpg").write_bytes(b"x")
    assert default_root(tmp_path / "l.txt") == tmp_path  # beside the list first
    write_list(tmp_path / "empty.txt", [])
    assert default_root(tmp_path / "empty.txt") == tmp_path
