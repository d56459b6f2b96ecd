"""What a running parameter server knows: its matrices, its clients and its counters.

`ServerState` is what the request handlers (handlers.py), the barrier (barrier.py), the status line
(status.py) and the socket loop (server.py) share: it answers a request on the socket (`reply`, `error`),
reports `stats()` and writes snapshots of its matrices. It holds no socket loop itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from dcs_cli.console import info
from dcs_cli.errors import ServerError
from dcs_cli.paramserver.matrix import ServedMatrix
from dcs_cli.paramserver.protocol import STATUS_ERROR, DType, Header, ProtocolError, json_frame
from dcs_cli.paramserver.shm import SharedSegment
from dcs_cli.paramserver.snapshot import write_snapshot
from dcs_cli.paramserver.workers import SERIAL, RowWorkers
from dcs_cli.selection.store import OptimParams


@dataclass
class ClientInfo:
    last_seen: float
    matrices: set[int] = field(default_factory=set)
    segment: SharedSegment | None = None  # ATTACHed shared memory (same-host clients)


class ServerState:
    """`ServerState(cfg, params, token, matrices, workers)`: matrices, clients and counters of one server."""

    def __init__(
        self, cfg, params: OptimParams, token: bytes | None, matrices: list[ServedMatrix] = (),
        workers: RowWorkers = SERIAL,
    ):
        self.cfg = cfg  # ParamServerConfig
        self.default_params = params
        self.token = token
        self.workers = workers
        self.matrices: list[ServedMatrix] = sorted(matrices, key=lambda m: m.matrix_id)
        for m in self.matrices:
            m.workers = workers
        self.clients: dict[int, ClientInfo] = {}
        self.stop_requested = False
        self.counters = {
            "requests": 0,
            "errors": 0,
            "rows_read": 0,
            "rows_pushed": 0,
            "rows_written": 0,
            "steps_applied": 0,
            "clients_registered": 0,
            "clients_dropped": 0,
            "snapshots": 0,
            "bytes_in": 0,
            "bytes_out": 0,
        }
        self.started = time.monotonic()
        self.sock: zmq.Socket | None = None

    def matrix(self, header: Header) -> ServedMatrix:
        if header.matrix >= len(self.matrices):
            raise ProtocolError(f"unknown matrix id {header.matrix}; CREATE it first")
        return self.matrices[header.matrix]

    # -------------------------------------------------------------------------------------- answers

    def reply(self, identity: bytes, req: Header, frames: list = (), authenticated: bool = True,
              **fields) -> None:
        """Answer `req`; `authenticated=False` sends a zero MAC (for a header that failed to decode)."""
        header = Header(
            op=req.op, request_id=req.request_id, client_id=req.client_id, matrix=req.matrix, **fields
        )
        payload = [np.ascontiguousarray(f) if isinstance(f, np.ndarray) else f for f in frames]
        self.counters["bytes_out"] += sum(memoryview(p).nbytes for p in payload)
        frame0 = header.pack(self.token if authenticated else None, reply=True)
        self.sock.send_multipart([identity, frame0, *payload], copy=False)

    def error(self, identity: bytes, req: Header, message: str, authenticated: bool = True) -> None:
        self.counters["errors"] += 1
        self.reply(identity, req, [json_frame({"error": message})], authenticated=authenticated,
                   status=STATUS_ERROR, dtype=DType.JSON)

    def stats(self) -> dict:
        return {
            **self.counters,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "clients": len(self.clients),
            "shared_memory_clients": sum(c.segment is not None for c in self.clients.values()),
            "matrices": [
                {
                    "id": m.matrix_id,
                    "name": m.spec.name,
                    "step": m.step,
                    "members": len(m.members),
                    "pending": len(m.pending),
                    "num_classes": m.spec.num_classes,
                    "dim": m.spec.dim,
                }
                for m in self.matrices
            ],
        }

    # ------------------------------------------------------------------------------------ snapshots

    def write_snapshot(self, why: str) -> Path:
        start = time.perf_counter()
        for m in self.matrices:  # a snapshot holds every row as of its step (nothing left to catch up)
            m.settle()
        path = write_snapshot(self.cfg.snapshot_dir, self.matrices)
        self.counters["snapshots"] += 1
        info(
            f"{why} snapshot → {path} ({time.perf_counter() - start:.1f}s, "
            + ", ".join(f"'{m.spec.name}' step {m.step}" for m in self.matrices)
            + ")"
        )
        return path

    def final_snapshot(self) -> None:
        if self.cfg.snapshot_dir and self.matrices:
            try:
                self.write_snapshot("final")
            except Exception as exc:  # noqa: BLE001 - one line, whatever went wrong
                raise ServerError(f"final snapshot to {self.cfg.snapshot_dir} failed: "
                                  f"{exc.__class__.__name__}: {exc}") from exc
