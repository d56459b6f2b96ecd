"""A client's heartbeat: a background thread that tells the server every `period` seconds that it is alive.

A server drops a client that stays silent for longer than its `heartbeat_timeout` from the barrier, so
the other clients carry on without it. A trainer busy with something else between steps (evaluation, an
index build) sends no requests for a while; its `Heartbeat` keeps it registered meanwhile (`RemoteStore`
beats every quarter of the server's heartbeat_timeout). The thread has a socket of its own (ZeroMQ
sockets are not shared between threads) and stops with `stop()`.
"""

from __future__ import annotations

import threading

import zmq

from dcs_cli.errors import ServerError
from dcs_cli.paramserver.client_socket import ClientSocket
from dcs_cli.paramserver.protocol import Header, Op


class Heartbeat:
    """`Heartbeat(ctx, address, token, client_id, matrix_id, period)`: HEARTBEAT every `period` s until `stop()`."""

    def __init__(
        self, ctx: zmq.Context, address: str, token: bytes | None, client_id: int, matrix_id: int, period: float
    ):
        self.ctx, self.address, self.token = ctx, address, token
        self.client_id, self.matrix_id, self.period = client_id, matrix_id, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dcs-paramserver-heartbeat")
        self._thread.start()

    def _run(self) -> None:
        sock = ClientSocket(self.ctx, self.address, self.token, self.client_id)
        try:
            while not self._stop.wait(self.period):
                try:
                    sock.request(Header(op=Op.HEARTBEAT, matrix=self.matrix_id), (), timeout=self.period * 2)
                except ServerError:
                    pass  # the main thread's next request reports the problem with its context
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
