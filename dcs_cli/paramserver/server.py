"""The parameter server: matrices of class rows served over ZeroMQ with synchronous SGD across clients.

    ParamServer(cfg.paramserver, params, token).run(router_socket)            # what `serve` (serve.py) runs
    handle = start_background("tcp://127.0.0.1:*")                            # a real server process
    handle.address, handle.stop()

One thread runs a ROUTER socket loop; it never blocks on a client. A PUSH for step t is held (its reply
deferred) until every registered client of the matrix has pushed for t; the gradients are then summed per
row and applied once with `sgd_rows_`, and all held pushes are answered. A client silent for longer than
`heartbeat_timeout` (and not itself waiting in the barrier) is dropped so the others carry on. Every
request is validated and a bad one gets an error reply; nothing a client sends can stop the loop.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from dcs_cli.console import info, warn
from dcs_cli.errors import ServerError
from dcs_cli.paramserver.auth import is_loopback, read_token  # noqa: F401 (public API)
from dcs_cli.paramserver.connections import ConnectionBudget
from dcs_cli.paramserver.launcher import BackgroundServer, start_background  # noqa: F401 (public API)
from dcs_cli.paramserver.matrix import MatrixSpec, PendingPush, ServedMatrix, check_step, optim_from_dict
from dcs_cli.paramserver.protocol import (
    FLAG_MOMENTUM,
    FLAG_SHARED,
    STATUS_ERROR,
    DType,
    Header,
    Op,
    ProtocolError,
    decode_header,
    json_frame,
    parse_json,
    peek_request_id,
    row_arrays,
)
from dcs_cli.paramserver.shm import SegmentError, SharedSegment, region_frames
from dcs_cli.paramserver.snapshot import write_snapshot
from dcs_cli.paramserver.status import StatusLine
from dcs_cli.paramserver.validate import (
    check_row_request,
    expect_frames,
    row_ids,
    row_values,
)
from dcs_cli.paramserver.workers import SERIAL, RowWorkers
from dcs_cli.selection.store import OptimParams

POLL_MS = 100


@dataclass
class ClientInfo:
    last_seen: float
    matrices: set[int] = field(default_factory=set)
    segment: SharedSegment | None = None  # ATTACHed shared memory (same-host clients)


class ParamServer:
    """The socket loop and request handlers: `ParamServer(cfg, params, token).run(sock)`."""

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
        self.handlers = {
            Op.REGISTER: self._register,
            Op.UNREGISTER: self._unregister,
            Op.CREATE: self._create,
            Op.GET_ROWS: self._get_rows,
            Op.PUSH: self._push,
            Op.SET_ROWS: self._set_rows,
            Op.GET_OPTIM: self._get_optim,
            Op.SET_OPTIM: self._set_optim,
            Op.SNAPSHOT: self._snapshot,
            Op.STATS: self._stats,
            Op.SHUTDOWN: self._shutdown,
            Op.HEARTBEAT: self._heartbeat,
            Op.SET_STEP: self._set_step,
            Op.ATTACH: self._attach,
        }
        self.sock: zmq.Socket | None = None

    # ------------------------------------------------------------------------------------------ loop

    def run(self, sock: zmq.Socket) -> None:
        """Serve until SHUTDOWN or `stop_requested` (set by the signal handlers)."""
        self.sock = sock
        budget = ConnectionBudget(sock, self.cfg.max_inflight_bytes, self.cfg.max_frame_bytes)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(budget.monitor, zmq.POLLIN)
        status = StatusLine(self)
        next_snapshot = self._next_snapshot_time()
        try:
            self._loop(sock, poller, budget, status, next_snapshot)
        finally:
            budget.close()
            status.close()

    def _loop(self, sock, poller, budget, status, next_snapshot) -> None:
        while not self.stop_requested:
            ready = dict(poller.poll(POLL_MS))
            if budget.monitor in ready:
                budget.poll()
            if sock in ready:
                for _ in range(64):  # drain a burst, then look after timers again
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames)
                    if self.stop_requested:
                        break
            now = time.monotonic()
            self._drop_silent(now)
            if next_snapshot is not None and now >= next_snapshot:
                try:
                    self._write_snapshot("periodic")
                except Exception as exc:  # a full disk must not stop training; the next try may work
                    warn(f"periodic snapshot to {self.cfg.snapshot_dir} failed: {exc}")
                next_snapshot = self._next_snapshot_time()
            status.update(now)

    def _next_snapshot_time(self) -> float | None:
        if self.cfg.snapshot_dir and self.cfg.snapshot_every > 0:
            return time.monotonic() + self.cfg.snapshot_every
        return None

    def _handle(self, frames: list) -> None:
        if len(frames) < 2:
            return
        identity, body = frames[0].bytes, frames[1:]
        self.counters["requests"] += 1
        self.counters["bytes_in"] += sum(len(f.buffer) for f in body)
        try:
            header = decode_header(body[0].buffer, self.token)
        except ProtocolError as exc:
            op, request_id = peek_request_id(body[0].buffer)
            self._error(identity, Header(op=op, request_id=request_id), str(exc))
            return
        try:
            handler = self.handlers.get(header.op)
            if handler is None:
                raise ProtocolError(f"unknown op {header.op}")
            if header.client_id in self.clients:
                self.clients[header.client_id].last_seen = time.monotonic()
            handler(identity, header, body[1:])
        except ProtocolError as exc:
            self._error(identity, header, str(exc))
        except Exception as exc:  # a bug must cost one request, not the server
            warn(f"internal error on op {header.op}: {exc!r}")
            self._error(identity, header, f"internal server error: {exc.__class__.__name__}: {exc}")

    def _reply(self, identity: bytes, req: Header, frames: list = (), **fields) -> None:
        header = Header(
            op=req.op, request_id=req.request_id, client_id=req.client_id, matrix=req.matrix, **fields
        )
        payload = [np.ascontiguousarray(f) if isinstance(f, np.ndarray) else f for f in frames]
        self.counters["bytes_out"] += sum(memoryview(p).nbytes for p in payload)
        self.sock.send_multipart([identity, header.pack(self.token), *payload], copy=False)

    def _error(self, identity: bytes, req: Header, message: str) -> None:
        self.counters["errors"] += 1
        self._reply(identity, req, [json_frame({"error": message})], status=STATUS_ERROR, dtype=DType.JSON)

    # --------------------------------------------------------------------------------------- helpers

    def _matrix(self, header: Header) -> ServedMatrix:
        if header.matrix >= len(self.matrices):
            raise ProtocolError(f"unknown matrix id {header.matrix}; CREATE it first")
        return self.matrices[header.matrix]

    # -------------------------------------------------------------------------------------- handlers

    def _create(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 1, "CREATE")
        spec = MatrixSpec.from_dict(parse_json(frames[0].buffer))
        for m in self.matrices:
            if m.spec.name == spec.name:
                if m.spec != spec:
                    raise ProtocolError(
                        f"CREATE: matrix '{spec.name}' exists with spec {m.spec.to_dict()}, "
                        f"not {spec.to_dict()}; use another name or the same spec"
                    )
                break
        else:
            m = ServedMatrix(
                len(self.matrices), spec, dataclasses.replace(self.default_params), workers=self.workers
            )
            self.matrices.append(m)
            info(f"created matrix '{spec.name}' {spec.num_classes}x{spec.dim} (id {m.matrix_id})")
        header.matrix = m.matrix_id
        self._reply(
            identity,
            header,
            [json_frame({"matrix": m.matrix_id, "step": m.step})],
            dtype=DType.JSON,
            step=m.step,
        )

    def _register(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "REGISTER")
        m = self._matrix(header)
        client = self.clients.setdefault(header.client_id, ClientInfo(time.monotonic()))
        if m.matrix_id not in client.matrices:
            client.matrices.add(m.matrix_id)
            m.members.add(header.client_id)
            self.counters["clients_registered"] += 1
            info(f"client {header.client_id:x} joined '{m.spec.name}' ({len(m.members)} registered)")
        self._reply(
            identity,
            header,
            [json_frame({"step": m.step, "heartbeat_timeout": self.cfg.heartbeat_timeout,
                         "max_frame_bytes": self.cfg.max_frame_bytes})],
            dtype=DType.JSON,
            step=m.step,
        )

    def _unregister(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "UNREGISTER")
        m = self._matrix(header)
        self._leave(header.client_id, m)
        info(f"client {header.client_id:x} left '{m.spec.name}' ({len(m.members)} registered)")
        self._reply(identity, header, step=m.step)
        self._maybe_apply(m)

    def _leave(self, client_id: int, m: ServedMatrix) -> None:
        m.members.discard(client_id)
        m.forget(client_id)
        client = self.clients.get(client_id)
        if client is not None:
            client.matrices.discard(m.matrix_id)
            if not client.matrices:
                del self.clients[client_id]

    def _get_rows(self, identity, header: Header, frames) -> None:
        m = self._matrix(header)
        check_row_request(m, header, "GET_ROWS")
        expect_frames(frames, 1, "GET_ROWS")
        ids_np = row_ids(m, header, frames[0], unique=False, op="GET_ROWS").numpy()
        with_momentum, shared = bool(header.flags & FLAG_MOMENTUM), bool(header.flags & FLAG_SHARED)
        client = self.clients.get(header.client_id)
        shared = shared and client is not None and client.segment is not None  # else: frames (flag cleared)
        out = None
        if shared:  # gathered straight into the client's segment; the reply carries no arrays
            segment = client.segment
            try:
                specs = row_arrays("reply", len(ids_np), m.spec.dim, m.spec.bias, with_momentum)
                out = segment.arrays(segment.reply, specs)
            except SegmentError as exc:
                raise ProtocolError(f"GET_ROWS: reply {exc}; ATTACH a larger segment") from None
        out = m.gather(ids_np, with_momentum, out)
        if not with_momentum and not shared:  # the segment's copy is the client's to rewrite: not kept
            m.remember_sent(header.client_id, ids_np, out[0])
        self.counters["rows_read"] += len(ids_np)
        self._reply(
            identity,
            header,
            [] if shared else out,
            dtype=DType.FLOAT32,
            rows=len(ids_np),
            cols=m.spec.dim,
            step=m.step,
            flags=header.flags if shared else header.flags & ~FLAG_SHARED,
        )

    def _push(self, identity, header: Header, frames) -> None:
        m = self._matrix(header)
        check_row_request(m, header, "PUSH")
        if header.client_id not in m.members:
            raise ProtocolError(
                f"PUSH: client {header.client_id:x} is not registered for '{m.spec.name}' "
                "(dropped after the heartbeat timeout?); register again"
            )
        if header.step != m.step:
            raise ProtocolError(
                f"PUSH: gradient for step {header.step} but '{m.spec.name}' is at step {m.step}"
            )
        if header.flags & FLAG_SHARED:
            expect_frames(frames, 0, "PUSH")
            segment = self.clients[header.client_id].segment  # a member is a known client
            if segment is None:
                raise ProtocolError("PUSH: FLAG_SHARED but no shared-memory segment is attached; ATTACH first")
            try:
                specs = row_arrays("push", header.rows, m.spec.dim, m.spec.bias)
                frames = region_frames(segment.request, specs)
            except SegmentError as exc:
                raise ProtocolError(f"PUSH: request {exc}; ATTACH a larger segment") from None
        expect_frames(frames, 3 if m.spec.bias else 2, "PUSH")
        ids = row_ids(m, header, frames[0], unique=True, op="PUSH")
        grad_w = row_values(m, header, frames[1], m.spec.dim, "PUSH", "weight gradient")
        grad_b = row_values(m, header, frames[2], None, "PUSH", "bias gradient") if m.spec.bias else None
        m.add_push(header.client_id, PendingPush(ids, grad_w, grad_b, keepalive=tuple(frames)))
        m.waiters.append((identity, header))
        self.counters["rows_pushed"] += len(ids)
        self._maybe_apply(m)

    def _maybe_apply(self, m: ServedMatrix) -> None:
        if not m.barrier_ready():
            return
        waiters, m.waiters = m.waiters, []
        try:
            m.apply()
        except Exception as exc:  # every client held in the barrier hears of it; none is left waiting
            m.pending.clear()
            m.changed()
            warn(f"internal error applying step {m.step} of '{m.spec.name}': {exc!r}")
            for identity, req in waiters:
                self._error(identity, req, f"internal server error applying step {m.step}: "
                                           f"{exc.__class__.__name__}: {exc}; the step was not completed")
            return
        self.counters["steps_applied"] += 1
        for identity, req in waiters:
            self._reply(identity, req, step=m.step)

    def _set_rows(self, identity, header: Header, frames) -> None:
        m = self._matrix(header)
        check_row_request(m, header, "SET_ROWS")
        with_momentum = bool(header.flags & FLAG_MOMENTUM)
        expect_frames(frames, 1 + (1 + with_momentum) * (1 + m.spec.bias), "SET_ROWS")
        ids = row_ids(m, header, frames[0], unique=True, op="SET_ROWS")
        values = iter(frames[1:])
        updates = [(m.weight, row_values(m, header, next(values), m.spec.dim, "SET_ROWS", "weights"))]
        if with_momentum:
            updates.append(
                (m.momentum, row_values(m, header, next(values), m.spec.dim, "SET_ROWS", "momentum"))
            )
        if m.spec.bias:
            updates.append((m.bias, row_values(m, header, next(values), None, "SET_ROWS", "bias")))
            if with_momentum:
                updates.append(
                    (
                        m.bias_momentum,
                        row_values(m, header, next(values), None, "SET_ROWS", "bias momentum"),
                    )
                )
        for target, source in updates:  # all validated first: a refused request changes nothing
            target.index_copy_(0, ids, source)
        if m.clock is not None:  # written rows are as of this step: nothing of theirs to catch up
            m.clock.reset(m.step, ids)
        m.changed()
        self.counters["rows_written"] += len(ids)
        self._reply(identity, header, step=m.step)

    def _attach(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 1, "ATTACH")
        client = self.clients.get(header.client_id)
        if client is None:
            raise ProtocolError(f"ATTACH: client {header.client_id:x} is not registered; REGISTER first")
        spec = parse_json(frames[0].buffer)
        if set(spec) != {"name", "reply_bytes", "request_bytes"}:
            raise ProtocolError("ATTACH: the frame must hold exactly name, reply_bytes and request_bytes")
        try:
            client.segment = SharedSegment.open(spec["name"], spec["reply_bytes"], spec["request_bytes"])
        except SegmentError as exc:
            raise ProtocolError(f"ATTACH: {exc}") from None
        self._reply(identity, header)

    def _get_optim(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "GET_OPTIM")
        m = self._matrix(header)
        self._reply(
            identity, header, [json_frame(dataclasses.asdict(m.params))], dtype=DType.JSON, step=m.step
        )

    def _set_optim(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 1, "SET_OPTIM")
        m = self._matrix(header)
        m.params = optim_from_dict(parse_json(frames[0].buffer))
        self._reply(identity, header, step=m.step)

    def _set_step(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "SET_STEP")
        m = self._matrix(header)
        check_step(header.step, "SET_STEP")
        if m.pending:
            raise ProtocolError(f"SET_STEP: step {m.step} has pushes pending; set the step before training")
        m.settle()
        m.step = header.step
        if m.clock is not None:
            m.clock.reset(m.step)
        self._reply(identity, header, step=m.step)

    def _snapshot(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "SNAPSHOT")
        if not self.cfg.snapshot_dir:
            raise ProtocolError("SNAPSHOT: this server has no snapshot folder (start it with --snapshot-dir)")
        path = self._write_snapshot("requested")
        self._reply(identity, header, [json_frame({"path": str(path)})], dtype=DType.JSON)

    def _stats(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "STATS")
        self._reply(identity, header, [json_frame(self.stats())], dtype=DType.JSON)

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

    def _shutdown(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "SHUTDOWN")
        info("shutdown requested by a client")
        self.stop_requested = True
        self._reply(identity, header)

    def _heartbeat(self, identity, header: Header, frames) -> None:
        expect_frames(frames, 0, "HEARTBEAT")
        if header.client_id not in self.clients:
            raise ProtocolError(f"HEARTBEAT: client {header.client_id:x} is not registered (dropped?)")
        self._reply(identity, header)

    # ------------------------------------------------------------------------------ faults, snapshots

    def _drop_silent(self, now: float) -> None:
        timeout = self.cfg.heartbeat_timeout
        for client_id, client in list(self.clients.items()):
            if now - client.last_seen <= timeout:
                continue
            waiting = [m for m in self.matrices if client_id in m.pending]
            if waiting:  # it pushed and waits for the others: silence is expected, not a fault
                continue
            affected = [self.matrices[i] for i in client.matrices]
            warn(
                f"client {client_id:x} silent for {now - client.last_seen:.1f}s > {timeout}s: "
                f"dropped from the barrier of {', '.join(repr(m.spec.name) for m in affected)}"
            )
            self.counters["clients_dropped"] += 1
            for m in affected:
                self._leave(client_id, m)
            for m in affected:
                self._maybe_apply(m)

    def _write_snapshot(self, why: str) -> Path:
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
                self._write_snapshot("final")
            except Exception as exc:  # noqa: BLE001 - one line, whatever went wrong
                raise ServerError(f"final snapshot to {self.cfg.snapshot_dir} failed: "
                                  f"{exc.__class__.__name__}: {exc}") from exc
