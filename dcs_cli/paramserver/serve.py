"""`serve(cfg)`: bind the socket, install the signal handlers and run a `ParamServer` until it stops.

`serve(cfg, resume=None, ready_file=None)` reads the `paramserver:` section (address, token, snapshots,
threads) and the optimiser defaults of `optim:`, optionally starts from a snapshot file, writes the bound
address to `ready_file` once listening, and blocks until SIGTERM, SIGINT or a client's SHUTDOWN. SIGTERM
and SIGINT end the loop after the request in hand; the final snapshot is written on the way out.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch
import zmq

from dcs_cli.console import info, warn
from dcs_cli.cpus import available_cpus, place
from dcs_cli.errors import ConfigError, OutputExistsError, ServerError
from dcs_cli.fsutil import check_output_file, write_text_atomic
from dcs_cli.paramserver.auth import is_loopback, read_token
from dcs_cli.paramserver.server import ParamServer
from dcs_cli.paramserver.snapshot import SNAPSHOT_NAME, read_snapshot
from dcs_cli.paramserver.workers import RowWorkers
from dcs_cli.selection.store import OptimParams


def _check_outputs(ps, resume: str | None, ready_file: str | None) -> None:
    """Before anything starts: the snapshot, the ready file and an ipc socket can be written, and none of them
    replaces a file of the user's or an earlier run's snapshot (continue that one with --resume)."""
    if ps.snapshot_dir:
        if Path(ps.snapshot_dir).exists() and not Path(ps.snapshot_dir).is_dir():
            raise ConfigError(f"--snapshot-dir {ps.snapshot_dir} is a file; pass a folder for the snapshots")
        snapshot = check_output_file(Path(ps.snapshot_dir) / SNAPSHOT_NAME)
        if snapshot.exists() and (resume is None or Path(resume).resolve() != snapshot.resolve()):
            raise OutputExistsError(f"{snapshot} holds an earlier server's matrices; continue them with --resume "
                                    f"{snapshot}, or choose another --snapshot-dir")
    if ready_file:
        check_output_file(ready_file)
    if ps.bind.startswith("ipc://"):
        path = Path(ps.bind[len("ipc://"):])
        if path.exists() and not path.is_socket():
            raise ConfigError(f"--bind {ps.bind}: {path} is a file, not a socket; choose another ipc:// path")


def serve(cfg, resume: str | None = None, ready_file: str | None = None) -> int:
    """Run the server described by `cfg.paramserver` (optimiser defaults from `cfg.optim`); returns 0."""
    ps = cfg.paramserver
    token = read_token(ps.token_file)
    if not is_loopback(ps.bind) and token is None:
        raise ConfigError(
            f"paramserver.bind {ps.bind} is not a loopback address; refusing to serve it without "
            "authentication: pass --token-file with a shared secret (or bind tcp://127.0.0.1)"
        )
    _check_outputs(ps, resume, ready_file)
    # before torch (the snapshot load) and ZeroMQ start threads: they inherit the placement
    threads = place(ps.cpus, ps.torch_threads, "paramserver.cpus", "paramserver.torch_threads")
    if threads > 0:
        torch.set_num_threads(threads)
    matrices = read_snapshot(resume) if resume else []
    if resume:
        info(
            f"resumed {len(matrices)} matrices from {resume}: "
            + ", ".join(f"'{m.spec.name}' step {m.step}" for m in matrices)
        )
    if ps.snapshot_dir:
        Path(ps.snapshot_dir).mkdir(parents=True, exist_ok=True)
    else:
        warn("no --snapshot-dir: the matrices live only in memory and are lost when the server stops")
    params = OptimParams(lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    workers = RowWorkers(ps.update_threads or min(4, len(available_cpus())))
    server = ParamServer(ps, params, token, matrices, workers)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, ps.max_frame_bytes)  # per frame; connections.py caps the total
    try:
        sock.bind(ps.bind)
    except zmq.ZMQError as exc:
        sock.close()
        ctx.term()
        raise ServerError(f"cannot bind {ps.bind}: {exc}; choose another --bind address or port") from None
    address = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    info(
        f"paramserver listening on {address} ({'token required' if token else 'no token, loopback only'}; "
        f"heartbeat timeout {ps.heartbeat_timeout}s; {workers.threads} update thread(s))"
    )
    previous = _install_signals(server)
    try:
        if ready_file:
            write_text_atomic(ready_file, address + "\n")
        server.run(sock)
    finally:
        _restore_signals(previous)
        sock.close()
        ctx.term()
        workers.close()
    server.final_snapshot()
    info("paramserver stopped")
    return 0


def _install_signals(server: ParamServer) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signals can only be caught on the main thread (e.g. tests run serve() in a thread)

    def stop(signum, frame):
        server.stop_requested = True

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
