"""List files: one `relative/path label` line per image, paths relative to an images root.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory(); path = Path(tmp.name) / "val_list.txt"
    >>> write_list(path, [("0/1.jpg", 0), ("1/my photo.jpg", 1)])   # atomic: temp name, then rename
    >>> read_list(path)
    [('0/1.jpg', 0), ('1/my photo.jpg', 1)]
    >>> default_root(path) == path.parent   # no images/ beside the list: its own folder
    True
    >>> tmp.cleanup()

The label is the last whitespace-separated field, so paths may contain spaces (not newlines).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dcs_cli.errors import DataError
from dcs_cli.fsutil import missing, write_text_atomic

MAX_LABEL = (1 << 31) - 1  # identity numbers past this would ask for a class store of billions of rows


def read_list(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse a list file; a malformed line is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file {path} {missing(path)}")
    entries: list[tuple[str, int]] = []
    lineno = 0
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Windows editors) is not a path
            for lineno, line in enumerate(fh, 1):
                if (entry := _parse_line(path, lineno, line)) is not None:
                    entries.append(entry)
    except UnicodeDecodeError:
        raise DataError(f"{path}:{lineno + 1}: not UTF-8 text; a list file holds `path label` lines") from None
    return entries


def _parse_line(path: Path, lineno: int, line: str) -> tuple[str, int] | None:
    """The line's (path, label), None for a blank line; a DataError naming the file and line otherwise."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
        raise DataError(f"{path}:{lineno}: expected `path label`, found {line!r}")
    rel, label_text = parts[0].strip(), parts[1]
    try:
        label = int(label_text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: label {label_text!r} is not an integer") from None
    if label < 0:
        raise DataError(f"{path}:{lineno}: label {label} is negative")
    if label > MAX_LABEL:
        raise DataError(f"{path}:{lineno}: label {label} is past {MAX_LABEL:,}, the largest identity number dcs "
                        "takes; number the identities 0, 1, 2, ...")
    return rel, label


def default_root(path: str | os.PathLike) -> Path:
    """The folder a list's paths are relative to when none is given: the list's own folder, or the `images/`
    beside it where `dcs convert` writes them — whichever holds the first entry's image (the list's folder
    when neither does, so the missing-image error names the path a user would expect)."""
    path = Path(path)
    candidates = [path.parent, path.parent / "images"]
    first = _first_entry(path)
    if first is not None:
        for root in candidates:
            if (root / first).is_file():
                return root
    return candidates[0]


def _first_entry(path: Path) -> str | None:
    """The first entry's image path, read without parsing the whole list (None for an empty list)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if (entry := _parse_line(path, lineno, line)) is not None:
                return entry[0]
    return None


def format_list(entries: Iterable[tuple[str, int]]) -> str:
    lines = []
    for rel, label in entries:
        if "\n" in rel or "\r" in rel:
            raise DataError(f"list path {rel!r} contains a newline")
        lines.append(f"{rel} {int(label)}\n")
    return "".join(lines)


def write_list(path: str | os.PathLike, entries: Iterable[tuple[str, int]]) -> None:
    """Write `path label` lines atomically (never a half-written list under the final name)."""
    write_text_atomic(path, format_list(entries))
