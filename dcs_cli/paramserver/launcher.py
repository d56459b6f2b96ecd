"""Start a real `dcs paramserver` process in the background (tests, the trainer's auto-start, benches).

`start_background("tcp://127.0.0.1:*", heartbeat_timeout=2)` runs `python -m dcs_cli.paramserver` and
returns a `BackgroundServer` once the server listens; clients connect to its `.address`. Used as a
context manager, leaving the block stops it (SIGTERM: the final snapshot is written if a snapshot folder
was given) and waits for it. `*` as the port lets ZeroMQ pick a free one; the server reports the address
it bound via --ready-file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dcs_cli.errors import ServerError

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


class BackgroundServer:
    """Handle of a server process: `.address`, `.stop()` (SIGTERM, then kill), `.kill()` (SIGKILL)."""

    def __init__(self, process: subprocess.Popen, address: str, workdir: tempfile.TemporaryDirectory):
        self.process = process
        self.address = address
        self._workdir = workdir
        self.log_path = Path(workdir.name) / "server.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (the server writes its final snapshot); SIGKILL if it does not exit in time."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> int:
        """SIGKILL: the crash case; nothing is flushed or snapshotted."""
        if self.running():
            self.process.kill()
        return self.process.wait()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._workdir.cleanup()


def start_background(
    bind: str = "tcp://127.0.0.1:*",
    *,
    token_file: str | None = None,
    snapshot_dir: str | None = None,
    snapshot_every: float | None = None,
    resume: str | None = None,
    heartbeat_timeout: float | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    torch_threads: int | None = None,
    cpus: list[int] | None = None,
    config: str | None = None,
    startup_timeout: float = 60.0,
) -> BackgroundServer:
    """Launch `python -m dcs_cli.paramserver ...` (= `dcs paramserver`); returns once it listens.

    Raises ServerError with the end of its log if the process exits or does not listen in time.
    """
    workdir = tempfile.TemporaryDirectory(prefix="dcs-paramserver-")
    ready = Path(workdir.name) / "address"
    # the command's own entry: same options as `dcs paramserver`, without importing every other command
    cmd = [sys.executable, "-m", "dcs_cli.paramserver", "--bind", bind, "--ready-file", str(ready)]
    options = {
        "--config": config,
        "--token-file": token_file,
        "--snapshot-dir": snapshot_dir,
        "--snapshot-every": snapshot_every,
        "--resume": resume,
        "--lr": lr,
        "--momentum": momentum,
        "--weight-decay": weight_decay,
    }
    for flag, value in options.items():
        if value is not None:
            cmd += [flag, str(value)]
    if heartbeat_timeout is not None:
        cmd += ["--set", f"paramserver.heartbeat_timeout={heartbeat_timeout}"]
    if torch_threads is not None:
        cmd += ["--set", f"paramserver.torch_threads={torch_threads}"]
    if cpus:
        cmd += ["--cpus", ",".join(str(c) for c in cpus)]
    env = dict(os.environ)
    env["PYTHONPATH"] = _REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    log = open(Path(workdir.name) / "server.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    log.close()
    handle = BackgroundServer(process, "", workdir)
    deadline = time.monotonic() + startup_timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            handle.stop(timeout=5)
            tail = handle.log().strip().splitlines()[-5:]
            workdir.cleanup()
            raise ServerError(f"paramserver did not start on {bind}: " + (" | ".join(tail) or "no output"))
        time.sleep(0.05)
    handle.address = ready.read_text().strip()
    return handle
