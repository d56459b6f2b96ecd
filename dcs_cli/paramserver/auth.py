"""Who may talk to the server: loopback-only binds, or a shared secret read from a token file.

`serve` refuses to bind an address that is not loopback unless a token file is given:

>>> is_loopback("tcp://127.0.0.1:5570"), is_loopback("ipc:///tmp/ps"), is_loopback("tcp://0.0.0.0:5570")
(True, True, False)
>>> read_token("") is None   # no token file: loopback only
True

The token keys an HMAC of every message header (see protocol.py); it is never sent itself.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from dcs_cli.errors import ConfigError


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// addresses on 127.0.0.0/8, ::1 or localhost."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> bytes | None:
    """The shared secret in `path` (surrounding whitespace ignored), or None for an empty path."""
    if not path:
        return None
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"token file {file} not found; create it with a shared secret or drop --token-file")
    token = file.read_bytes().strip()
    if len(token) < 8:
        raise ConfigError(
            f"token file {file} holds {len(token)} bytes; use a secret of at least 8 characters"
        )
    return token
