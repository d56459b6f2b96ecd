"""User-facing errors.

Every mistake a user can make (missing file, corrupt record, bad config value) raises a `DcsError`
subclass whose message says what was wrong, where (file, record, key) and what to do. The CLI prints it
as one red line and exits with the class's `exit_code`; `--verbose` adds the traceback.

    >>> path, off, magic = "train.rec", 4096, 0x12345678
    >>> raise DataError(f"{path}: record at offset {off}: bad magic 0x{magic:08x}; the file is not RecordIO")
    Traceback (most recent call last):
    ...
    dcs_cli.errors.DataError: train.rec: record at offset 4096: bad magic 0x12345678; the file is not RecordIO
    >>> DataError.exit_code, ConfigError.exit_code, UsageError.exit_code, Interrupted.exit_code
    (1, 2, 2, 130)
"""

from __future__ import annotations


class DcsError(Exception):
    r"""Base of every error meant for the user rather than for a developer.

    A DataLoader worker's error reaches the main process as the same class built from "Caught DataError in
    DataLoader worker process 0.\nOriginal Traceback ...": the message keeps only the original's own text.

    >>> str(DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
    ...               "call last):\n  File ...\ndcs_cli.errors.DataError: a.lst:2: cannot read a.jpg\nhint: a\n"))
    'a.lst:2: cannot read a.jpg\nhint: a'
    """

    exit_code = 1

    def __init__(self, message: object = "", *args):
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message:
            # the traceback ends "dcs_cli.errors.DataError: <the original message, all its lines>"
            raised = f"\n{type(self).__module__}.{type(self).__qualname__}: "
            at = message.rfind(raised)
            if at >= 0:
                message = message[at + len(raised):].rstrip("\n")
        super().__init__(message, *args)


class UsageError(DcsError):
    """Options that contradict each other or a command used the wrong way."""

    exit_code = 2


class ConfigError(DcsError):
    """A config key that does not exist, has the wrong type or an impossible value."""

    exit_code = 2


class DataError(DcsError):
    """Input data that cannot be read: missing, corrupt or inconsistent files."""


class OutputExistsError(DcsError):
    """A finished output would be overwritten without `--overwrite`."""


class OutputError(DcsError):
    """An output that cannot be written where asked: a folder or a file in its way, no permission, a full disk."""


class ServerError(DcsError):
    """The parameter server refused a request or could not be reached."""


class DistError(DcsError):
    """Distributed start-up or communication failed."""


class Interrupted(DcsError):
    """The user stopped a long command (Ctrl-C / SIGINT); the message says what was kept."""

    exit_code = 130
