"""Atomic outputs: write to a temporary name beside the target, rename when complete.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory(); out = Path(tmp.name) / "converted"
    >>> with atomic_path(out / "train_list.txt") as part:        # a temporary name in the same folder
    ...     _ = part.write_text("0/1.jpg 0")
    >>> (out / "train_list.txt").read_text()                      # under its name only once complete
    '0/1.jpg 0'
    >>> write_json_atomic(out / "meta.json", {"images": 1})
    >>> guard_output_folder(out, overwrite=False, marker="meta.json")
    Traceback (most recent call last):
    ...
    dcs_cli.errors.OutputExistsError: ...converted already holds a finished output (meta.json); pass --overwrite ...
    >>> tmp.cleanup()

An interrupted run therefore never leaves a half-written file under its final name (a killed one's hidden
`.NAME.tmp-HOST-PID` is removed by the next write of NAME on that host), and a finished
output folder (one holding its marker) is replaced only with `--overwrite`, and only if dcs made it
(`OWNER`) and none of the command's inputs lies inside it: a user's folder is never cleared. A target that cannot be
written (a folder in its place, a file where one of its folders would go) is an `OutputError`; commands
check their output files with `check_output_file` before the work, so a long run does not end in one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from dcs_cli.errors import OutputError, OutputExistsError, UsageError


def missing(path: Path, folder: bool = False) -> str:
    """Why `path` is not the file (or, with `folder`, the folder) an input names: "not found", "is a folder,
    not a file", "is a file, not a folder" or "is not a regular file" (a pipe, a device)."""
    if not path.exists():
        return "not found"
    if path.is_dir() and not folder:
        return "is a folder, not a file"
    if path.is_file() and folder:
        return "is a file, not a folder"
    return "is not a regular file"


def check_output_file(target: str | os.PathLike) -> Path:
    """`target` as a Path, or an OutputError if a file could not be written there: a folder in its place, a
    file where one of its folders would go, or no write permission in the nearest existing folder."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"{target} is a folder; give the name of a file to write")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{target}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: no permission to write in {folder}; choose another path")
    return target


def check_outputs_apart(outputs: dict[str, str | os.PathLike | None], inputs: Sequence[str | os.PathLike]) -> None:
    """UsageError if an output file (by option name; None = not asked for) is one of the inputs, or two
    outputs are the same file."""
    taken = {Path(path).resolve(): f"an input ({path})" for path in inputs}
    for option, out in outputs.items():
        if out is None:
            continue
        key = Path(out).resolve()
        if key in taken:
            raise UsageError(f"{option} {out} would overwrite {taken[key]}; write it to a file of its own")
        taken[key] = f"the {option} file"


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {folder} ({exc.strerror}); choose another path") from exc


STALE_TEMP_S = 60.0  # a leftover temporary file this long untouched, of a process gone, is removed


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):  # alive under another user; or not a real pid
        return False
    return False


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def temp_path(target: Path) -> Path:
    """The temporary name `target` is written under (`.NAME.tmp-HOST-PID` beside it). Leftovers of the same
    target from a killed run on this host (its process gone, the file untouched for a minute) are removed
    first, so a killed convert or checkpoint does not keep gigabytes in a hidden file; on a shared file
    system another host's writers are not this host's to judge."""
    prefix = f".{target.name}.tmp-{_host()}-"
    now = time.time()
    with contextlib.suppress(OSError):
        for old in target.parent.glob(glob.escape(prefix) + "*"):
            pid = old.name[len(prefix):]
            if pid.isdigit() and _process_gone(int(pid)):
                with contextlib.suppress(OSError):
                    if old.is_file() and now - old.stat().st_mtime > STALE_TEMP_S:
                        old.unlink()
    return target.with_name(f"{prefix}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success fsync + rename it onto `target`."""
    target = check_output_file(target)
    _make_folder(target.parent)
    tmp = temp_path(target)
    try:
        yield tmp
        if tmp.exists():
            try:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot write it ({exc.strerror}); choose another path") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        try:
            tmp.write_text(text)
        except OSError as exc:
            raise OutputError(f"{target}: cannot write it ({exc.strerror}); choose another path") from exc


def _json_safe(obj):
    """NaN/inf are not JSON: they become null so strict parsers (jq, JavaScript) read the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json_atomic(target: str | os.PathLike, obj) -> None:
    write_text_atomic(target, json.dumps(_json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


OWNER = ".dcs-output"  # in every output folder dcs created (or found empty): the only folders it ever clears


def guard_output_folder(folder: str | os.PathLike, overwrite: bool, marker: str,
                        inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Refuse to reuse a finished output folder (one holding `marker`) unless `overwrite`.

    With `overwrite`, the old folder's contents are removed first so no stale file survives, but only from a
    folder dcs made (`OWNER`) and holding none of the command's `inputs`; a folder of the user's that
    happens to hold a file named `marker` is refused instead. A new or empty folder becomes dcs's.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder; choose another output folder")
    if (folder / marker).exists():
        if not overwrite:
            raise OutputExistsError(
                f"{folder} already holds a finished output ({marker}); pass --overwrite to replace it"
            )
        clear_output_folder(folder, inputs)
    fresh = not folder.exists() or not any(folder.iterdir())
    _make_folder(folder)
    if fresh:
        (folder / OWNER).write_text("written by dcs; --overwrite may clear this folder\n")
    return folder


def clear_output_folder(folder: Path, inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """Remove `folder` for a fresh start: only one dcs made, and none that holds an input of the command."""
    if not (folder / OWNER).exists():
        raise OutputExistsError(f"{folder} holds files dcs did not write (it has no {OWNER}); empty it yourself "
                                "or choose another output folder")
    check_removable(folder, inputs, "--overwrite would clear")
    shutil.rmtree(folder)


def check_removable(path: Path, inputs: Sequence[str | os.PathLike | None], doing: str) -> None:
    """OutputExistsError if `path`, about to be removed (`doing` says why), is or holds one of the command's
    `inputs` (None: not given) or the current folder."""
    root = path.resolve()
    for given in inputs:
        if given is not None and Path(given).resolve().is_relative_to(root):
            raise OutputExistsError(f"{given}, an input of this command, lies inside {path}, which {doing}; "
                                    "choose another output folder")
    if Path.cwd().resolve().is_relative_to(root):
        raise OutputExistsError(f"{path} is the current folder or holds it, which {doing}; choose another output "
                                "folder or run from elsewhere")
