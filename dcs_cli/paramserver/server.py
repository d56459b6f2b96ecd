"""The parameter server's socket loop: matrices of class rows served over ZeroMQ to many clients.

`ParamServer(cfg.paramserver, params, token)` is a `ServerState` (state.py) that can serve:
`run(router_socket)` returns after a client's SHUTDOWN or once `stop_requested` is set. One thread runs
a ROUTER socket loop; it never blocks on a client. Each request is decoded and handed to its handler
(handlers.py); between bursts the loop drops silent clients from the barrier (barrier.py), writes
periodic snapshots and refreshes the status line (status.py). Every request is validated and a bad one
gets an error reply; nothing a client sends can stop the loop. `serve` (serve.py) binds the socket and
runs it; `start_background` (launcher.py) runs a server in its own process.
"""

from __future__ import annotations

import time

import zmq

from dcs_cli.console import warn
from dcs_cli.paramserver.barrier import drop_silent
from dcs_cli.paramserver.connections import ConnectionBudget
from dcs_cli.paramserver.handlers import HANDLERS
from dcs_cli.paramserver.protocol import Header, ProtocolError, decode_header, peek_request_id
from dcs_cli.paramserver.state import ServerState
from dcs_cli.paramserver.status import StatusLine

POLL_MS = 100


class ParamServer(ServerState):
    """The socket loop over a `ServerState`: `ParamServer(cfg, params, token).run(sock)`."""

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
            drop_silent(self, now)
            if next_snapshot is not None and now >= next_snapshot:
                try:
                    self.write_snapshot("periodic")
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
            # never MAC a reply to a header we could not authenticate: it would vouch for forged fields
            self.error(identity, Header(op=op, request_id=request_id), str(exc), authenticated=False)
            return
        try:
            handler = HANDLERS.get(header.op)
            if handler is None:
                raise ProtocolError(f"unknown op {header.op}")
            if header.client_id in self.clients:
                self.clients[header.client_id].last_seen = time.monotonic()
            handler(self, identity, header, body[1:])
        except ProtocolError as exc:
            self.error(identity, header, str(exc))
        except Exception as exc:  # a bug must cost one request, not the server
            warn(f"internal error on op {header.op}: {exc!r}")
            self.error(identity, header, f"internal server error: {exc.__class__.__name__}: {exc}")
