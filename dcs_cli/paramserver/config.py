"""`paramserver:` section — the class store as a server."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dcs_cli.config_fields import opt, require

MAX_MESSAGE_BYTES = 1 << 30  # ZeroMQ drops larger messages itself; no frame is ever allowed past this

_ADDRESS = re.compile(r"tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.*-]+):(\d{1,5}|\*)|ipc://.+|inproc://.+")


def _is_address(text: str) -> bool:
    """A ZeroMQ address dcs can use: tcp://host:port (port 0-65535 or *), ipc://path or inproc://name."""
    match = _ADDRESS.fullmatch(text)
    return match is not None and (match.group(2) in (None, "*") or int(match.group(2)) <= 65535)


@dataclass
class ParamServerConfig:
    """Where the class store lives when it is not in process."""

    address: str = opt("", "client side: tcp://host:port of a running server; empty = in-process store")
    bind: str = opt("tcp://127.0.0.1:5570", "server side: address to bind (loopback unless a token is set)")
    token_file: str = opt("", "file holding the shared secret; required for a non-loopback bind")
    snapshot_dir: str = opt("", "folder for server snapshots; empty = no periodic snapshots")
    snapshot_every: float = opt(0.0, "seconds between periodic snapshots; 0 = only on exit")
    heartbeat_timeout: float = opt(30.0, "seconds of silence after which a client leaves the barrier")
    request_timeout: float = opt(60.0, "client side: seconds to wait for a reply before failing")
    shared_memory: bool = opt(
        True,
        "client side: with a loopback or ipc:// address, move rows through a /dev/shm segment shared "
        "with the server instead of the socket (falls back to the socket when the server cannot map it)",
    )
    torch_threads: int = opt(
        1,
        "server side: torch intra-op threads for the updates; 1 avoids fighting the "
        "training processes on the same host for cores, 0 = torch's default",
    )
    update_threads: int = opt(
        0,
        "server side: threads that share each row gather and update (random rows are memory-latency "
        "bound, so 2 fetch faster than 1); 0 = one per core the server may use, at most 4",
    )
    max_frame_bytes: int = opt(
        128 << 20,
        "server side: largest frame accepted (a step's rows: S x d x 4 bytes); a larger one drops its "
        "connection, and clients refuse to send one",
    )
    max_inflight_bytes: int = opt(
        16 << 30,
        "server side: memory the server may reserve for messages still arriving; each connection can hold "
        "one frame, so at most max_inflight_bytes / max_frame_bytes connections are kept (128 by default; "
        "each client opens two, requests and heartbeats, so 64 clients)",
    )
    cpus: list[int] = opt(
        [],
        "server side: cores the server runs on (e.g. [0]); empty = wherever the OS puts it. A core of "
        "its own keeps the server's network and update threads on one cache",
    )

    def validate(self, key: str) -> None:
        require(not self.address or _is_address(self.address), f"{key}.address",
                f"= {self.address!r} is not a ZeroMQ address; use tcp://host:port (e.g. tcp://127.0.0.1:5570)")
        require(_is_address(self.bind), f"{key}.bind",
                f"= {self.bind!r} is not a ZeroMQ address; use tcp://host:port, tcp://127.0.0.1:* or ipc://path")
        require(self.snapshot_every >= 0, f"{key}.snapshot_every", "must be >= 0")
        require(self.heartbeat_timeout > 0, f"{key}.heartbeat_timeout", "must be > 0")
        require(self.request_timeout > 0, f"{key}.request_timeout", "must be > 0")
        require(self.torch_threads >= 0, f"{key}.torch_threads", "must be >= 0")
        require(self.update_threads >= 0, f"{key}.update_threads", "must be >= 0")
        require(1 << 20 <= self.max_frame_bytes <= MAX_MESSAGE_BYTES, f"{key}.max_frame_bytes",
                f"= {self.max_frame_bytes} must be in [1 MiB, {MAX_MESSAGE_BYTES}]")
        require(self.max_inflight_bytes >= self.max_frame_bytes, f"{key}.max_inflight_bytes",
                f"= {self.max_inflight_bytes} must be >= paramserver.max_frame_bytes ({self.max_frame_bytes})")
        require(all(c >= 0 for c in self.cpus), f"{key}.cpus", f"= {self.cpus} holds a negative core number")
